"""Checkpoint -> ONNX (FP32), with the sigmoid baked in, checked against PyTorch.

The graph takes ``input`` ``(batch, C, H, W)`` (the shared frontend's image) and returns
``probabilities`` ``(batch, K)``; the batch axis is dynamic. The legacy TorchScript exporter
(``dynamo=False``) is used: for a plain ResNet50 it is fast, deterministic and yields a
clean Conv/Relu/Add graph that onnxruntime's quantizer handles well.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "sonotrap-checkpoint/1"
DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-4


@dataclass
class Checkpoint:
    """The parts of a trainer checkpoint that export and bundling need."""

    path: Path
    state_dict: dict[str, Any]
    labels: list[str]
    label_names: dict[str, str]
    frontend: FrontendConfig
    thresholds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read ``best.pt``/``last.pt`` written by ``sonotrap train`` (format sonotrap-checkpoint/1)."""
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").is_file() else path / "last.pt"
    if not path.is_file():
        raise SonotrapError(f"checkpoint {path} does not exist; pass a run directory or its best.pt")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise SonotrapError(f"checkpoint {path} cannot be read ({err}); re-run training") from None
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise SonotrapError(
            f"checkpoint {path} is not a {CHECKPOINT_FORMAT} file (format {got!r}); pass a checkpoint from 'sonotrap train'"
        )
    missing = [k for k in ("model", "labels", "frontend") if k not in raw]
    if missing:
        raise SonotrapError(f"checkpoint {path} lacks {missing}; re-run training with this sonotrap")
    labels = list(raw["labels"])
    names = dict(raw.get("label_names") or {})
    known = {"model", "labels", "label_names", "frontend", "thresholds", "metrics", "args", "data", "format"}
    return Checkpoint(
        path=path,
        state_dict=raw["model"],
        labels=labels,
        label_names={c: names.get(c, c) for c in labels},
        frontend=FrontendConfig.from_dict(raw["frontend"]),
        thresholds={k: float(v) for k, v in (raw.get("thresholds") or {}).items()},
        metrics=dict(raw.get("metrics") or {}),
        args=dict(raw.get("args") or {}),
        data=dict(raw.get("data") or {}),
        extra={k: v for k, v in raw.items() if k not in known},
    )


def build_torch_model(ckpt: Checkpoint):
    """The trained ResNet50 (logits), in eval mode."""

    from trainer.model import build_model

    state = {k.removeprefix("module."): v for k, v in ckpt.state_dict.items()}
    model = build_model(len(ckpt.labels), "none")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise SonotrapError(
            f"checkpoint {ckpt.path} does not fit a ResNet50 with {len(ckpt.labels)} classes "
            f"({str(err).splitlines()[0][:120]}); pass a checkpoint from 'sonotrap train'"
        ) from None
    model.eval()
    model.requires_grad_(False)  # inference only; never touch torch's global grad mode
    return model


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
