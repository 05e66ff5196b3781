"""Batch analysis at scale: shards in separate processes merge to one run, workers=2 equals
workers=1, a killed run resumes, repeated file names stay apart, times stay inside the file,
and the Raven tables follow Raven's format (read back by an independent parser)."""

from __future__ import annotations

import csv
import signal
import time

import pytest
import soundfile as sf

from edge.analysis.recordings import parse_shard, shard_of
from edge.errors import SonotrapError
from tests.support.daemon_helpers import HIGH, LOW, run_cli, sonotrap, write_tones
from tests.support.tiny_model import tone

ODD_SAMPLES = 78848  # 1.787937 s at 44.1 kHz: a length whose ms rounding lies past the end


def make_archive(root):
    """Two recorders that name their files alike, plus a few more recordings."""
    for i, site in enumerate(("siteA", "siteB")):
        (root / site).mkdir(parents=True)
        write_tones(root / site / "rec.wav", [(None, 1 + i), (LOW if i else HIGH, 2), (None, 2)])
        write_tones(root / site / "other.wav", [(None, 2), (HIGH, 1.5 + i), (None, 1)])
    sf.write(str(root / "siteB" / "odd.flac"), tone(HIGH, 2, 44100)[:ODD_SAMPLES], 44100)


def analyze(*args, timeout=120):
    return run_cli("analyze", *map(str, args), "--no-progress", timeout=timeout)


def outputs(out):
    """detections.csv and every Raven table, as bytes by relative path."""
    files = [out / "detections.csv", *sorted(out.rglob("*.selections.txt"))]
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in files}


def read_raven(path):
    """Raven Pro's selection-table rules, checked with the csv module alone (no sonotrap code)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    header, body = rows[0], rows[1:]
    for col in ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)"):
        assert col in header, col
    sel = []
    for row in body:
        assert len(row) == len(header)
        r = dict(zip(header, row, strict=True))
        sel.append({"id": int(r["Selection"]), "view": r["View"], "channel": int(r["Channel"]),
                    "begin": float(r["Begin Time (s)"]), "end": float(r["End Time (s)"]),
                    "low": float(r["Low Freq (Hz)"]), "high": float(r["High Freq (Hz)"]), "species": r["Species"]})
    assert [s["id"] for s in sel] == list(range(1, len(sel) + 1))  # unique, positive selection numbers
    for s in sel:
        assert s["view"].startswith("Spectrogram") and s["channel"] >= 1
        assert 0 <= s["begin"] < s["end"] and 0 <= s["low"] < s["high"]
    return sel


def test_same_file_names_in_two_folders_stay_apart_and_times_stay_inside_the_file(tmp_path, tiny_bundle):
    make_archive(tmp_path / "arch")
    out = tmp_path / "out"
    r = analyze(tmp_path / "arch" / "siteA", tmp_path / "arch" / "siteB", "--model", tiny_bundle, "-o", out)
    assert r.returncode == 0, r.stderr
    with open(out / "detections.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_file = {}
    for row in rows:
        by_file.setdefault(row["file"], []).append(row["label"])
    assert by_file["siteA/rec.wav"] == ["tone_high"] and by_file["siteB/rec.wav"] == ["tone_low"]
    a, b = read_raven(out / "siteA" / "rec.wav.selections.txt"), read_raven(out / "siteB" / "rec.wav.selections.txt")
    assert [s["species"] for s in a] == ["tone_high"] and [s["species"] for s in b] == ["tone_low"]
    duration = ODD_SAMPLES / 44100  # 1.787937 s
    odd = [row for row in rows if row["file"] == "siteB/odd.flac"]
    assert odd and all(float(row["end_s"]) <= duration for row in odd)
    assert float(odd[-1]["end_s"]) == 1.787  # rounded down, not to 1.788
    assert all(s["end"] <= duration for s in read_raven(out / "siteB" / "odd.flac.selections.txt"))


def test_names_differing_only_in_case_stop_with_one_line(tmp_path, tiny_bundle):
    (tmp_path / "rec").mkdir()
    write_tones(tmp_path / "rec" / "REC.wav", [(HIGH, 2)])
    write_tones(tmp_path / "rec" / "rec.wav", [(LOW, 2)])
    r = analyze(tmp_path / "rec", "--model", tiny_bundle, "-o", tmp_path / "out")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "differ only in letter case" in lines[0] and "REC.wav" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_shards_in_separate_processes_merge_to_one_run(tmp_path, tiny_bundle):
    make_archive(tmp_path / "arch")
    inputs = [tmp_path / "arch" / "siteA", tmp_path / "arch" / "siteB"]
    one = tmp_path / "one"
    assert analyze(*inputs, "--model", tiny_bundle, "-o", one).returncode == 0
    sharded = tmp_path / "sharded"
    procs = [sonotrap("analyze", *map(str, inputs), "--model", str(tiny_bundle), "-o", str(sharded),
                      "--no-progress", "--shard", f"{k}/3") for k in (1, 2, 3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert not (sharded / "detections.csv").exists()  # shards write results only
    plans = [set((sharded / "plans" / f"{k}-of-3.txt").read_text().split()) for k in (1, 2, 3)]
    assert sum(map(len, plans)) == len(set.union(*plans)) == 5  # disjoint, complete
    r = run_cli("analyze", "--merge", "-o", str(sharded))
    assert r.returncode == 0, r.stderr
    assert "merged 5 recording(s)" in r.stderr
    assert outputs(sharded) == outputs(one)


def test_merge_of_unfinished_shards_says_what_is_missing(tmp_path, tiny_bundle):
    make_archive(tmp_path / "arch")
    out = tmp_path / "out"
    for k in (1, 2):
        assert analyze(tmp_path / "arch", "--model", tiny_bundle, "-o", out, "--shard", f"{k}/2").returncode == 0
    (out / "results" / "siteB" / "rec.wav.json").unlink()  # its shard was killed before it got there
    r = run_cli("analyze", "--merge", "-o", str(out))
    assert r.returncode == 1 and "1 not analysed yet (first: siteB/rec.wav)" in r.stderr, r.stderr


def test_two_workers_equal_one(tmp_path, tiny_bundle):
    make_archive(tmp_path / "arch")
    one, two = tmp_path / "w1", tmp_path / "w2"
    assert analyze(tmp_path / "arch", "--model", tiny_bundle, "-o", one).returncode == 0
    r = analyze(tmp_path / "arch", "--model", tiny_bundle, "-o", two, "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "2 worker(s) x 1 thread(s)" in r.stderr and "per CPU-hour" in r.stderr
    assert outputs(two) == outputs(one)


def test_killed_run_resumes_and_loses_nothing(tmp_path, tiny_bundle):
    rec = tmp_path / "rec"
    rec.mkdir()
    for i in range(30):
        write_tones(rec / f"{i:02d}.wav", [(None, 2), (HIGH if i % 2 else LOW, 2), (None, 4)])
    clean = tmp_path / "clean"
    assert analyze(rec, "--model", tiny_bundle, "-o", clean, timeout=300).returncode == 0
    out = tmp_path / "out"
    p = sonotrap("analyze", str(rec), "--model", str(tiny_bundle), "-o", str(out), "--no-progress")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((out / "results").glob("*.json"))) < 3:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    kept = list((out / "results").glob("*.json"))
    assert 3 <= len(kept) < 30, "the run finished before it could be killed"
    r = analyze(rec, "--model", tiny_bundle, "-o", out, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{len(kept)} already done" in r.stderr and f"analyzed {30 - len(kept)} recording(s)" in r.stderr
    assert outputs(out) == outputs(clean)
    assert not list(out.rglob("*.tmp"))


def test_results_of_another_model_are_not_mixed_in(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "x.wav", [(HIGH, 2)])
    out = tmp_path / "out"
    assert analyze(wav, "--model", tiny_bundle, "-o", out).returncode == 0
    r = analyze(wav, "--model", tiny_bundle, "-o", out, "--hop", "1.0")
    assert r.returncode == 2 and "other settings" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_shard_assignment_is_stable_and_checked():
    # Pinned: a change here would reshuffle every half-finished sharded analysis.
    assert [shard_of(f"site{i}/20240501_0600{i}.flac", 4) for i in range(6)] == [1, 1, 4, 3, 2, 4]
    assert parse_shard("2/8") == (2, 8)
    for bad in ("0/4", "5/4", "2", "a/b"):
        with pytest.raises(SonotrapError, match="K/N"):
            parse_shard(bad)



def test_progress_is_one_bar_without_per_file_log_lines(tmp_path, tiny_bundle):
    make_archive(tmp_path / "arch")
    (tmp_path / "arch" / "siteA" / "broken.wav").write_text("not audio")
    r = run_cli("analyze", str(tmp_path / "arch"), "--model", str(tiny_bundle), "-o", str(tmp_path / "out"))
    assert r.returncode == 1
    assert "audio: file" not in r.stderr  # the daemon's per-file INFO line would break the bar
    lines = [line for line in r.stderr.replace("\r", "\n").splitlines() if line.strip()]
    skipped = [line for line in lines if "skipped:" in line]
    assert len(skipped) == 1 and skipped[0].lstrip("\x1b[K").startswith("skipped: "), r.stderr
