"""Ingestion: annotation tables, Raven selection tables, class folders, and bad input.

Every test writes small real audio files (numpy noise via soundfile, WAV/FLAC, mono/stereo,
22.05/44.1 kHz) in ``tmp_path`` and checks the records and problem lines that come back.
"""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.errors import SonotrapError
from trainer.annotations import (
    Annotation,
    Problems,
    Recording,
    audio_info,
    read_folders,
    read_raven,
    read_table,
)


def _audio(path: Path, seconds: float, sr: int = 22050, channels: int = 1, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    x = (0.01 * rng.standard_normal((n, channels) if channels > 1 else n)).astype(np.float32)
    sf.write(path, x, sr)
    return path


def _csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def _truncate(path: Path, fraction: float = 2 / 3) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _by_file(recordings: list[Recording]) -> dict[str, Recording]:
    return {r.file: r for r in recordings}


# ---------------------------------------------------------------- annotation tables


@pytest.fixture
def table_dir(tmp_path: Path) -> Path:
    """a.wav 3 s mono 22.05 kHz, b.flac 2 s stereo 44.1 kHz, c.wav/d.wav 1.5 s without calls."""
    _audio(tmp_path / "audio" / "a.wav", 3.0, 22050)
    _audio(tmp_path / "audio" / "b.flac", 2.0, 44100, channels=2)
    _audio(tmp_path / "audio" / "c.wav", 1.5, 16000)
    _audio(tmp_path / "audio" / "d.wav", 1.5, 16000)
    _csv(tmp_path / "annotations.csv", ["file", "start_s", "end_s", "label"], [
        ["audio/a.wav", 0.5, 0.9, "low"],
        ["audio/a.wav", 2.0, 2.5, "high"],
        ["audio/b.flac", 1.0, 1.2, "low"],
    ])
    return tmp_path


def test_read_table_without_files_list_keeps_only_annotated_files(table_dir):
    src = read_table(table_dir / "annotations.csv")
    assert src.root == table_dir
    recs = _by_file(src.recordings)
    assert set(recs) == {"audio/a.wav", "audio/b.flac"}  # c.wav/d.wav have no rows and no list
    assert recs["audio/a.wav"].duration_s == pytest.approx(3.0)
    assert recs["audio/a.wav"].sample_rate == 22050
    assert recs["audio/b.flac"].duration_s == pytest.approx(2.0)  # stereo: frames, not samples
    assert recs["audio/b.flac"].sample_rate == 44100
    assert all(r.complete for r in src.recordings)
    assert src.annotations == [
        Annotation("audio/a.wav", 0.5, 0.9, "low", True),
        Annotation("audio/a.wav", 2.0, 2.5, "high", True),
        Annotation("audio/b.flac", 1.0, 1.2, "low", True),
    ]
    assert src.labels == ["high", "low"]
    assert src.problems == []
    assert src.path("audio/a.wav") == table_dir / "audio" / "a.wav"


def test_read_table_files_list_adds_call_free_recordings_as_known_negatives(table_dir):
    _csv(table_dir / "files.csv", ["file"], [["audio/a.wav"], ["audio/b.flac"], ["audio/c.wav"]])
    src = read_table(table_dir / "annotations.csv", table_dir / "files.csv")
    recs = _by_file(src.recordings)
    assert set(recs) == {"audio/a.wav", "audio/b.flac", "audio/c.wav"}  # d.wav: unlisted, no rows
    assert recs["audio/c.wav"].complete is True
    assert recs["audio/c.wav"].duration_s == pytest.approx(1.5)
    assert recs["audio/c.wav"].sample_rate == 16000
    assert not [a for a in src.annotations if a.file == "audio/c.wav"]
    assert len(src.annotations) == 3
    assert src.problems == []


def test_read_table_root_other_than_table_folder(table_dir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("tables")
    ann = _csv(elsewhere / "ann.csv", ["file", "start_s", "end_s", "label"], [["audio/a.wav", 0.1, 0.2, "x"]])
    with pytest.raises(SonotrapError, match="a.wav does not exist"):
        read_table(ann, strict=True)  # default root = the table's folder: no audio there
    src = read_table(ann, root=table_dir)
    assert [r.file for r in src.recordings] == ["audio/a.wav"]


def test_read_table_present_column_gives_three_states_and_incomplete_recordings(table_dir):
    _csv(table_dir / "validated.csv", ["file", "start_s", "end_s", "label", "present"], [
        ["audio/a.wav", 0.5, 0.9, "low", "1"],
        ["audio/a.wav", 1.0, 1.4, "high", "0"],
        ["audio/a.wav", 2.0, 2.4, "low", ""],
    ])
    src = read_table(table_dir / "validated.csv")
    assert [a.present for a in src.annotations] == [True, False, None]
    assert [r.complete for r in src.recordings] == [False]
    # An explicit complete=True overrides the default for validation-style data.
    assert [r.complete for r in read_table(table_dir / "validated.csv", complete=True).recordings] == [True]


def test_annotation_just_past_the_end_is_clipped(table_dir):
    _csv(table_dir / "ann.csv", ["file", "start_s", "end_s", "label"], [["audio/a.wav", 2.8, 3.03, "low"]])
    src = read_table(table_dir / "ann.csv")
    assert src.annotations == [Annotation("audio/a.wav", 2.8, 3.0, "low", True)]
    assert src.problems == []


# Each bad row: (row, substrings that the single problem line must contain).
BAD_ROWS = {
    "missing audio": (["audio/nope.wav", 0.1, 0.2, "low"], ["nope.wav", "does not exist"]),
    "unreadable audio": (["audio/garbage.wav", 0.1, 0.2, "low"], ["garbage.wav", "cannot be read"]),
    "outside the file": (["audio/a.wav", 3.5, 3.9, "low"], ["ann.csv row 3", "outside", "a.wav"]),
    "negative start": (["audio/a.wav", -0.5, 0.2, "low"], ["ann.csv row 3", "outside"]),
    "end too late": (["audio/a.wav", 2.5, 3.5, "low"], ["ann.csv row 3", "outside"]),
    "end before start": (["audio/a.wav", 1.2, 1.0, "low"], ["ann.csv row 3", "not after start"]),
    "zero length": (["audio/a.wav", 1.0, 1.0, "low"], ["ann.csv row 3", "not after start"]),
    "not a number": (["audio/a.wav", "1,2", 1.5, "low"], ["ann.csv row 3", "seconds"]),
    "empty label": (["audio/a.wav", 1.0, 1.5, ""], ["ann.csv row 3", "empty label"]),
    "empty file name": (["", 1.0, 1.5, "low"], ["ann.csv row 3", "empty file name"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_read_table_bad_row_is_one_line_skipped_or_raised(table_dir, case):
    (table_dir / "audio" / "garbage.wav").write_bytes(b"RIFF\x00\x00\x00\x00this is not audio" * 10)
    row, expected = BAD_ROWS[case]
    good = ["audio/a.wav", 0.5, 0.9, "low"]
    ann = _csv(table_dir / "ann.csv", ["file", "start_s", "end_s", "label"], [good, row])

    src = read_table(ann)
    assert len(src.problems) == 1, src.problems
    line = src.problems[0]
    assert "\n" not in line
    for part in expected:
        assert part in line, (part, line)
    assert src.annotations == [Annotation("audio/a.wav", 0.5, 0.9, "low", True)]  # good row kept
    assert "audio/a.wav" in _by_file(src.recordings)

    with pytest.raises(SonotrapError) as err:
        read_table(ann, strict=True)
    assert str(err.value).startswith(line)


def test_read_table_problems_are_counted_once_per_file_and_per_row(table_dir):
    ann = _csv(table_dir / "ann.csv", ["file", "start_s", "end_s", "label"], [
        ["audio/a.wav", 0.5, 0.9, "low"],
        ["audio/missing.wav", 0.1, 0.2, "low"],
        ["audio/missing.wav", 0.3, 0.4, "low"],  # same missing file: not reported twice
        ["audio/a.wav", 9.0, 9.5, "low"],
        ["audio/a.wav", 1.0, 0.5, "low"],
        ["audio/b.flac", 0.2, 0.4, "high"],
    ])
    src = read_table(ann)
    assert len(src.problems) == 3
    assert sum("missing.wav" in p for p in src.problems) == 1
    assert any("row 5" in p for p in src.problems) and any("row 6" in p for p in src.problems)
    assert set(_by_file(src.recordings)) == {"audio/a.wav", "audio/b.flac"}
    assert [(a.file, a.start_s) for a in src.annotations] == [("audio/a.wav", 0.5), ("audio/b.flac", 0.2)]


def test_files_list_entry_missing_is_a_problem(table_dir):
    _csv(table_dir / "files.csv", ["file"], [["audio/a.wav"], ["audio/gone.flac"]])
    src = read_table(table_dir / "annotations.csv", table_dir / "files.csv")
    assert len(src.problems) == 1 and "gone.flac" in src.problems[0]
    with pytest.raises(SonotrapError, match="gone.flac"):
        read_table(table_dir / "annotations.csv", table_dir / "files.csv", strict=True)


@pytest.mark.parametrize("strict", [False, True])
def test_unknown_table_columns_stop_with_the_table_name(table_dir, strict):
    # The only annotation table is unusable, so even without strict there is nothing to read.
    bad = _csv(table_dir / "bad.csv", ["filename", "begin", "end", "species"], [["audio/a.wav", 0.1, 0.2, "x"]])
    with pytest.raises(SonotrapError) as err:
        read_table(bad, strict=strict)
    msg = str(err.value)
    assert "bad.csv" in msg and "start_s" in msg and "\n" not in msg
    files = _csv(table_dir / "files.csv", ["path"], [["audio/a.wav"]])
    with pytest.raises(SonotrapError, match="files.csv.*'file'"):
        read_table(table_dir / "annotations.csv", files, strict=strict)


def test_missing_annotation_table_is_an_error(tmp_path):
    with pytest.raises(SonotrapError, match="does not exist"):
        read_table(tmp_path / "nope.csv")


# ---------------------------------------------------------------- Raven selection tables

RAVEN_HEADER = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                "Low Freq (Hz)", "High Freq (Hz)"]


def _raven(path: Path, rows: list[list], label_col: str = "Species", header=None) -> Path:
    return _csv(path, header or RAVEN_HEADER + [label_col], rows, delimiter="\t")


@pytest.fixture
def raven_dir(tmp_path: Path) -> Path:
    d = tmp_path / "raven"
    _audio(d / "rec1.wav", 3.0, 22050)
    _audio(d / "sub" / "rec10.flac", 2.5, 44100, channels=2)
    _audio(d / "quiet.wav", 1.0, 32000)  # no table: a negative recording
    _raven(d / "rec1.Table.1.selections.txt", [
        [1, "Spectrogram 1", 1, 0.5, 0.9, 1000, 2000, "Erirub"],
        [1, "Waveform 1", 1, 0.5, 0.9, 1000, 2000, "Erirub"],  # same selection, other view
        [2, "Spectrogram 1", 1, 1.75, 2.25, 3000, 5000, "Turmer"],
    ])
    _raven(d / "sub" / "rec10.Table.1.selections.txt", [
        [1, "Spectrogram 1", 1, 0.25, 1.0, 1000, 2000, "Turmer"],
    ], label_col="Annotation")
    return d


def test_read_raven_tables_next_to_their_audio(raven_dir):
    src = read_raven(raven_dir)
    assert src.problems == []
    recs = _by_file(src.recordings)
    assert set(recs) == {"rec1.wav", "sub/rec10.flac", "quiet.wav"}
    assert recs["sub/rec10.flac"].sample_rate == 44100
    assert recs["sub/rec10.flac"].duration_s == pytest.approx(2.5)
    assert recs["quiet.wav"].duration_s == pytest.approx(1.0)
    assert all(r.complete for r in src.recordings)
    assert sorted(src.annotations, key=lambda a: (a.file, a.start_s)) == [
        Annotation("rec1.wav", 0.5, 0.9, "Erirub"),
        Annotation("rec1.wav", 1.75, 2.25, "Turmer"),
        Annotation("sub/rec10.flac", 0.25, 1.0, "Turmer"),  # 'Annotation' column, rec10 != rec1
    ]


def test_read_raven_bad_rows_and_tables(raven_dir):
    _raven(raven_dir / "rec1.Table.1.selections.txt", [
        [1, "Spectrogram 1", 1, 0.5, 0.9, 1000, 2000, "Erirub"],
        [2, "Spectrogram 1", 1, 4.0, 4.5, 1000, 2000, "Erirub"],  # row 3: outside the 3-s file
        [3, "Spectrogram 1", 1, 1.5, 1.0, 1000, 2000, "Erirub"],  # row 4: end before start
        [4, "Spectrogram 1", 1, "x", 1.0, 1000, 2000, "Erirub"],  # row 5: not a number
    ])
    _raven(raven_dir / "orphan.Table.1.selections.txt", [[1, "Spectrogram 1", 1, 0.1, 0.2, 1, 2, "X"]])
    src = read_raven(raven_dir)
    assert len(src.problems) == 4, src.problems
    joined = "\n".join(src.problems)
    for part in ("rec1.Table.1.selections.txt row 3", "rec1.Table.1.selections.txt row 4",
                 "rec1.Table.1.selections.txt row 5", "orphan.Table.1.selections.txt"):
        assert part in joined
    assert [a.start_s for a in src.annotations if a.file == "rec1.wav"] == [0.5]
    with pytest.raises(SonotrapError, match=r"orphan\.Table\.1\.selections\.txt matches no audio"):
        read_raven(raven_dir, strict=True)  # strict stops at the first problem
    (raven_dir / "orphan.Table.1.selections.txt").unlink()
    with pytest.raises(SonotrapError, match=r"rec1\.Table\.1\.selections\.txt row 3: call 4\.0-4\.5 s"):
        read_raven(raven_dir, strict=True)


def test_read_raven_table_with_unknown_columns_is_skipped_and_counted(raven_dir):
    _raven(raven_dir / "rec1.Table.1.selections.txt", [[1, "Spectrogram 1", 1, 0.5, 0.9, 1, 2, "Erirub"]],
           header=["Selection", "View", "Channel", "Start", "Stop", "Low", "High", "Kind"])
    src = read_raven(raven_dir)
    assert len(src.problems) == 1
    line = src.problems[0]
    assert "rec1.Table.1.selections.txt" in line and "Begin Time (s)" in line and "\n" not in line
    # Its recording is unlabelled now, so it must not pass as a complete all-negative recording.
    assert "rec1.wav" not in _by_file(src.recordings)
    assert [a.file for a in src.annotations] == ["sub/rec10.flac"]
    with pytest.raises(SonotrapError) as err:
        read_raven(raven_dir, strict=True)
    assert str(err.value).startswith(line)


def test_read_raven_table_without_label_column(raven_dir):
    _raven(raven_dir / "rec1.Table.1.selections.txt", [[1, "Spectrogram 1", 1, 0.5, 0.9, 1, 2, "Erirub"]],
           label_col="Notes")
    src = read_raven(raven_dir)
    assert len(src.problems) == 1 and "Species" in src.problems[0]
    with pytest.raises(SonotrapError, match="rec1.Table.1.selections.txt"):
        read_raven(raven_dir, strict=True)


def test_read_raven_needs_a_folder_with_tables(tmp_path):
    with pytest.raises(SonotrapError, match="does not exist"):
        read_raven(tmp_path / "nope")
    _audio(tmp_path / "only_audio" / "x.wav", 1.0)
    with pytest.raises(SonotrapError, match="no Raven selection tables"):
        read_raven(tmp_path / "only_audio")


# ---------------------------------------------------------------- folder per class


def test_read_folders_labels_and_negatives(tmp_path):
    d = tmp_path / "clips"
    _audio(d / "Erirub" / "e1.wav", 1.0, 22050)
    _audio(d / "Erirub" / "e2.flac", 1.5, 44100, channels=2)
    _audio(d / "Turmer" / "t1.wav", 0.8, 16000)
    _audio(d / "negative" / "n1.wav", 2.0, 22050)
    _audio(d / "background" / "b1.flac", 3.0, 44100, channels=2)
    (d / "Turmer" / "notes.txt").write_text("not audio")
    src = read_folders(d)
    assert src.problems == []
    recs = _by_file(src.recordings)
    assert set(recs) == {"Erirub/e1.wav", "Erirub/e2.flac", "Turmer/t1.wav", "negative/n1.wav", "background/b1.flac"}
    assert recs["Erirub/e2.flac"].sample_rate == 44100
    assert recs["background/b1.flac"].duration_s == pytest.approx(3.0)
    assert all(r.complete for r in src.recordings)
    anns = sorted(src.annotations, key=lambda a: a.file)
    assert [(a.file, a.label, a.start_s) for a in anns] == [
        ("Erirub/e1.wav", "Erirub", 0.0), ("Erirub/e2.flac", "Erirub", 0.0), ("Turmer/t1.wav", "Turmer", 0.0)]
    assert [a.end_s for a in anns] == pytest.approx([1.0, 1.5, 0.8])  # whole clip
    assert src.labels == ["Erirub", "Turmer"]  # negative folders are not classes


def test_read_folders_bad_clip_is_skipped_or_raised(tmp_path):
    d = tmp_path / "clips"
    _audio(d / "Erirub" / "e1.wav", 1.0)
    (d / "Erirub" / "broken.wav").write_bytes(b"not a wave file at all" * 20)
    src = read_folders(d)
    assert len(src.problems) == 1 and "broken.wav" in src.problems[0] and "cannot be read" in src.problems[0]
    assert [r.file for r in src.recordings] == ["Erirub/e1.wav"]
    with pytest.raises(SonotrapError, match="broken.wav"):
        read_folders(d, strict=True)


def test_read_folders_errors(tmp_path):
    with pytest.raises(SonotrapError, match="does not exist"):
        read_folders(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    _audio(tmp_path / "flat" / "x.wav", 1.0)
    with pytest.raises(SonotrapError, match="no sub-folders"):
        read_folders(tmp_path / "flat")
    (tmp_path / "empty" / "A").mkdir(parents=True)
    with pytest.raises(SonotrapError, match="no readable audio"):
        read_folders(tmp_path / "empty")


# ---------------------------------------------------------------- truncated audio


@pytest.mark.parametrize("suffix,channels", [(".flac", 1), (".flac", 2), (".wav", 1), (".wav", 2)])
def test_truncated_audio_is_reported_not_passed_on(tmp_path, suffix, channels):
    path = _truncate(_audio(tmp_path / f"cut{suffix}", 3.0, 22050, channels=channels))
    lax = Problems(strict=False)
    assert audio_info(path, lax) is None
    assert len(lax.lines) == 1
    line = lax.lines[0]
    assert str(path) in line and "truncated or damaged" in line and "re-export or remove it" in line
    assert "\n" not in line
    with pytest.raises(SonotrapError) as err:
        audio_info(path, Problems(strict=True))
    assert str(err.value).startswith(line)


def test_truncated_flac_would_fail_a_full_decode(tmp_path):
    """Why the check matters: the header still promises 3 s, decoding the file fails."""
    path = _truncate(_audio(tmp_path / "cut.flac", 3.0, 22050))
    assert sf.info(str(path)).frames == 3 * 22050
    with pytest.raises(Exception):  # noqa: B017 (libsndfile's error type varies by version)
        sf.read(str(path))


@pytest.mark.parametrize("suffix,channels,sr", [
    (".flac", 1, 22050), (".flac", 2, 44100), (".wav", 1, 16000), (".wav", 2, 44100), (".ogg", 1, 22050),
])
def test_intact_audio_passes_the_end_check(tmp_path, suffix, channels, sr):
    path = _audio(tmp_path / f"ok{suffix}", 2.5, sr, channels=channels)
    problems = Problems(strict=True)
    got = audio_info(path, problems)
    assert got is not None and got[1] == sr and got[0] == pytest.approx(2.5)
    assert problems.lines == []


def test_very_short_intact_file_passes(tmp_path):
    path = _audio(tmp_path / "short.flac", 200 / 22050, 22050)  # fewer frames than the tail check reads
    assert audio_info(path, Problems(strict=True)) == pytest.approx((200 / 22050, 22050))


def test_streaming_wav_with_placeholder_size_is_not_called_truncated(tmp_path):
    """Recorders that cannot seek back write 0xFFFFFFFF as data size; the audio itself is fine."""
    path = _audio(tmp_path / "stream.wav", 1.0, 16000)
    data = bytearray(path.read_bytes())
    at = data.find(b"data")
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)
    data[at + 4: at + 8] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    got = audio_info(path, Problems(strict=True))
    assert got == pytest.approx((1.0, 16000))


def test_truncated_file_in_a_table_is_skipped_with_its_rows(table_dir):
    _truncate(table_dir / "audio" / "b.flac")
    src = read_table(table_dir / "annotations.csv")
    assert len(src.problems) == 1 and "b.flac" in src.problems[0] and "truncated" in src.problems[0]
    assert set(_by_file(src.recordings)) == {"audio/a.wav"}
    assert {a.file for a in src.annotations} == {"audio/a.wav"}
    with pytest.raises(SonotrapError, match="b.flac is truncated"):
        read_table(table_dir / "annotations.csv", strict=True)


def test_truncated_clip_in_folders_and_raven_is_counted(tmp_path, raven_dir):
    d = tmp_path / "clips"
    _audio(d / "A" / "ok.wav", 1.0)
    _truncate(_audio(d / "A" / "cut.flac", 2.0))
    src = read_folders(d)
    assert [r.file for r in src.recordings] == ["A/ok.wav"]
    assert len(src.problems) == 1 and "cut.flac" in src.problems[0]

    _truncate(raven_dir / "sub" / "rec10.flac")
    src = read_raven(raven_dir)
    assert "sub/rec10.flac" not in _by_file(src.recordings)
    assert len(src.problems) == 1 and "rec10.flac is truncated" in src.problems[0]
    assert all(a.file == "rec1.wav" for a in src.annotations)
