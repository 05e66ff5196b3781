"""ONNX export: opset, dynamic batch, sigmoid in graph, onnx.checker, parity with PyTorch on real windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from edge.errors import SonotrapError  # noqa: E402
from edge.inference.frontend import FrontendConfig, compute  # noqa: E402
from tests.support.synth_windows import make_windows, save_npz  # noqa: E402
from trainer.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from trainer.export import check_parity, export_onnx, onnx_predict, torch_predict  # noqa: E402
from trainer.model import build_model  # noqa: E402


def write_checkpoint(path: Path, model, labels: list[str], **extra) -> Path:
    torch.save({"format": "sonotrap-checkpoint/1", "model": model.state_dict(), "labels": labels,
                "label_names": {c: c.replace("_", " ") for c in labels}, "frontend": FrontendConfig().to_dict(),
                "thresholds": {c: 0.4 for c in labels}, "metrics": {"val_macro_ap": 0.5},
                "args": {"weights": "none", "epochs": 1}, "data": {"dataset": "synthetic"}} | extra, path)
    return path


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model(3, "none").eval()


@pytest.fixture(scope="module")
def windows():
    return make_windows(12, seed=3)


def test_resnet50_export_checked_and_matches_pytorch(resnet, windows, tmp_path):
    images = windows[0]
    out = export_onnx(resnet, tmp_path / "m.onnx")
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["probabilities"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.node[-1].op_type == "Sigmoid"
    diff = check_parity(resnet, out, images)
    print(f"ResNet50 ONNX vs PyTorch max abs diff {diff:.2e}")
    assert diff < 1e-4
    p = onnx_predict(out, images, batch=5)  # odd batch sizes through the dynamic axis
    assert p.shape == (len(images), 3) and np.all((p >= 0) & (p <= 1))


def test_parity_check_fails_when_graph_differs(resnet, windows, tmp_path):
    """The check can fail: compare against a model with one perturbed weight."""
    out = export_onnx(resnet, tmp_path / "m.onnx")
    import copy

    other = copy.deepcopy(resnet)
    with torch.no_grad():
        other.fc.bias += 0.5
    assert np.abs(torch_predict(other, windows[0]) - onnx_predict(out, windows[0])).max() > 1e-4
    with pytest.raises(SonotrapError, match="differs from PyTorch"):
        check_parity(other, out, windows[0])


def test_parity_on_real_recordings(resnet, shared_data, tmp_path):
    import soundfile as sf

    cfg = FrontendConfig()
    files = sorted((shared_data / "nips4bplus" / "audio").glob("*.flac"))[:6]
    images = []
    for f in files:
        audio, sr = sf.read(f, dtype="float32")
        images.append(compute(audio[: int(2 * sr)], sr, cfg))
    out = export_onnx(resnet, tmp_path / "m.onnx")
    assert check_parity(resnet, out, np.stack(images)) < 1e-4


def test_cli_export_from_checkpoint(resnet, windows, tmp_path, capsys):
    from edge.cli import main

    images, targets, labels = windows
    ckpt = write_checkpoint(tmp_path / "best.pt", resnet, labels)
    npz = save_npz(tmp_path / "val.npz", images, targets, labels)
    assert main(["export", str(ckpt), "--windows", str(npz), "-o", str(tmp_path / "fp32.onnx")]) == 0
    report = json.loads((tmp_path / "fp32.export.json").read_text())
    assert report["parity_max_abs_diff"] < 1e-4 and report["parity_windows"] == 12
    assert "max |p_torch - p_onnx|" in capsys.readouterr().out


def test_checkpoint_errors(tmp_path, resnet):
    with pytest.raises(SonotrapError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"model": {}}, tmp_path / "raw.pt")
    with pytest.raises(SonotrapError, match="not a sonotrap-checkpoint/1"):
        load_checkpoint(tmp_path / "raw.pt")
    write_checkpoint(tmp_path / "wrong.pt", resnet, ["a", "b"])  # 3-class weights, 2 labels
    with pytest.raises(SonotrapError, match="does not fit a ResNet50 with 2 classes"):
        model_from_checkpoint(load_checkpoint(tmp_path / "wrong.pt"))
