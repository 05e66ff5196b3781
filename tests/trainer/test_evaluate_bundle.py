"""`sonotrap evaluate --bundle`: the edge pipeline's detections scored against annotated calls."""

from __future__ import annotations

import json

import pytest

from edge.models.bundle import load_bundle
from tests.support.daemon_helpers import run_cli
from tests.support.synth_calls import make_dataset
from tests.support.tiny_model import make_tiny_bundle

BANDS = {"low": (1000.0, 1400.0), "high": (3800.0, 4400.0)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth-eval")
    calls = make_dataset(root, n_files=12, n_negative=3)
    files = [f"audio/rec{i:02d}.{'flac' if i % 3 else 'wav'}" for i in range(15)]
    split = {"train": files[:3], "val": files[3:9] + files[12:13], "test": files[9:12] + files[13:]}
    (root / "split.json").write_text(json.dumps(split))
    return root, calls, split


def _evaluate(bundle, root, split, out, *extra):
    r = run_cli("evaluate", "--bundle", str(bundle), "--data", str(root), "--split-file", str(root / "split.json"),
                "--split", split, "--out", str(out), *extra, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout, json.loads((out / "metrics.json").read_text())["user_view"]


def test_bundle_is_scored_as_the_daemon_publishes(tmp_path, data):
    root, calls, split = data
    bundle = make_tiny_bundle(tmp_path / "b", bands=BANDS)
    stdout, v = _evaluate(bundle, root, "test", tmp_path / "rep")
    n_calls = sum(c.file in split["test"] for c in calls)
    assert v["recordings"] == 5 and v["event"]["calls"] == n_calls and v["enabled_labels"] == 2
    # The band detector hears every synthetic burst and nothing else.
    assert v["event"]["recall"] == 1.0 and v["event"]["precision"] == 1.0
    assert v["presence"]["precision"] == 1.0 and v["presence"]["recall"] == 1.0
    assert v["false_alarms"]["recordings"] == 2 and v["false_alarms"]["detections"] == 0
    assert v["window"]["precision"] > 0.8 and v["window"]["recall"] > 0.5
    assert "events:   precision 1.000" in stdout

    # A detector that fires everywhere is caught: false alarms on call-free audio, low precision.
    noisy = make_tiny_bundle(tmp_path / "noisy", bands=BANDS, threshold=0.0001)
    _, n = _evaluate(noisy, root, "test", tmp_path / "rep-noisy")
    assert n["false_alarms"]["detections"] >= 2 and n["false_alarms"]["per_hour"] > 100
    assert n["event"]["precision"] < v["event"]["precision"]


def test_set_operating_points_on_validation_rewrites_the_manifest(tmp_path, data):
    root, _, _ = data
    bundle = make_tiny_bundle(tmp_path / "b", bands=BANDS)
    sha = load_bundle(bundle).manifest.model_sha256
    stdout, v = _evaluate(bundle, root, "val", tmp_path / "rep", "--set-operating-points")
    b = load_bundle(bundle)  # still a valid bundle, same model
    assert b.manifest.model_sha256 == sha
    assert b.manifest.metrics["operating_points"]["target_precision"] == 0.9
    for lab in b.manifest.labels:
        # Perfect on validation, but a handful of calls in seven recordings cannot promise 0.9.
        assert lab.enabled is False and "cannot reach 0.90" in lab.disabled_reason
        assert lab.expected_precision == 1.0
    assert "0 of 2 labels enabled" in stdout and v["enabled_labels"] == 0
    assert v["event"]["detections"] == 0  # nothing is published by default
    stdout, v = _evaluate(bundle, root, "val", tmp_path / "rep", "--set-operating-points", "--target-precision", "0.7")
    assert all(lab.enabled and lab.disabled_reason is None for lab in load_bundle(bundle).manifest.labels)
    assert v["enabled_labels"] == 2 and v["event"]["precision"] >= 0.8 and v["event"]["recall"] > 0.5
    r = run_cli("evaluate", "--bundle", str(bundle), "--data", str(root), "--split", "test", "--set-operating-points")
    assert r.returncode != 0 and "validation only" in r.stderr
