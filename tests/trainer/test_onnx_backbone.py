"""A bundle's backbone read back into torchvision's ResNet50, and a new linear head on it.

A random-init ResNet50 with randomised batch-norm statistics (so the folded batch norm is not
an identity) at 32x32 input keeps this fast; what is checked is that the float model read
back from the ONNX file computes what the file computes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("sklearn")

from edge.errors import SonotrapError  # noqa: E402
from edge.inference.frontend import FrontendConfig  # noqa: E402
from edge.models.selftest import create_session  # noqa: E402
from tests.trainer.test_export import write_checkpoint  # noqa: E402
from trainer.bundle_builder import BundleInfo, bundle_from_checkpoint  # noqa: E402
from trainer.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from trainer.export import export_onnx  # noqa: E402
from trainer.linear_head import backbone_weights, features, linear_head  # noqa: E402
from trainer.model import build_model  # noqa: E402
from trainer.onnx_backbone import state_dict_from_onnx  # noqa: E402
from trainer.prepare import DataSpec, prepare_run  # noqa: E402
from trainer.quantize import QuantSettings  # noqa: E402
from trainer.rundata import load_split_arrays  # noqa: E402

SMALL = FrontendConfig(n_mels=32, n_frames=32, hop_length=2000)


def _model(classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(classes, "none")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def _resnet(state):
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    net.fc = torch.nn.Linear(2048, state["fc.weight"].shape[0])
    net.load_state_dict(state)
    return net.eval()


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ob") / "run"
    prepared = prepare_run(DataSpec(data=str(data_dir), seed=3), SMALL, out)
    ckpt = write_checkpoint(out / "best.pt", _model(len(prepared.run.labels)), prepared.run.labels,
                            frontend=SMALL.to_dict())
    return out, ckpt


def test_an_fp32_export_reads_back_as_the_same_function(tmp_path):
    torch.set_num_threads(2)
    model = _model(3)
    path = export_onnx(model, tmp_path / "m.onnx", image_shape=(3, 32, 32))
    net = _resnet(state_dict_from_onnx(path))
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    want = create_session(path).run(None, {"input": x})[0]
    with torch.no_grad():
        got = torch.sigmoid(net(torch.from_numpy(x))).numpy()
        orig = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got, orig, atol=1e-5)


def test_an_int8_bundle_reads_back_on_its_weight_grid_and_gets_a_new_head(run, tmp_path, monkeypatch):
    monkeypatch.setenv("SONOTRAP_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(2)
    run_dir, ckpt = run
    bundle, _ = bundle_from_checkpoint(ckpt, tmp_path / "bundle", settings=QuantSettings(calibration_windows=8),
                                       max_ap_drop=1.0, operating_points=False, reference_audio="synthetic",
                                       archive=tmp_path / "bundle.tar.gz")
    state = state_dict_from_onnx(bundle / "model.onnx")
    # the archive of the same bundle gives the same backbone (unpacked by the one archive reader)
    packed, info = backbone_weights(tmp_path / "bundle.tar.gz")
    assert info["from_bundle"]["model_sha256"] == json.loads((bundle / "manifest.json").read_text())["model_sha256"]
    assert all(torch.equal(packed[k], state[k]) for k in packed) and "fc.weight" not in packed
    # Each conv weight is an integer multiple of its channel's scale, within the 7-bit range.
    graph = onnx.load(bundle / "model.onnx").graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    conv1 = next(n for n in graph.node if n.name == "/inner/conv1/Conv")
    deq = next(n for n in graph.node if conv1.input[1] in n.output)
    q, scale = inits[deq.input[0]], inits[deq.input[1]]
    assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= 64  # 255 * 64 * 2 fits in int16
    np.testing.assert_allclose(state["conv1.weight"].numpy(), q * scale[:, None, None, None], rtol=1e-6)
    # In float, the read-back model agrees with onnxruntime's INT8 run of the bundle.
    val = load_split_arrays(run_dir, "val")
    want = create_session(bundle / "model.onnx").run(None, {"input": val.images})[0]
    with torch.no_grad():
        got = torch.sigmoid(_resnet(state)(torch.from_numpy(val.images))).numpy()
    assert np.abs(got - want).max() < 0.05, np.abs(got - want).max()

    # `sonotrap linear-head --backbone BUNDLE`: the new head sits on exactly that backbone.
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["provenance"]["teacher"] = {"name": "BirdNET", "licence": "CC BY-NC-SA 4.0"}  # a distilled source
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    out, _ = linear_head(run_dir, bundle, c_grid=(0.01,), out_name="from_bundle.pt")
    new = load_checkpoint(out)
    model = model_from_checkpoint(new).eval()
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(model.state_dict()[k], v), k
    backbone = _resnet(state)
    backbone.fc = torch.nn.Identity()
    feats = features(backbone, val.images)
    w, b = new.state_dict["fc.weight"].double().numpy(), new.state_dict["fc.bias"].double().numpy()
    with torch.no_grad():
        logits = model(torch.from_numpy(val.images)).double().numpy()
    np.testing.assert_allclose(logits, feats @ w.T + b, atol=1e-3)
    prov = BundleInfo.from_checkpoint(new).provenance
    made_from = prov["linear_head"]["stage1"]["from_bundle"]
    assert made_from["model_sha256"] == manifest["model_sha256"] and prov["init_weights"] == str(bundle)
    assert prov["teacher"] == {"name": "BirdNET", "licence": "CC BY-NC-SA 4.0"}  # the licence travels on


def test_a_graph_not_exported_by_sonotrap_is_refused(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [1.0])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(SonotrapError, match="not from a sonotrap export; pass a bundle made by sonotrap"):
        state_dict_from_onnx(path)
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(SonotrapError, match="is not a readable ONNX model"):
        state_dict_from_onnx(tmp_path / "junk.onnx")
