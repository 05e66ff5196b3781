"""`sonotrap quantize` end to end on a ResNet50 checkpoint: export, parity, INT8, verify, bundle, tar."""

from __future__ import annotations

import json
import tarfile

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from edge.cli import main  # noqa: E402
from edge.models.bundle import load_bundle  # noqa: E402
from tests.support.synth_windows import make_windows, save_npz  # noqa: E402


def test_cli_quantize_resnet50_checkpoint_to_bundle(tmp_path, capsys, monkeypatch):
    """End to end on a (random-init) ResNet50 checkpoint: export, parity, quantize, verify, bundle, tar."""
    from tests.trainer.test_export import write_checkpoint
    from trainer.model import build_model

    monkeypatch.setenv("SONOTRAP_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    xt, yt, labels = make_windows(16, seed=5)
    xv, yv, _ = make_windows(16, seed=6)
    ckpt = write_checkpoint(tmp_path / "best.pt", build_model(3, "none").eval(), labels)
    calib, val = save_npz(tmp_path / "calib.npz", xt, yt, labels), save_npz(tmp_path / "val.npz", xv, yv, labels)
    common = ["quantize", str(ckpt), "--calibration", str(calib), "--validation", str(val), "--calib-windows", "16"]

    out, archive = tmp_path / "bundle", tmp_path / "bundle.tar.gz"
    assert main([*common, "-o", str(out), "--archive", str(archive), "--max-ap-drop", "1.0",
                 "--name", "test-r50", "--model-version", "0.3.0", "--provenance", "dataset=synthetic"]) == 0
    assert "macro-AP FP32" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert m["schema_version"] == 1 and m["name"] == "test-r50" and m["version"] == "0.3.0"
    assert [lab["code"] for lab in m["labels"]] == labels and m["thresholds"] == {c: 0.4 for c in labels}
    assert m["input_name"] == "input" and m["output_shape"] == ["batch", 3] and len(m["model_sha256"]) == 64
    assert m["provenance"]["dataset"] == "synthetic" and m["provenance"]["init_weights"] == "none"
    assert m["metrics"]["export"]["parity_max_abs_diff"] < 1e-4
    assert {"fp32", "int8", "int8_vs_fp32", "training"} <= set(m["metrics"])
    assert m["quantization"]["method"] == "minmax" and m["quantization"]["activation_type"] == "uint8"
    assert m["quantization"]["per_channel"] is True and m["quantization"]["calibration_windows_used"] == 16
    assert m["reference"]["output"] and m["min_sonotrap_version"]
    assert (out / "model.onnx").stat().st_size < 26e6
    b = load_bundle(out)
    assert b.labels == labels and b.version == "0.3.0"
    with tarfile.open(archive) as tar:
        # an .npz validation source has no recordings: the reference audio is synthetic
        assert sorted(tar.getnames()) == ["manifest.json", "model.onnx", "reference_audio.flac"]
    assert m["reference"]["audio"]["source"] == "synthetic"
    assert load_bundle(archive).manifest.model_sha256 == m["model_sha256"]

    # the bound can fail the command: non-zero exit, one clear line, no bundle written
    fp32 = tmp_path / ".bundle-work" / "model_fp32.onnx"
    assert main([*common, "--onnx", str(fp32), "-o", str(tmp_path / "never"), "--max-ap-drop", "-1"]) == 2
    assert "INT8 model loses" in capsys.readouterr().err
    assert not (tmp_path / "never" / "manifest.json").exists()
