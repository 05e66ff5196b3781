"""A ResNet50 state dict read back from a bundle's ONNX model (INT8 QDQ or FP32).

Why: a bundle is what reaches users and the fleet; the FP32 checkpoint it was built from
often does not (it stays on the machine that trained it). A new linear head for one's own
labels (``sonotrap linear-head --backbone BUNDLE``) needs only the backbone's features, and
the bundle has them: its convolutions, with batch norm folded in by the exporter, and in an
INT8 bundle its weights on a per-channel int8 grid. Dequantizing gives those exact weights
(``(q - zero_point) * scale``); each folded batch norm becomes an identity (``gamma = 1``,
``beta`` = the conv's bias, ``mean = 0``, ``var = 1 - eps``), so torchvision's ResNet50 computes
the same function in float. Quantizing it again with the same weight range lands on the same
grid; with 7-bit weights (the default) from an 8-bit bundle, each weight is rounded once more.
What is not recovered is the activation quantization, so the float features differ from the
INT8 ones by the usual INT8 error (the bundle's ``int8_vs_fp32`` metrics say how large).

Only graphs exported by ``sonotrap export`` (node names ``/inner/<module path>/Conv``, no
``BatchNormalization`` left) are understood; anything else is refused with one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.errors import SonotrapError

BN_EPS = 1e-5  # torchvision's BatchNorm2d default


def _module_path(node_name: str) -> str | None:
    """``/inner/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``; None for other nodes."""
    parts = node_name.strip("/").split("/")
    if len(parts) < 3 or parts[0] != "inner" or parts[-1] != "Conv":
        return None
    # each scope is named relative to its parent, and a child of a Sequential repeats the
    # parent's name: layer1/layer1.0/downsample/downsample.0 is layer1.0.downsample.0
    path: list[str] = []
    for scope in parts[1:-1]:
        if path and scope.startswith(path[-1] + "."):
            path[-1] = scope
        else:
            path.append(scope)
    return ".".join(path)


def _bn_of(conv: str) -> str:
    """The batch norm that follows ``conv`` in torchvision's ResNet50."""
    head, _, leaf = conv.rpartition(".")
    if leaf == "conv1" and not head:
        return "bn1"
    if leaf.startswith("conv"):
        return f"{head}.bn{leaf[4:]}"
    if head.endswith("downsample") and leaf == "0":
        return f"{head}.1"
    raise SonotrapError(f"ONNX conv {conv!r} is not one of ResNet50's; pass a bundle made by sonotrap")


def state_dict_from_onnx(path: str | Path) -> dict[str, torch.Tensor]:
    """torchvision ResNet50 state dict (with the bundle's ``fc``) from an exported model file."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise SonotrapError(f"{path} is not a readable ONNX model ({err}); pass a bundle's model.onnx") from None
    graph = model.graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def value(name: str) -> np.ndarray:
        """An initializer, dequantized when it comes through a DequantizeLinear node."""
        if name in init:
            return init[name].astype(np.float64)
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in init:
            raise SonotrapError(f"{path}: weight {name!r} is not a constant; pass a bundle made by sonotrap")
        q = init[node.input[0]].astype(np.float64)
        scale = init[node.input[1]].astype(np.float64)
        zero = init[node.input[2]].astype(np.float64) if len(node.input) > 2 else np.zeros_like(scale)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:  # per channel along ``axis``
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return (q - zero) * scale

    if any(n.op_type == "BatchNormalization" for n in graph.node):
        raise SonotrapError(f"{path} still has batch-norm nodes; export it with `sonotrap export` first")
    state: dict[str, torch.Tensor] = {}
    for node in graph.node:
        if node.op_type == "Conv":
            conv = _module_path(node.name)
            if conv is None:
                raise SonotrapError(f"{path}: conv node {node.name!r} is not from a sonotrap export; "
                                    "pass a bundle made by sonotrap")
            weight = value(node.input[1])
            bias = value(node.input[2]) if len(node.input) > 2 else np.zeros(weight.shape[0])
            bn = _bn_of(conv)
            state[f"{conv}.weight"] = torch.from_numpy(weight).float()
            state[f"{bn}.weight"] = torch.ones(weight.shape[0])
            state[f"{bn}.bias"] = torch.from_numpy(bias).float()
            state[f"{bn}.running_mean"] = torch.zeros(weight.shape[0])
            state[f"{bn}.running_var"] = torch.full((weight.shape[0],), 1.0 - BN_EPS)
            state[f"{bn}.num_batches_tracked"] = torch.tensor(0)
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            w = value(node.input[1])
            state["fc.weight"] = torch.from_numpy(w if trans_b else w.T).float()
            state["fc.bias"] = torch.from_numpy(value(node.input[2])).float()
    from torchvision.models import resnet50

    reference = resnet50(weights=None).state_dict()
    missing = [k for k in reference if not k.startswith("fc.") and k not in state]
    if missing or "fc.weight" not in state:
        raise SonotrapError(f"{path} is not a ResNet50 exported by sonotrap ({len(missing)} weights missing, "
                            f"e.g. {(missing or ['fc.weight'])[0]}); pass a bundle made by sonotrap")
    return state


def state_dict_from_bundle(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, provenance) of a bundle directory or archive.

    The bundle is unpacked and checked like the edge loads it (safe archive, manifest, model
    sha256), but its self-test is not run: only its weights are read, and a self-test that
    fails on this CPU (INT8 kernels) says nothing about them.
    """
    from edge.models.bundle import load_bundle

    bundle = load_bundle(path, self_test=False)
    manifest = bundle.manifest
    info: dict[str, Any] = {"bundle": str(path), "name": manifest.name, "version": manifest.version,
                            "model_sha256": manifest.model_sha256}
    provenance = manifest.provenance or {}
    stage1 = provenance.get("linear_head", {}).get("stage1")
    if stage1:
        info["stage1"] = stage1
    if isinstance(provenance.get("teacher"), dict):  # its teacher's name and licence travel on
        info["teacher"] = provenance["teacher"]
    return state_dict_from_onnx(bundle.model_path), info
