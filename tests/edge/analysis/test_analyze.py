"""`sonotrap analyze`: same detections as the daemon, CSV + Raven tables, damaged files skipped."""

from __future__ import annotations

import csv

import soundfile as sf

from tests.support.daemon_helpers import HIGH, LOW, read_jsonl, run_cli, stream_t0, write_tones
from tests.support.tiny_model import tone


def make_corpus(root):
    (root / "sub").mkdir(parents=True)
    write_tones(root / "a.wav", [(None, 3), (LOW, 2), (None, 3), (HIGH, 1.5), (None, 2)])
    sf.write(str(root / "sub" / "b.flac"), tone(HIGH, 1.2, 44100), 44100)  # shorter than one window, 44.1 kHz
    c = write_tones(root / "c.wav", [(None, 3), (LOW, 2), (None, 3), (HIGH, 2)])
    c.write_bytes(c.read_bytes()[: c.stat().st_size * 6 // 10])  # truncated copy
    (root / "junk.wav").write_text("not audio at all")
    (root / "notes.txt").write_text("ignored: not a recording")


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_analyze_folder_writes_csv_and_raven_and_counts_failures(tmp_path, tiny_bundle):
    make_corpus(tmp_path / "rec")
    out = tmp_path / "out"
    r = run_cli("analyze", str(tmp_path / "rec"), "--model", str(tiny_bundle), "-o", str(out), "--no-progress")
    assert r.returncode == 1, r.stderr  # two recordings could not be read
    assert "c.wav is truncated" in r.stderr and "junk.wav cannot be read" in r.stderr
    assert "analyzed 2 recording(s)" in r.stderr and "2 recording(s) could not be read" in r.stderr
    rows = read_csv(out / "detections.csv")
    got = [(row["file"], row["label"], float(row["start_s"]), float(row["end_s"])) for row in rows]
    assert got == [
        ("a.wav", "tone_low", 1.5, 6.5),  # windows [e-2, e] that overlap the 3..5 s tone
        ("a.wav", "tone_high", 6.5, 11.0),  # 8..9.5 s tone
        ("sub/b.flac", "tone_high", 0.0, 1.2),  # short file: one padded window, clipped to the file
    ]
    assert all(float(row["peak_score"]) > 0.9 for row in rows)
    raven = (out / "a.wav.selections.txt").read_text().splitlines()
    assert raven[0].split("\t") == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                                    "Low Freq (Hz)", "High Freq (Hz)", "Species", "Score"]
    first = raven[1].split("\t")
    assert first[:5] == ["1", "Spectrogram 1", "1", "1.500", "6.500"] and first[7] == "tone_low"
    assert len(raven) == 3 and (out / "sub" / "b.flac.selections.txt").is_file()
    assert not (out / "c.wav.selections.txt").exists()


def test_strict_stops_at_first_bad_recording(tmp_path, tiny_bundle):
    make_corpus(tmp_path / "rec")
    out = tmp_path / "out"
    r = run_cli("analyze", str(tmp_path / "rec"), "--model", str(tiny_bundle), "-o", str(out),
                "--no-progress", "--strict")
    assert r.returncode == 1
    files = {row["file"] for row in read_csv(out / "detections.csv")}
    assert files == {"a.wav"}  # sorted order: a.wav, c.wav (stops here), junk.wav, sub/b.flac


def test_analyze_equals_the_daemon_on_the_same_file(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "x.wav", [(None, 2.5), (LOW, 1.5), (None, 1), (HIGH, 3), (LOW, 2), (None, 3)])
    r = run_cli("analyze", str(wav), "--model", str(tiny_bundle), "-o", str(tmp_path / "out"), "--no-progress",
                "--batch", "5")
    assert r.returncode == 0, r.stderr
    rows = read_csv(tmp_path / "out" / "detections.csv")
    r2 = run_cli("run", "--file", str(wav), "--fast", "--model", str(tiny_bundle), "--no-mqtt",
                 "--state-dir", str(tmp_path / "st"), "--jsonl", str(tmp_path / "d.jsonl"),
                 "--hops-jsonl", str(tmp_path / "h.jsonl"))
    assert r2.returncode == 0, r2.stderr
    t0 = stream_t0(read_jsonl(tmp_path / "h.jsonl"))
    daemon = sorted((e["label"], round(e["start_epoch"] - t0, 2), round(e["end_epoch"] - t0, 2), e["score"])
                    for e in read_jsonl(tmp_path / "d.jsonl"))
    offline = sorted((row["label"], float(row["start_s"]), float(row["end_s"]), round(float(row["peak_score"]), 4))
                     for row in rows)
    assert len(offline) == 3 and offline == daemon


def test_missing_path_and_empty_folder_are_one_line_errors(tmp_path, tiny_bundle):
    r = run_cli("analyze", str(tmp_path / "nope.wav"), "--model", str(tiny_bundle))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope.wav'} does not exist; pass recordings or folders that contain them"]
    (tmp_path / "empty").mkdir()
    r = run_cli("analyze", str(tmp_path / "empty"), "--model", str(tiny_bundle))
    assert r.returncode == 2 and r.stderr.startswith("error: no recordings found") and len(r.stderr.splitlines()) == 1


def test_full_disk_is_one_line_error(tmp_path, small_fs, tiny_bundle):
    """Results that cannot be written (ENOSPC) end with one line naming the problem, not a traceback."""
    wav = write_tones(tmp_path / "x.wav", [(None, 1), (LOW, 1.5), (None, 1), (HIGH, 1.5), (None, 1)])
    filler = small_fs / "filler"
    with filler.open("wb", buffering=0) as fh:  # fill the 600 KiB disk
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    r = run_cli("analyze", str(wav), "--model", str(tiny_bundle), "-o", str(small_fs / "out"), "--no-progress")
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "No space left on device" in last and "free space" in last, r.stderr
    assert "Traceback" not in r.stderr
