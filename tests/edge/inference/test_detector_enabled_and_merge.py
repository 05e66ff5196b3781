"""Disabled labels stay unpublished unless the operator enables them; overlapping events merge.

End to end through the real daemon (`sonotrap run --file --fast`, the published payloads in
its JSONL) and `sonotrap analyze`, plus the detector's own rules on known score sequences.
"""

from __future__ import annotations

import csv
import itertools
import json

import pytest

from edge.config import DetectorConfig, load_config
from edge.errors import SonotrapError
from edge.inference.detector import Detector, enabled_labels, resolve_thresholds
from edge.models.bundle import load_bundle, write_bundle
from edge.models.manifest import Label, read_manifest
from tests.support.daemon_helpers import HIGH, LOW, read_jsonl, run_cli, write_tones
from tests.support.tiny_model import make_tiny_bundle


@pytest.fixture
def half_disabled(tmp_path):
    """The tiny band bundle with tone_high shipped disabled."""
    out = make_tiny_bundle(tmp_path / "bundle")
    m = read_manifest(out)
    m.labels[1].enabled = False
    m.labels[1].expected_precision = 0.42
    m.labels[1].disabled_reason = "precision cannot reach 0.90 on new recordings"
    write_bundle(out, out / "model.onnx", m)
    return out


def _run(tmp_path, wav, bundle, name, *extra):
    jsonl = tmp_path / f"{name}.jsonl"
    r = run_cli("run", "--file", str(wav), "--fast", "--model", str(bundle), "--broker", "none",
                "--state-dir", str(tmp_path / f"state-{name}"), "--jsonl", str(jsonl), *extra, timeout=90)
    assert r.returncode == 0, r.stderr
    return sorted(p["label"] for p in read_jsonl(jsonl) if p.get("state") == "ended")


def test_daemon_never_publishes_a_disabled_label_unless_enabled(tmp_path, half_disabled):
    wav = write_tones(tmp_path / "t.wav", [(None, 3), (LOW, 2), (None, 3), (HIGH, 2), (None, 3)])
    assert _run(tmp_path, wav, half_disabled, "default") == ["tone_low"]
    assert _run(tmp_path, wav, half_disabled, "named", "--set", 'detector.enable_labels=["tone_high"]') == [
        "tone_high", "tone_low"]
    assert _run(tmp_path, wav, half_disabled, "all", "--set", 'detector.enable_labels="all"') == [
        "tone_high", "tone_low"]


def test_analyze_follows_the_same_rule(tmp_path, half_disabled):
    wav = write_tones(tmp_path / "t.wav", [(None, 3), (LOW, 2), (None, 3), (HIGH, 2), (None, 3)])

    def labels(out, *extra):
        r = run_cli("analyze", str(wav), "--model", str(half_disabled), "-o", str(out), "--no-progress", *extra)
        assert r.returncode == 0, r.stderr
        with open(out / "detections.csv") as fh:
            return sorted(row["label"] for row in csv.DictReader(fh))

    assert labels(tmp_path / "a") == ["tone_low"]
    assert labels(tmp_path / "b", "--set", 'detector.enable_labels="all"') == ["tone_high", "tone_low"]


def test_inspect_lists_enabled_labels_with_expected_precision(half_disabled):
    r = run_cli("bundle", "inspect", str(half_disabled), "--json")
    s = json.loads(r.stdout)
    assert list(s["enabled_labels"]) == ["tone_low"]
    assert s["disabled_labels"]["tone_high"] == {"expected_precision": 0.42,
                                                 "reason": "precision cannot reach 0.90 on new recordings"}
    text = run_cli("bundle", "inspect", str(half_disabled)).stdout
    assert "enabled by default (1): tone_low" in text and "disabled (1;" in text and "tone_high (p=0.42)" in text
    assert "tone_high (tone high, t=0.50, disabled)" in text


def test_enable_labels_config_is_checked():
    labels = [Label("a", "A"), Label("b", "B", enabled=False)]
    assert enabled_labels(labels, DetectorConfig()) == {"a"}
    assert enabled_labels(labels, DetectorConfig(enable_labels=["b"])) == {"a", "b"}
    assert enabled_labels(labels, DetectorConfig(enable_labels="all")) == {"a", "b"}
    with pytest.raises(SonotrapError, match="detector.enable_labels"):
        resolve_thresholds(["a", "b"], {}, DetectorConfig(enable_labels=["nope"]))
    with pytest.raises(SonotrapError, match="detector.enable_labels"):
        load_config(None, ['detector.enable_labels="some"'])
    assert load_config(None, ['detector.enable_labels="all"']).detector.enable_labels == "all"


def test_manifest_without_flags_loads_with_every_label_enabled(tmp_path):
    b = load_bundle(make_tiny_bundle(tmp_path / "plain"))
    assert b.enabled_labels == b.labels


# --------------------------------------------------------------------------- merging


def _det(cfg: DetectorConfig | None = None) -> Detector:
    n = itertools.count()
    return Detector(["a"], {}, {"a": 0.5}, cfg or DetectorConfig(), new_id=lambda: f"id{next(n)}")


def _feed(det: Detector, scores: list[float], hop: float = 0.5, win: float = 2.0):
    out = []
    for k, s in enumerate(scores):
        out += det.update(k, k * hop, k * hop + win, [s])
    return out + det.flush()


def test_hits_whose_windows_overlap_merge_into_one_event():
    # Hits at hops 0 and 3: windows 0-2 s and 1.5-3.5 s share audio -> one event 0-3.5 s.
    (ev,) = _feed(_det(), [0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1])
    assert (ev.start, ev.end, ev.hops, ev.first_hop, ev.last_hop) == (0.0, 3.5, 2, 0, 3)


def test_hits_whose_windows_do_not_overlap_stay_separate():
    # Hits at hops 0 and 4: windows 0-2 s and 2-4 s only touch -> two events.
    events = _feed(_det(), [0.9, 0.1, 0.1, 0.1, 0.9, 0.1])
    assert [(e.start, e.end) for e in events] == [(0.0, 2.0), (2.0, 4.0)]


def test_merged_events_never_overlap_over_a_long_sequence():
    scores = [0.9 if (k * 7) % 5 < 2 else 0.1 for k in range(60)]
    events = _feed(_det(), scores)
    for a, b in itertools.pairwise(events):
        assert b.start >= a.end


def test_continuous_calling_is_cut_into_non_overlapping_events_of_max_event_s():
    # A 0.5-s call every 3 s with 2-s windows: every event would overlap the next one.
    scores = [0.9 if k % 6 in (1, 2, 3, 4) else 0.1 for k in range(80)]  # 40 s
    events = _feed(_det(DetectorConfig(max_event_s=10.0)), scores)
    assert len(events) >= 3
    for a, b in itertools.pairwise(events):
        assert b.start >= a.end
    assert all(e.end - e.start <= 10.0 + 0.5 for e in events[:-1])
    (one,) = _feed(_det(DetectorConfig(max_event_s=0)), scores)  # no limit: one event
    assert (one.start, one.hops) == (0.5, sum(s > 0.5 for s in scores))
