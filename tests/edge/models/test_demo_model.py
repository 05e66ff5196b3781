"""The shipped demo bundle (models/demo): the default model, valid, INT8, and it hears real calls."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import numpy as np
import pytest

from edge.models.bundle import DEFAULT_BUNDLE, load_bundle
from tests.support.daemon_helpers import run_cli


def test_demo_bundle_is_the_default_and_within_its_budget():
    bundle = load_bundle(None)  # what the daemon uses when no model is configured (self-test included)
    assert bundle.path.resolve() == DEFAULT_BUNDLE.resolve()
    man = json.loads((bundle.path / "manifest.json").read_text())
    assert man["name"] == "nips4bplus-resnet50" and len(bundle.labels) == 89
    assert "nips4bplus" in json.dumps(man["provenance"])
    assert bundle.model_path.stat().st_size <= 26 * 2**20
    metrics = man["metrics"]
    assert metrics["fp32"]["macro_ap"] - metrics["int8"]["macro_ap"] <= 0.01
    assert man["quantization"]["per_channel"] and man["quantization"]["quant_format"] == "QDQ"
    onnx = pytest.importorskip("onnx")
    ops = {n.op_type for n in onnx.load(str(bundle.model_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Sigmoid"} <= ops


@pytest.mark.data
def test_demo_model_hears_real_nips4b_calls(shared_data, tmp_path):
    """Recording-level scores on 40 annotated recordings: an annotated label is in the top 5 for most."""
    nips = shared_data / "nips4bplus"
    labels_of: dict[str, set[str]] = defaultdict(set)
    with (nips / "annotations.csv").open() as fh:
        for r in csv.DictReader(fh):
            labels_of[r["file"]].add(r["label"])
    files = sorted(labels_of)[::10][:40]
    rec = tmp_path / "rec"
    rec.mkdir()
    for f in files:
        (rec / f.split("/")[-1]).symlink_to(nips / f)
    r = run_cli("analyze", str(rec), "-o", str(tmp_path / "out"), "--no-progress", "--no-raven",
                "--recording-scores", str(tmp_path / "scores.csv"))
    assert r.returncode == 0, r.stderr
    with (tmp_path / "scores.csv").open() as fh:
        reader = csv.reader(fh)
        labels = next(reader)[1:]
        rows = {row[0]: np.array([float(x) for x in row[1:]]) for row in reader}
    assert len(rows) == len(files)
    hits = 0
    for f in files:
        top5 = {labels[i] for i in np.argsort(rows[f.split("/")[-1]])[::-1][:5]}
        hits += bool(top5 & labels_of[f])
    print(f"annotated label in the top 5: {hits}/{len(files)}")
    assert hits >= 0.6 * len(files), f"{hits}/{len(files)}"
