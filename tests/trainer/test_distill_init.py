"""Stage 1 started from a bundle's backbone: batch norm restored, a new projection head fitted first.

A random-init ResNet50 with randomised batch-norm statistics (so folding is not trivial),
exported to ONNX at 32x32, stands in for a shipped bundle's model.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from edge.errors import SonotrapError  # noqa: E402
from tests.support.fake_teacher import FakeTeacher  # noqa: E402
from tests.trainer.test_distill import SMALL, _args, setup  # noqa: E402, F401
from tests.trainer.test_onnx_backbone import _model  # noqa: E402
from trainer.distill import BACKBONE, DISTILL_DIR, DistillArgs, train_with_teacher  # noqa: E402
from trainer.distill_init import is_bundle, restore_batch_norm, student_from_bundle  # noqa: E402
from trainer.export import export_onnx  # noqa: E402
from trainer.linear_head import backbone_weights  # noqa: E402
from trainer.model import build_model  # noqa: E402
from trainer.prepare import DataSpec  # noqa: E402


def _exported(tmp_path):
    torch.set_num_threads(2)
    model = _model(3, seed=2)
    path = export_onnx(model, tmp_path / "m.onnx", image_shape=(3, 32, 32))
    model.fc = torch.nn.Identity()
    return model, path


def _backbone():
    net = build_model(1, "none")
    net.fc = torch.nn.Identity()
    return net


def test_a_bundle_backbone_trains_from_where_the_bundle_is(tmp_path):
    original, path = _exported(tmp_path)
    assert is_bundle(path) and not is_bundle(tmp_path)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(48, 3, 32, 32, generator=gen)
    with torch.no_grad():  # a teacher the head can learn: a fixed linear map of the bundle's features
        targets = torch.nn.functional.normalize(original(images) @ torch.randn(2048, 8, generator=gen), dim=1)
    head = torch.nn.Sequential(torch.nn.Linear(2048, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    fresh_head = copy.deepcopy(head)
    backbone = _backbone()
    student_from_bundle(backbone, head, path, images, targets, seed=0, batch=16)

    with torch.no_grad():
        want = original(images)
        backbone.eval()
        assert torch.allclose(backbone(images), want, atol=1e-4, rtol=1e-4)  # the bundle's function, exactly
        # In training mode (batch statistics) the network starts where the bundle is ...
        train = copy.deepcopy(backbone).train()(images)
        assert torch.allclose(train, want, atol=1e-3, rtol=1e-3)
        # ... which an identity batch norm, as the bundle is read back, does not.
        identity = _backbone()
        identity.load_state_dict(backbone_weights(path)[0], strict=False)
        assert not torch.allclose(identity.train()(images), want, atol=0.1, rtol=0.1)

        def loss(h):
            pred = torch.nn.functional.normalize(h(want), dim=1)
            return float((1 - (pred * targets).sum(dim=1)).mean())
        assert loss(head) < 0.5 * loss(fresh_head)  # the projection head was fitted first

    # A network whose batch norm is not folded is refused, not silently rescaled.
    with pytest.raises(SonotrapError, match="not folded"):
        restore_batch_norm(backbone, images)


@pytest.mark.slow
def test_stage1_starts_from_a_bundle(setup, tmp_path):  # noqa: F811
    data, unlabeled = setup
    _, path = _exported(tmp_path)
    dargs = DistillArgs(epochs=1, batch_size=8, unlabeled=str(unlabeled), init=str(path), lr=0.0)
    # --weights is not opened: the bundle's backbone is the start.
    targs = _args(tmp_path / "r", epochs=1, weights=str(tmp_path / "absent.pth"))
    _, summary = train_with_teacher(targs, dargs, DataSpec(data=str(data), seed=1), SMALL, FakeTeacher())
    assert summary["init"] == str(path)
    saved = torch.load(tmp_path / "r" / DISTILL_DIR / BACKBONE, weights_only=True)
    folded = backbone_weights(path)[0]
    convs = [k for k in folded if k.endswith(".weight") and "conv" in k or "downsample.0" in k]
    assert convs and all(torch.equal(saved[k], folded[k]) for k in convs)  # lr 0: the bundle's weights
    assert not torch.allclose(saved["bn1.weight"], torch.ones_like(saved["bn1.weight"]))  # batch norm restored
