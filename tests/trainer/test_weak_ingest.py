"""Validation exports (Arbimon pattern matching + generic present 1/0/empty) -> 3-state windows."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig
from trainer.prepare import DataSpec, prepare_run
from trainer.validation_export import export_format, parse_validated, read_validation_export
from trainer.windows import WindowConfig, make_windows, to_arrays

ARBIMON_HEADER = ["id", "recording", "site", "year", "month", "day", "hour", "minute", "species", "songtype",
                  "x1", "x2", "y1", "y2", "frequency", "validated", "url", "score", "site_id"]


def _write_audio(root: Path) -> None:
    (root / "site_a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    # 10 s at 32 kHz (FLAC) and 3 s at 44.1 kHz stereo (WAV): names are unique below root.
    sf.write(root / "site_a" / "REC_A_0600.flac", (1e-3 * rng.standard_normal(320000)).astype(np.float32), 32000)
    sf.write(root / "REC_B_0700.wav", (1e-3 * rng.standard_normal((132300, 2))).astype(np.float32), 44100)


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _arbimon_row(rec, species, songtype, x1, x2, validated, url=""):
    return [1, rec, "Site", 2024, 3, 19, 6, 0, species, songtype, x1, x2, 1000.0, 8000.0, 48000,
            validated, url, 0.2, 7]


@pytest.fixture
def audio_root(tmp_path) -> Path:
    root = tmp_path / "audio"
    _write_audio(root)
    return root


def test_parse_validated_values():
    assert parse_validated("1") is True and parse_validated("present") is True
    assert parse_validated("0") is False and parse_validated("not present") is False
    assert parse_validated("(not validated)") is None and parse_validated("") is None
    with pytest.raises(ValueError):
        parse_validated("maybe")


def test_arbimon_export_true_false_and_unvalidated_rows(audio_root, tmp_path):
    export = _write(tmp_path / "pm-export.csv", ARBIMON_HEADER, [
        _arbimon_row("REC_A_0600.flac", "Amazona albifrons", "Simple Call", 4.0, 5.0, "present"),
        _arbimon_row("REC_A_0600.flac", "Amazona albifrons", "Simple Call", 0.1, 0.6, "not present"),
        _arbimon_row("REC_A_0600.flac", "Amazona albifrons", "Simple Call", 7.0, 8.0, "(not validated)"),
        # Recording only named by its download URL (Arbimon 'url' column); 0/1 style validation.
        _arbimon_row("", "Ara macao", "Call", 2.5, 2.9, "1", "https://arbimon.org/x/download/REC_B_0700.wav"),
        _arbimon_row("REC_B_0700.wav", "Amazona albifrons", "Simple Call", 1.0, 1.5, "0"),
        _arbimon_row("MISSING.wav", "Ara macao", "Call", 1.0, 2.0, "1"),
    ])
    assert export_format(export) == "arbimon"
    src = read_validation_export(export, audio_root)
    got = sorted((a.file, a.start_s, a.end_s, a.label, a.present) for a in src.annotations)
    assert got == [
        ("REC_B_0700.wav", 1.0, 1.5, "Amazona_albifrons_Simple_Call", False),
        ("REC_B_0700.wav", 2.5, 2.9, "Ara_macao_Call", True),
        ("site_a/REC_A_0600.flac", 0.1, 0.6, "Amazona_albifrons_Simple_Call", False),
        ("site_a/REC_A_0600.flac", 4.0, 5.0, "Amazona_albifrons_Simple_Call", True),
    ]
    assert {r.file: (round(r.duration_s, 3), r.sample_rate, r.complete) for r in src.recordings} == {
        "site_a/REC_A_0600.flac": (10.0, 32000, False), "REC_B_0700.wav": (3.0, 44100, False)}
    assert len(src.problems) == 1 and "MISSING.wav" in src.problems[0] and "row 7" in src.problems[0]
    with pytest.raises(SonotrapError, match="MISSING.wav"):
        read_validation_export(export, audio_root, strict=True)

    labels = sorted({a.label for a in src.annotations})
    wins = make_windows(src.recordings, src.annotations, labels, WindowConfig())
    by = {(w.file, w.start_s): w for w in wins}
    # Centred on the detection: 4.0-5.0 s -> 3.5-5.5 s; the 0.1-0.6 s hit is clipped to 0-2 s;
    # in the 3-s file the 2.5-2.9 s hit is clipped to end at 3.0 s.
    assert set(by) == {("site_a/REC_A_0600.flac", 3.5), ("site_a/REC_A_0600.flac", 0.0),
                       ("REC_B_0700.wav", 1.0), ("REC_B_0700.wav", 0.25)}
    targets, known = to_arrays([by[("site_a/REC_A_0600.flac", 3.5)], by[("site_a/REC_A_0600.flac", 0.0)]],
                               labels)
    amazona, ara = labels.index("Amazona_albifrons_Simple_Call"), labels.index("Ara_macao_Call")
    assert known[:, amazona].all() and not known[:, ara].any()  # only the validated class is known
    assert targets[0, amazona] == 1 and targets[1, amazona] == 0
    # No negative tiles from incomplete recordings: the unvalidated 7-8 s hit yields nothing.
    assert not any(w.file.endswith("REC_A_0600.flac") and w.start_s > 6 for w in wins)


def test_generic_export_present_1_0_empty(audio_root, tmp_path):
    export = _write(tmp_path / "validated.csv", ["file", "start_s", "end_s", "label", "present"], [
        ["site_a/REC_A_0600.flac", 8.5, 9.9, "frog", 1],
        ["site_a/REC_A_0600.flac", 2.0, 2.4, "frog", 0],
        ["site_a/REC_A_0600.flac", 2.0, 2.4, "owl", ""],  # unknown: gives no window, no knowledge
        ["REC_B_0700.wav", 0.2, 0.4, "owl", "1"],
    ])
    assert export_format(export) == "generic"
    src = read_validation_export(export, audio_root)
    assert sorted((a.label, str(a.present)) for a in src.annotations) == [
        ("frog", "False"), ("frog", "True"), ("owl", "None"), ("owl", "True")]
    assert all(not r.complete for r in src.recordings)
    labels = ["frog", "owl"]
    wins = make_windows(src.recordings, src.annotations, labels, WindowConfig())
    assert sorted((w.file, w.start_s, w.end_s) for w in wins) == [
        ("REC_B_0700.wav", 0.0, 2.0),  # clipped at the start
        ("site_a/REC_A_0600.flac", 1.2, 3.2),
        ("site_a/REC_A_0600.flac", 8.0, 10.0),  # 8.5-9.9 centred at 9.2 -> clipped at the end
    ]
    targets, known = to_arrays(sorted(wins, key=lambda w: (w.file, w.start_s)), labels)
    np.testing.assert_array_equal(known, [[False, True], [True, False], [True, False]])
    np.testing.assert_array_equal(targets, [[0, 1], [0, 0], [1, 0]])


def test_train_prepare_reads_validation_exports(audio_root, tmp_path):
    a = _write(tmp_path / "a.csv", ARBIMON_HEADER, [
        _arbimon_row("REC_A_0600.flac", "Ara macao", "Call", 4.0, 5.0, "present"),
        _arbimon_row("REC_B_0700.wav", "Ara macao", "Call", 0.5, 1.0, "not present"),
    ])
    b = _write(tmp_path / "b.csv", ARBIMON_HEADER, [
        _arbimon_row("REC_A_0600.flac", "Pulsatrix", "", 6.0, 6.5, "1"),
        _arbimon_row("REC_B_0700.wav", "Pulsatrix", "", 2.0, 2.5, "1"),
    ])
    spec = DataSpec(validations=[str(a), str(b)], root=str(audio_root), fractions=(1.0, 0.0, 0.0))
    prepared = prepare_run(spec, FrontendConfig(), tmp_path / "run")
    assert prepared.run.labels == ["Ara_macao_Call", "Pulsatrix"]
    assert prepared.num_windows["train"] == 4
    assert all(not r.complete for r in prepared.run.recordings.values())
    with pytest.raises(SonotrapError, match="exactly one"):
        prepare_run(DataSpec(validations=[str(a)], data=str(tmp_path)), None, tmp_path / "run2")


def test_unrecognised_export_header(tmp_path):
    bad = _write(tmp_path / "bad.csv", ["foo", "bar"], [[1, 2]])
    with pytest.raises(SonotrapError, match="expected the Arbimon"):
        read_validation_export(bad, tmp_path)
