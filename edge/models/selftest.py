"""Does the model run? The one in-process check, and the reference it is checked against.

A bundle stores a self-test: model inputs (compact, in the manifest) and the outputs the
builder's onnxruntime computed on them. On a device the model must load, take the input the
frontend makes, give one probability per label, and reproduce those outputs within a
tolerance; anything else (a truncated model, a different onnxruntime) stops here with one
line naming the problem. A bundle with reference audio (:mod:`edge.models.reference_audio`)
also runs the frontend and the model on that recorded audio, which catches frontend settings
that do not match the model; older bundles without it get the weaker stored-spectrogram
check only. The loader, ``sonotrap bundle inspect`` and the isolated verification process
(:mod:`edge.models.verify`) all run this one check.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.errors import SonotrapError, shown
from edge.inference.frontend import FrontendConfig, compute, to_image
from edge.models.reference_audio import check_reference_audio

if TYPE_CHECKING:
    from edge.models.bundle import ModelBundle

REFERENCE_ATOL = 0.05  # probabilities; INT8 kernels differ slightly across CPUs (VNNI/NEON)
REFERENCE_ENCODING = "unit-spectrogram-uint8-base64"


def create_session(model_path: str | Path, threads: int = 1):
    """An onnxruntime CPU session; a model it cannot load is a SonotrapError, not a traceback."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as err:
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise SonotrapError(
            f"model {model_path} does not load in onnxruntime ({first}); re-export or re-download the bundle"
        ) from None


# --------------------------------------------------------------------------- the reference


def default_reference_audio(cfg: FrontendConfig, seed: int = 0) -> list[np.ndarray]:
    """Two deterministic synthetic windows (chirp + tones in noise; quiet noise) for self-tests."""
    rng = np.random.default_rng(seed)
    n = cfg.window_samples
    t = np.arange(n) / cfg.sample_rate
    f0, f1 = max(cfg.fmin, 300.0), min(cfg.fmax, 8000.0)
    chirp = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * cfg.window_s)))
    tones = np.sin(2 * np.pi * 1200.0 * t) * (t < cfg.window_s / 2) + np.sin(2 * np.pi * 4100.0 * t) * (t >= cfg.window_s / 2)
    a = 0.004 * chirp + 0.003 * tones + 0.0005 * rng.standard_normal(n)
    b = 0.001 * rng.standard_normal(n)
    return [a.astype(np.float32), b.astype(np.float32)]


def _unit_from_image(image: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Invert :func:`edge.inference.frontend.to_image` (channel 0) back to the [0, 1] spectrogram."""
    ch0 = np.asarray(image, dtype=np.float32)[0]
    if cfg.normalization == "imagenet":
        ch0 = ch0 * 0.229 + 0.485
    return np.clip(ch0, 0.0, 1.0)


def encode_reference_inputs(images: np.ndarray, cfg: FrontendConfig) -> dict[str, Any]:
    """Store model inputs compactly: the [0, 1] spectrogram as uint8, base64 (~22 kB per window)."""
    units = np.stack([_unit_from_image(img, cfg) for img in images])
    q = np.round(units * 255.0).astype(np.uint8)
    return {
        "encoding": REFERENCE_ENCODING,
        "shape": list(q.shape),
        "data": base64.b64encode(q.tobytes()).decode("ascii"),
    }


def decode_reference_inputs(reference: dict[str, Any], cfg: FrontendConfig) -> np.ndarray:
    """The exact model inputs ``(N, C, H, W)`` the stored reference outputs were computed on."""
    if reference.get("encoding") != REFERENCE_ENCODING:
        raise ValueError(f"unknown reference encoding {reference.get('encoding')!r}")
    shape = tuple(int(s) for s in reference["shape"])
    q = np.frombuffer(base64.b64decode(reference["data"]), dtype=np.uint8).reshape(shape)
    return np.stack([to_image(u.astype(np.float32) / 255.0, cfg) for u in q])


def compute_reference(
    model_path: str | Path,
    cfg: FrontendConfig,
    images: np.ndarray | None = None,
    atol: float = REFERENCE_ATOL,
    input_name: str = "input",
) -> dict[str, Any]:
    """Run the model on reference inputs (default: synthetic windows) and return the manifest entry."""
    if images is None:
        images = np.stack([compute(w, cfg.sample_rate, cfg) for w in default_reference_audio(cfg)])
    entry: dict[str, Any] = {"input": encode_reference_inputs(np.asarray(images), cfg)}
    x = decode_reference_inputs(entry["input"], cfg)
    sess = create_session(Path(model_path), 1)
    out = sess.run(None, {input_name: x})[0]
    entry["output"] = np.asarray(out, dtype=np.float64).round(6).tolist()
    entry["atol"] = float(atol)
    return entry


# --------------------------------------------------------------------------- the check


def check_io(bundle: ModelBundle, sess, src: Path) -> None:
    """The session's input/output names and shapes match the manifest and the frontend."""
    m = bundle.manifest
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    in_names, out_names = [i.name for i in inputs], [o.name for o in outputs]
    if m.input_name not in in_names or m.output_name not in out_names:
        raise SonotrapError(
            f"model in {src} has inputs {in_names} / outputs {out_names}, manifest says "
            f"{shown(m.input_name)} / {shown(m.output_name)}; rebuild the bundle"
        )
    shape = next(i.shape for i in inputs if i.name == m.input_name)
    expected = list(bundle.frontend.image_shape)
    if len(shape) != 4 or any(isinstance(s, int) and s != e for s, e in zip(shape[1:], expected, strict=True)):
        raise SonotrapError(
            f"model in {src} takes input {shape} but the frontend makes {['batch', *expected]}; "
            "the bundle's frontend parameters do not match its model, rebuild it"
        )
    out_shape = next(o.shape for o in outputs if o.name == m.output_name)
    k = out_shape[-1] if out_shape else None
    if isinstance(k, int) and k != len(m.labels):
        raise SonotrapError(
            f"model in {src} outputs {k} classes but the manifest lists {len(m.labels)} labels; rebuild the bundle"
        )


def run_self_test(bundle: ModelBundle, sess=None, src: Path | None = None) -> float:
    """Re-run the stored reference input (and audio); returns the max abs difference to the stored output.

    The outputs must be one finite probability in [0, 1] per label and match the stored ones
    within the reference's tolerance. With reference audio, the frontend and the model run on it
    and must reproduce the builder's outputs too.
    """
    src = src or bundle.path
    ref = bundle.manifest.reference
    if not ref or "input" not in ref or "output" not in ref:
        raise SonotrapError(
            f"model bundle {src} has no self-test reference; rebuild it with 'sonotrap quantize' (or write_bundle)"
        )
    try:
        x = decode_reference_inputs(ref["input"], bundle.frontend)
        expected = np.asarray(ref["output"], dtype=np.float32)
        atol = float(ref.get("atol", REFERENCE_ATOL))
    except (ValueError, KeyError, TypeError) as err:
        raise SonotrapError(f"model bundle {src} has a corrupt self-test reference ({err}); rebuild the bundle") from None
    sess = sess or bundle.create_session(1)
    try:
        got = sess.run([bundle.manifest.output_name], {bundle.manifest.input_name: x})[0]
    except Exception as err:
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise SonotrapError(f"model in {src} fails on its reference input ({first}); rebuild the bundle") from None
    if got.shape[-1] != len(bundle.manifest.labels):
        raise SonotrapError(
            f"model in {src} outputs {got.shape[-1]} classes but the manifest lists "
            f"{len(bundle.manifest.labels)} labels; rebuild the bundle"
        )
    if got.shape != expected.shape:
        raise SonotrapError(f"model in {src} self-test output shape {got.shape} != stored {expected.shape}; rebuild the bundle")
    if got.size and (not np.all(np.isfinite(got)) or got.min() < 0 or got.max() > 1):
        raise SonotrapError(f"model in {src} outputs values outside 0..1; it must end in a sigmoid")
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not diff <= atol:
        raise SonotrapError(
            f"model in {src} fails its self-test: output differs from the stored reference by {diff:.4f} "
            f"(> {atol}); {_self_test_hint(bundle.manifest.quantization)}"
        )
    if ref.get("audio") is not None:
        diff = max(diff, check_reference_audio(bundle.path, bundle.manifest, bundle.frontend, sess, src))
    return diff


def _self_test_hint(quantization: dict | None) -> str:
    """The likely cause and fix of a failed self-test, for the one-line error."""
    q = quantization or {}
    if q.get("weight_type") == "int8" and q.get("reduce_range") is False:
        return ("its INT8 weights use the full 8-bit range, which gives wrong outputs on x86 CPUs without "
                "VNNI (AVX2 only); rebuild it with sonotrap quantize, whose default 7-bit weights run on every CPU")
    return "the model or this onnxruntime is broken, re-download the bundle"


def has_reference_audio(bundle: ModelBundle) -> bool:
    """Whether the bundle's self-test includes the frontend on recorded audio (newer bundles)."""
    return bool(bundle.manifest.reference) and bundle.manifest.reference.get("audio") is not None
