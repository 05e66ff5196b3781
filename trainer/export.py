"""Trained model -> ONNX (FP32), with the sigmoid baked in, checked against PyTorch.

The model comes from :func:`trainer.checkpoint.model_from_checkpoint`.

The graph takes ``input`` ``(batch, C, H, W)`` (the shared frontend's image) and returns
``probabilities`` ``(batch, K)``; the batch axis is dynamic. The legacy TorchScript exporter
(``dynamo=False``) is used: for a plain ResNet50 it is fast, deterministic and yields a
clean Conv/Relu/Add graph that onnxruntime's quantizer handles well.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from edge.errors import SonotrapError

log = logging.getLogger("sonotrap.trainer")

DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-4


def with_sigmoid(model):
    """Wrap a logits model so the exported graph returns probabilities."""
    import torch
    from torch import nn

    class _Probabilities(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.inner(x))

    return _Probabilities(model).eval()


def export_onnx(
    model,
    out_path: str | Path,
    image_shape: tuple[int, int, int] = (3, 128, 128),
    opset: int = DEFAULT_OPSET,
    sigmoid: bool = True,
    exporter: str = "legacy",
) -> Path:
    """Export ``model`` (logits) to ONNX with a dynamic batch axis; runs onnx.checker.

    ``exporter="legacy"`` (TorchScript, default: 2 s for ResNet50, clean graph) or ``"dynamo"``
    (torch.export based, opset >= 18, ~5 s; same numbers within 2e-6 in our checks).
    """
    import onnx
    import torch

    if opset < 17:
        raise SonotrapError(f"opset {opset} is too old; use 17 or newer")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    net = with_sigmoid(model) if sigmoid else model.eval()
    dummy = torch.zeros((1, *image_shape), dtype=torch.float32)
    output = "probabilities" if sigmoid else "logits"
    if exporter == "legacy":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                net, (dummy,), str(out_path), input_names=["input"], output_names=[output],
                dynamic_axes={"input": {0: "batch"}, output: {0: "batch"}},
                opset_version=opset, do_constant_folding=True, dynamo=False,
            )
    elif exporter == "dynamo":
        torch.onnx.export(
            net, (dummy,), str(out_path), input_names=["input"], output_names=[output],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, opset_version=max(opset, 18), dynamo=True,
        )
    else:
        raise SonotrapError(f"exporter {exporter!r} is not 'legacy' or 'dynamo'")
    proto = onnx.load(str(out_path))
    onnx.checker.check_model(proto, full_check=True)
    return out_path


def torch_predict(model, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """Sigmoid probabilities from the PyTorch model, ``(N, K)`` float32."""
    import torch

    outs = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            outs.append(torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(images[i : i + batch])))).numpy())
    return np.concatenate(outs).astype(np.float32)


def onnx_predict(model_path: str | Path, images: np.ndarray, batch: int = 16, threads: int = 0) -> np.ndarray:
    """Probabilities from an ONNX model via onnxruntime (CPU), ``(N, K)`` float32."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: np.ascontiguousarray(images[i : i + batch])})[0] for i in range(0, len(images), batch)]
    return np.concatenate(outs).astype(np.float32)


def check_parity(model, onnx_path: str | Path, images: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> float:
    """Max abs difference of probabilities, PyTorch vs onnxruntime, on real windows.

    Raises SonotrapError above ``tolerance``; also exercises batch sizes 1 and >1 (dynamic axis).
    """
    if len(images) == 0:
        raise SonotrapError("no windows to check ONNX parity on; pass a run directory with windows")
    ref = torch_predict(model, images)
    got = onnx_predict(onnx_path, images, batch=max(2, min(8, len(images))))
    single = onnx_predict(onnx_path, images[:1], batch=1)
    diff = float(max(np.abs(ref - got).max(), np.abs(ref[:1] - single).max()))
    if not diff < tolerance:
        raise SonotrapError(
            f"ONNX export differs from PyTorch by {diff:.2e} (> {tolerance:g}) on {len(images)} windows; "
            "the export is wrong, report it"
        )
    return diff
