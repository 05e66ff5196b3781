"""A tiny, deterministic ONNX 'band detector' bundle for tests and benchmarks.

It has the same input/output contract as the real ResNet50 bundles (``input`` of shape
``(N, 3, n_mels, n_frames)`` -> ``probabilities`` of shape ``(N, K)``) but answers a known
question: label ``k`` fires when its frequency band holds the loudest energy in the window.
Tests can then generate tones and know exactly which detections must come out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge.inference.frontend import FrontendConfig, _hz_to_mel, _mel_to_hz
from edge.models.bundle import write_bundle
from edge.models.manifest import Label, Manifest

DEFAULT_BANDS = {"tone_low": (1000.0, 1400.0), "tone_high": (3800.0, 4400.0)}


def mel_centres(cfg: FrontendConfig) -> np.ndarray:
    mels = np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax), cfg.n_mels + 2)
    return _mel_to_hz(mels[1:-1])


def band_model_bytes(cfg: FrontendConfig, bands: dict[str, tuple[float, float]], gain: float = 30.0) -> bytes:
    """ONNX graph: max over time of channel 0 -> (mean in band - mean out of band) -> sigmoid."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    centres = mel_centres(cfg)
    k = len(bands)
    w = np.zeros((cfg.n_mels, k), dtype=np.float32)
    for j, (lo, hi) in enumerate(bands.values()):
        inside = (centres >= lo) & (centres <= hi)
        if not inside.any():
            raise ValueError(f"band {lo}-{hi} Hz holds no mel bin")
        w[inside, j] = 1.0 / inside.sum()
        w[~inside, j] = -1.0 / (~inside).sum()
    # Channel 0 is (unit - 0.485) / 0.229 under ImageNet normalisation; undo the scale.
    scale = 0.229 if cfg.normalization == "imagenet" else 1.0
    w *= gain * scale
    b = np.full((k,), -gain * 0.08, dtype=np.float32)  # fires when the band is 0.08 above the rest
    nodes = [
        helper.make_node("Slice", ["input", "c0", "c1", "c_axis"], ["ch0"]),
        helper.make_node("ReduceMax", ["ch0"], ["tmax"], axes=[3], keepdims=0),
        helper.make_node("Flatten", ["tmax"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "c0"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "c1"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "c_axis"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(b, "B"),
    ]
    graph = helper.make_graph(
        nodes,
        "band_detector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *cfg.image_shape])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", k])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_tiny_bundle(
    out_dir: str | Path,
    cfg: FrontendConfig | None = None,
    bands: dict[str, tuple[float, float]] | None = None,
    version: str = "1.0.0",
    name: str = "tiny-band-detector",
    threshold: float = 0.5,
    reference_audio: list[np.ndarray] | None = None,
) -> Path:
    """Write a complete bundle directory for the band detector and return its path.

    ``reference_audio`` (mono windows at the frontend's rate) makes a newer-style bundle that
    carries recorded reference audio; without it the bundle is old-style (no audio member).
    """
    cfg = cfg or FrontendConfig()
    bands = bands or DEFAULT_BANDS
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "model.onnx"
    model_path.write_bytes(band_model_bytes(cfg, bands))
    manifest = Manifest(
        name=name,
        version=version,
        labels=[Label(code, code.replace("_", " ")) for code in bands],
        thresholds={code: threshold for code in bands},
        frontend=cfg.to_dict(),
        model_sha256="",
        input_shape=["batch", *cfg.image_shape],
        output_shape=["batch", len(bands)],
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        provenance={"kind": "synthetic test model", "bands_hz": {k: list(v) for k, v in bands.items()}},
    )
    return write_bundle(out, model_path, manifest, reference_audio=reference_audio, reference_audio_source="test tones")


def tone_windows(cfg: FrontendConfig | None = None) -> list[np.ndarray]:
    """Reference audio for the band detector: one window per default band (each label fires once)."""
    cfg = cfg or FrontendConfig()
    return [tone(1200.0, cfg.window_s, cfg.sample_rate), tone(4100.0, cfg.window_s, cfg.sample_rate, seed=1)]


def tone(freq: float, seconds: float, sr: int, amplitude: float = 0.005, noise: float = 0.0005, seed: int = 0) -> np.ndarray:
    """A quiet sine (field audio is quiet) in white noise, float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(t.size)).astype(np.float32)
