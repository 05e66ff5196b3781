"""No detections from silence or noise, end to end with the shipped model; quiet calls still found.

The real CLI (``sonotrap run --file ... --jsonl -`` and ``sonotrap analyze``) with the real
``models/demo`` bundle, every label enabled (the bundle ships unreliable labels disabled,
which would make "no detections" trivially true): digital silence, a DC offset and white/pink noise below the absolute
level floor give zero detections and never reach the model; with the activity gate on, louder
stationary noise gives none either. A real field call attenuated by 40 dB (1.5e-5 of full
scale at its peak) is still detected.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.analysis.analyze import analyze_file
from edge.config import Config
from edge.inference.runtime import Classifier
from edge.models.bundle import load_bundle
from tests.support.daemon_helpers import run_cli
from tests.support.paths import REPO

DEMO = REPO / "models" / "demo"
NIPS = Path(os.environ.get("SONOTRAP_DATA", REPO / ".." / "shared" / "data")) / "nips4bplus"
QUIET_CALL = "audio/nips4b_train042.flac"  # peak 0.15% of full scale; Galthe and Turphi calls
SR = 32000
SECONDS = 8


def white(dbfs: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SECONDS * SR) * 10 ** (dbfs / 20)


def pink(dbfs: float, seed: int = 0) -> np.ndarray:
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(SECONDS * SR))
    spec /= np.sqrt(np.maximum(np.arange(spec.size), 1))
    x = np.fft.irfft(spec, SECONDS * SR)
    return x / x.std() * 10 ** (dbfs / 20)


BELOW_FLOOR = {
    "silence": lambda: np.zeros(SECONDS * SR),
    "dc": lambda: np.full(SECONDS * SR, 0.3),
    "dc_negative_with_noise": lambda: -0.05 + white(-130, 1),
    "white_-120dBFS": lambda: white(-120, 2),
    "white_-140dBFS": lambda: white(-140, 3),
    "pink_-125dBFS": lambda: pink(-125, 4),
    "pink_-140dBFS": lambda: pink(-140, 5),
}
STATIONARY = {  # louder than the floor: the activity gate's job
    "white_-90dBFS": lambda: white(-90, 6),
    "white_-70dBFS": lambda: white(-70, 7),
    "white_-50dBFS": lambda: white(-50, 8),
    "pink_-80dBFS": lambda: pink(-80, 9),
    "pink_-60dBFS": lambda: pink(-60, 10),
}


def write(folder: Path, signals: dict) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, make in signals.items():
        out.append(folder / f"{name}.wav")
        sf.write(out[-1], make().astype(np.float32), SR, subtype="FLOAT")
    return out


def run_detections(path: Path, tmp: Path, *sets: str, hops: Path | None = None) -> list[dict]:
    extra = ["--hops-jsonl", str(hops)] if hops else []
    r = run_cli("run", "--file", str(path), "--no-mqtt", "--jsonl", "-", "--model", str(DEMO), "--enable-labels", "all",
                 "--state-dir", str(tmp / "state"), *extra, *[a for s in sets for a in ("--set", s)], timeout=300)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def analyze_rows(folder: Path, tmp: Path, *sets: str) -> list[dict]:
    out = tmp / "out"
    r = run_cli("analyze", str(folder), "--model", str(DEMO), "-o", str(out), "--no-progress", "--enable-labels", "all",
                *[a for s in sets for a in ("--set", s)], timeout=300)
    assert r.returncode == 0, r.stderr
    with open(out / "detections.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def config(activity: bool = False) -> Config:
    cfg = Config()
    cfg.detector.enable_labels = "all"
    cfg.gate.activity = activity
    return cfg


@pytest.fixture(scope="module")
def classifier():
    return Classifier(load_bundle(DEMO))


@pytest.mark.parametrize("name", ["silence", "dc", "pink_-125dBFS"])
def test_run_publishes_nothing_for_blank_input(tmp_path, name):
    (path,) = write(tmp_path / "in", {name: BELOW_FLOOR[name]})
    assert run_detections(path, tmp_path, hops=tmp_path / "hops.jsonl") == []
    lines = [json.loads(line) for line in (tmp_path / "hops.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * SECONDS - 3 and all(h["gated"] for h in lines)
    assert all(v == 0 for h in lines for v in h["scores"].values())


def test_analyze_finds_nothing_below_the_floor_and_never_runs_the_model(tmp_path, classifier):
    files = write(tmp_path / "in", BELOW_FLOOR)
    assert analyze_rows(tmp_path / "in", tmp_path) == []
    for f in files:
        res = analyze_file(f, classifier, config())
        assert res.events == [] and res.hops > 0 and res.gated == res.hops, f.name


def test_activity_gate_silences_stationary_noise(tmp_path, classifier):
    files = write(tmp_path / "in", STATIONARY)
    assert analyze_rows(tmp_path / "in", tmp_path, "gate.activity=true") == []
    assert run_detections(files[1], tmp_path, "gate.activity=true") == []
    cfg = config(activity=True)
    for f in files:
        res = analyze_file(f, classifier, cfg)
        assert res.events == [] and res.gated == res.hops, f.name


def calls_found(events, calls) -> set:
    return {c for c in calls if any(e.label == c[2] and e.start < c[1] and e.end > c[0] for e in events)}


@pytest.mark.skipif(not (NIPS / QUIET_CALL).exists(), reason=f"nips4bplus data not found at {NIPS}")
@pytest.mark.parametrize("activity", [False, True])
def test_a_real_call_at_minus_40_db_is_still_detected(tmp_path, classifier, activity):
    with open(NIPS / "annotations.csv", newline="") as fh:
        calls = [(float(r["start_s"]), float(r["end_s"]), r["label"]) for r in csv.DictReader(fh)
                 if r["file"] == QUIET_CALL]
    audio, sr = sf.read(NIPS / QUIET_CALL, dtype="float32")
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, audio * np.float32(0.01), sr, subtype="FLOAT")
    assert np.abs(audio).max() * 0.01 < 2e-5
    cfg = config(activity)
    loud = calls_found(analyze_file(NIPS / QUIET_CALL, classifier, cfg).events, calls)
    res = analyze_file(quiet, classifier, cfg)
    assert res.gated < res.hops and len(loud) >= 2
    assert calls_found(res.events, calls) == loud
    if not activity:  # the daemon path too
        labels = {e["label"] for e in run_detections(quiet, tmp_path)}
        assert {lab for _, _, lab in loud} <= labels
