"""Recording-level scores (issue 6): per recording and label, max / top-2 mean of window scores."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from edge.analysis.recording_scores import RecordingScores, aggregate
from edge.errors import SonotrapError
from tests.support.daemon_helpers import HIGH, LOW, read_jsonl, run_cli, write_tones


def test_running_top2_matches_sorting():
    rng = np.random.default_rng(0)
    s = rng.random((37, 4))
    acc = RecordingScores(4)
    for row in s[:10]:
        acc.add(row)
    acc.add(s[10:])  # batches too
    top = np.sort(s, axis=0)[::-1]
    np.testing.assert_allclose(acc.result("max"), top[0])
    np.testing.assert_allclose(acc.result("top2mean"), (top[0] + top[1]) / 2)
    assert acc.windows == 37


def test_by_hand_and_edge_cases():
    s = np.array([[0.1, 0.9], [0.7, 0.2], [0.4, 0.95]])
    np.testing.assert_allclose(aggregate(s, "max"), [0.7, 0.95])
    np.testing.assert_allclose(aggregate(s, "top2mean"), [0.55, 0.925])
    np.testing.assert_allclose(aggregate(s[:1], "top2mean"), [0.1, 0.9])  # one window: its score
    assert np.isnan(RecordingScores(2).result()).all()  # nothing scored
    with pytest.raises(SonotrapError, match="top2mean"):
        aggregate(s, "mean")


def _rows(path):
    with open(path, newline="") as fh:
        return {r["recording"]: r for r in csv.DictReader(fh)}


def test_analyze_writes_recording_scores_equal_to_the_daemons_hop_scores(tmp_path, tiny_bundle):
    rec = tmp_path / "rec"
    rec.mkdir()
    a = write_tones(rec / "a.wav", [(None, 2.5), (LOW, 1.5), (None, 2), (HIGH, 1.5), (None, 2)])
    write_tones(rec / "b.wav", [(None, 3), (LOW, 2), (None, 3)])
    out = tmp_path / "out"
    for agg in ("max", "top2mean"):
        r = run_cli("analyze", str(rec), "--model", str(tiny_bundle), "-o", str(out), "--no-progress",
                    "--recording-scores", str(out / f"{agg}.csv"), "--recording-agg", agg)
        assert r.returncode == 0, r.stderr
    mx, t2 = _rows(out / "max.csv"), _rows(out / "top2mean.csv")
    with open(out / "max.csv", newline="") as fh:
        assert next(csv.reader(fh)) == ["recording", "tone_low", "tone_high"]  # the bundle's label order
    assert float(mx["a.wav"]["tone_low"]) > 0.9 and float(mx["a.wav"]["tone_high"]) > 0.9
    assert float(mx["b.wav"]["tone_low"]) > 0.9 and float(mx["b.wav"]["tone_high"]) < 0.5
    # The same numbers from an independent path: the daemon's per-hop scores for a.wav.
    r = run_cli("run", "--file", str(a), "--fast", "--model", str(tiny_bundle), "--no-mqtt",
                "--state-dir", str(tmp_path / "st"), "--hops-jsonl", str(tmp_path / "h.jsonl"))
    assert r.returncode == 0, r.stderr
    hops = read_jsonl(tmp_path / "h.jsonl")
    assert len(hops) > 2
    for lab in ("tone_low", "tone_high"):
        s = np.sort([h["scores"][lab] for h in hops])[::-1]
        assert float(mx["a.wav"][lab]) == pytest.approx(s[0], abs=2e-4)
        assert float(t2["a.wav"][lab]) == pytest.approx((s[0] + s[1]) / 2, abs=2e-4)
        assert float(t2["a.wav"][lab]) <= float(mx["a.wav"][lab])


def test_unwritable_recording_scores_path_is_one_line_error(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "x.wav", [(LOW, 2.5)])
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run_cli("analyze", str(wav), "--model", str(tiny_bundle), "-o", str(tmp_path / "out"), "--no-progress",
                "--recording-scores", str(blocker / "scores.csv"))
    assert r.returncode == 2
    assert "cannot write recording scores" in r.stderr and len(r.stderr.strip().splitlines()) == 1
