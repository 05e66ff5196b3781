"""FP32 ONNX -> INT8 ONNX (static, QDQ, per-channel), calibrated on real windows, then verified.

Calibration and validation windows always come through the shared frontend: from a training
run directory (``trainer.rundata.load_split_arrays``: train split for calibration, val split for
the check) or from an ``.npz`` with ``images``/``targets``/``labels`` (``known`` optional)
built with ``edge.inference.frontend.compute``. Never random tensors: activation ranges calibrated on
noise do not match spectrograms.

Default settings (reasons in ``models/README.md``): QDQ, weights QInt8 symmetric per channel,
activations QUInt8 (asymmetric; ReLU outputs use all 256 levels), 7-bit weights (reduce-range:
full 8-bit weights give wrong outputs on x86 CPUs without VNNI), MinMax
calibration on 256 training windows. The classifier head (the final Gemm/MatMul, its bias
Add and the Sigmoid) stays in float: a quantized sigmoid output can only take 256 values
(multiples of 1/255), too coarse for thresholds and ranking, and the head is a negligible
share of the compute. Verification compares FP32 and INT8 on validation
windows (macro-AP, per-class AP drop, top-label agreement) and fails when the macro-AP drop
exceeds the bound.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import SonotrapError
from trainer.metrics import evaluate_scores

log = logging.getLogger("sonotrap.trainer")

METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")
DEFAULT_MAX_AP_DROP = 0.02


@dataclass
class QuantSettings:
    """Everything that determines the INT8 model; written into the manifest."""

    method: str = "minmax"
    calibration_windows: int = 256
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    # 7-bit weights: with 8-bit ones, the U8S8 kernels of x86 CPUs without VNNI (AVX2 only:
    # AMD Zen 2/3, Intel before Ice Lake) saturate 16-bit sums and the model's outputs are
    # wrong there (top-label agreement with FP32 fell to 0.61 on one). A bundle goes to every
    # recorder and lab machine, so it must be right on all of them.
    reduce_range: bool = True
    percentile: float = 99.999
    quant_format: str = "QDQ"
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SonotrapError(f"calibration method {self.method!r} is not one of {METHODS}")
        if self.activation_type not in ACTIVATION_TYPES:
            raise SonotrapError(f"activation type {self.activation_type!r} is not one of {ACTIVATION_TYPES}")
        if self.calibration_windows < 1:
            raise SonotrapError("calibration needs at least 1 window; pass --calib-windows N (e.g. 256)")
        if not 90.0 <= self.percentile < 100.0:
            raise SonotrapError(f"percentile {self.percentile} must be in [90, 100)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class WindowSet:
    """Model inputs with multi-label targets; ``known`` masks unannotated (label, window) pairs."""

    images: np.ndarray  # (N, C, H, W) float32
    targets: np.ndarray  # (N, K) {0, 1}
    known: np.ndarray  # (N, K) bool
    labels: list[str]
    source: str = ""
    sources: list | None = None  # per window (recording, start_s, length_s), from a run directory

    def subset(self, limit: int | None, seed: int = 0) -> WindowSet:
        if limit is None or limit >= len(self.images):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self.images), size=limit, replace=False))
        sources = [self.sources[int(i)] for i in idx] if self.sources is not None else None
        return WindowSet(self.images[idx], self.targets[idx], self.known[idx], self.labels, self.source, sources)


def load_windows(
    source: str | Path, split: str, limit: int | None = None, seed: int = 0, root: str | Path | None = None
) -> WindowSet:
    """Windows from a run directory (``split`` of its split.json; audio under ``root``) or an ``.npz``."""
    source = Path(source)
    if source.suffix == ".npz":
        if not source.is_file():
            raise SonotrapError(f"window file {source} does not exist; build it with edge.inference.frontend.compute")
        with np.load(source, allow_pickle=False) as z:
            if "images" not in z or "targets" not in z or "labels" not in z:
                raise SonotrapError(f"window file {source} needs arrays images, targets and labels")
            images = z["images"].astype(np.float32)
            targets = z["targets"].astype(np.float32)
            known = z["known"].astype(bool) if "known" in z else np.ones_like(targets, dtype=bool)
            labels = [str(x) for x in z["labels"]]
        ws = WindowSet(images, targets, known, labels, str(source))
    elif source.is_dir():
        try:
            from trainer.rundata import load_split_arrays
        except ImportError as err:
            raise SonotrapError(f"reading windows from a run directory needs trainer.rundata ({err})") from None
        arr = load_split_arrays(source, split, limit=limit, seed=seed, root=root)
        ws = WindowSet(
            np.asarray(arr.images, dtype=np.float32),
            np.asarray(arr.targets, dtype=np.float32),
            np.asarray(arr.known, dtype=bool),
            list(arr.labels),
            f"{source} ({split} split)",
            arr.sources,
        )
    else:
        raise SonotrapError(f"window source {source} is neither a run directory nor an .npz file")
    if ws.images.ndim != 4 or len(ws.images) == 0:
        raise SonotrapError(f"window source {source} gave no usable {split} windows (shape {ws.images.shape})")
    if ws.targets.shape != (len(ws.images), len(ws.labels)):
        raise SonotrapError(f"window source {source}: targets {ws.targets.shape} do not match {len(ws.labels)} labels")
    return ws.subset(limit, seed)


# --------------------------------------------------------------------------- metrics


def per_class_ap(probs: np.ndarray, ws: WindowSet) -> dict[str, float]:
    """AP per label over windows where that label is known (the trainer's metric, so the
    FP32/INT8 figures match ``sonotrap evaluate``); labels without a known positive and a known
    negative are omitted."""
    per_class = evaluate_scores(probs, ws.targets, ws.known, ws.labels)["per_class"]
    return {label: c["ap"] for label, c in per_class.items() if not np.isnan(c["ap"])}


@dataclass
class QuantReport:
    """FP32 vs INT8 on the validation windows."""

    windows: int
    macro_ap_fp32: float
    macro_ap_int8: float
    ap_drop: float
    per_class_ap_fp32: dict[str, float] = field(default_factory=dict)
    per_class_ap_int8: dict[str, float] = field(default_factory=dict)
    per_class_drop: dict[str, float] = field(default_factory=dict)
    top_label_agreement: float = 0.0
    max_abs_prob_diff: float = 0.0
    mean_abs_prob_diff: float = 0.0

    @property
    def worst_classes(self) -> list[tuple[str, float]]:
        return sorted(self.per_class_drop.items(), key=lambda kv: -kv[1])[:5]

    def summary(self) -> str:
        worst = ", ".join(f"{k} {v:+.3f}" for k, v in self.worst_classes)
        return (
            f"validation windows {self.windows}: macro-AP FP32 {self.macro_ap_fp32:.4f} INT8 "
            f"{self.macro_ap_int8:.4f} (drop {self.ap_drop:+.4f}); top-label agreement "
            f"{self.top_label_agreement:.3f}; |p32-p8| max {self.max_abs_prob_diff:.3f} mean "
            f"{self.mean_abs_prob_diff:.4f}; largest per-class drops: {worst}"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare(probs_fp32: np.ndarray, probs_int8: np.ndarray, ws: WindowSet) -> QuantReport:
    ap32, ap8 = per_class_ap(probs_fp32, ws), per_class_ap(probs_int8, ws)
    if not ap32:
        raise SonotrapError(f"validation windows from {ws.source} hold no positive labels; AP cannot be measured")
    m32, m8 = float(np.mean(list(ap32.values()))), float(np.mean(list(ap8.values())))
    diff = np.abs(probs_fp32 - probs_int8)
    return QuantReport(
        windows=len(ws.images),
        macro_ap_fp32=m32,
        macro_ap_int8=m8,
        ap_drop=m32 - m8,
        per_class_ap_fp32=ap32,
        per_class_ap_int8=ap8,
        per_class_drop={k: ap32[k] - ap8[k] for k in ap32},
        top_label_agreement=_top_label_agreement(probs_fp32, probs_int8, ws),
        max_abs_prob_diff=float(diff.max()),
        mean_abs_prob_diff=float(diff.mean()),
    )


def _top_label_agreement(p32: np.ndarray, p8: np.ndarray, ws: WindowSet) -> float:
    """Share of windows holding a call where both models rank the same label first."""
    has_call = (ws.targets * ws.known).sum(1) > 0
    rows = has_call if has_call.any() else np.ones(len(p32), dtype=bool)
    return float(np.mean(p32[rows].argmax(1) == p8[rows].argmax(1)))


def check_ap_drop(report: QuantReport, bound: float = DEFAULT_MAX_AP_DROP) -> None:
    """Fail loudly when INT8 loses more than ``bound`` macro-AP against FP32."""
    if not report.ap_drop <= bound:
        worst = ", ".join(f"{k} {v:+.3f}" for k, v in report.worst_classes[:3])
        raise SonotrapError(
            f"INT8 model loses {report.ap_drop:.4f} macro-AP against FP32 ({report.macro_ap_fp32:.4f} -> "
            f"{report.macro_ap_int8:.4f}, bound {bound}; worst classes {worst}); calibrate on more/other "
            "training windows, try --method entropy|percentile, or raise --max-ap-drop"
        )


# --------------------------------------------------------------------------- quantization


class _Reader:
    """CalibrationDataReader over windows in batches; supports ranges for chunked calibration."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int) -> None:
        self.batches = [images[i : i + batch] for i in range(0, len(images), batch)]
        self.input_name = input_name
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.batches[start_index:end_index])

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}

    def rewind(self) -> None:
        self.set_range(0, len(self.batches))


HEAD_OPS = ("Sigmoid", "Add", "Gemm", "MatMul")


def head_nodes(graph) -> list:
    """The output's producer chain of Sigmoid / bias Add / Gemm|MatMul (the classifier head)."""
    producer = {o: n for n in graph.node for o in n.output}
    out: list = []
    node = producer.get(graph.output[0].name)
    while node is not None and node.op_type in HEAD_OPS and len(out) < 3:
        out.append(node)
        if node.op_type in ("Gemm", "MatMul"):
            break
        node = next((producer[i] for i in node.input if i in producer), None)
    return out


def name_head_nodes(model_path: Path) -> list[str]:
    """Names of the head nodes of ``model_path`` (unnamed ones get a name, saved in place)."""
    import onnx

    model = onnx.load(str(model_path))
    nodes = head_nodes(model.graph)
    if any(not n.name for n in nodes):
        for i, n in enumerate(nodes):
            n.name = n.name or f"sonotrap_head_{i}_{n.op_type}"
        onnx.save(model, str(model_path))
    return [n.name for n in nodes]


def quantize_model(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray, settings: QuantSettings) -> Path:
    """quant_pre_process + quantize_static (QDQ, per-channel) calibrated on ``calibration`` images."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise SonotrapError("no calibration windows; pass a run directory with training windows")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    with tempfile.TemporaryDirectory(prefix="sonotrap-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        head = name_head_nodes(pre)
        reader = _Reader(np.asarray(calibration, dtype=np.float32), input_name, settings.batch_size)
        extra = {
            "WeightSymmetric": True,
            "ActivationSymmetric": False,
            # one batch per collect: bounds memory for the histogram methods (they merge)
            "CalibStridedMinMax": 1,
            "CalibPercentile": settings.percentile,
        }
        quantize_static(
            str(pre),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=qtype[settings.activation_type],
            weight_type=qtype[settings.weight_type],
            calibrate_method=methods[settings.method],
            extra_options=extra,
            nodes_to_exclude=head,
        )
    onnx.checker.check_model(str(out_path))
    return out_path


def quantize_and_verify(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: WindowSet,
    validation: WindowSet,
    settings: QuantSettings,
    max_ap_drop: float = DEFAULT_MAX_AP_DROP,
    check: bool = True,
    predict: Callable[[str | Path, np.ndarray], np.ndarray] | None = None,
) -> QuantReport:
    """Quantize, run both models on the validation windows, report, and enforce the bound.

    ``predict(model_path, images)`` replaces the models' own outputs in the comparison (a
    cross-fitted head scores validation with held-out fold heads: :mod:`trainer.crossfit`).
    """
    from trainer.export import onnx_predict

    predict = predict or onnx_predict

    if calibration.labels != validation.labels:
        raise SonotrapError("calibration and validation windows have different label lists; use one run directory")
    calib = calibration.subset(settings.calibration_windows, settings.seed)
    log.info("calibrating (%s) on %d windows from %s", settings.method, len(calib.images), calib.source)
    quantize_model(fp32_path, out_path, calib.images, settings)
    p32 = predict(fp32_path, validation.images)
    p8 = predict(out_path, validation.images)
    report = compare(p32, p8, validation)
    log.info("%s", report.summary())
    if check:
        check_ap_drop(report, max_ap_drop)
    return report
