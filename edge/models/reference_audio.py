"""Reference audio: the bundle's frontend and model run on real recorded audio with known outputs.

The stored spectrogram self-test (:mod:`edge.models.selftest`) shows that the model runs, but
not that the manifest's frontend parameters are the ones the model was trained with: a bundle
whose frontend differs (or a device whose frontend computes differently) feeds the model other
images in the field and still passes. So a bundle carries a few seconds of recorded audio (the
builder's validation windows, lossless FLAC at the frontend's sample rate, listed with size and
sha256 in the signed manifest) and the probabilities the builder got by running exactly the
device's code path on it: :func:`edge.inference.frontend.compute_batch`, then onnxruntime.
Verification re-runs that path and must reproduce them within the reference tolerance.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig, compute_batch, to_mono
from edge.util.hashing import sha256_file

AUDIO_FILE = "reference_audio.flac"
AUDIO_FORMAT = "FLAC"
AUDIO_SUBTYPE = "PCM_24"  # lossless and below any floor_db: quiet field audio keeps its detail
MAX_WINDOWS = 8
MAX_AUDIO_BYTES = 16 << 20  # a few windows of FLAC are ~100-400 kB
MAX_AUDIO_SAMPLES = 1 << 24  # decoded float32 stays under 64 MB, however well a file compresses


def write_reference_audio(
    out_dir: Path, windows: list[np.ndarray], cfg: FrontendConfig, sess: Any, input_name: str,
    atol: float, source: str = "",
) -> tuple[dict[str, Any], Path]:
    """Write ``windows`` (mono, at ``cfg.sample_rate``) as one FLAC; return the manifest entry and file.

    The expected outputs are computed from the file as written and read back, so the device
    sees exactly the samples the builder scored.
    """
    import soundfile as sf

    if not 1 <= len(windows) <= MAX_WINDOWS:
        raise SonotrapError(f"reference audio needs 1..{MAX_WINDOWS} windows, got {len(windows)}")
    n = cfg.window_samples
    fitted = []
    for w in windows:
        mono = np.asarray(to_mono(np.asarray(w, dtype=np.float32)), dtype=np.float32)[:n]
        fitted.append(np.pad(mono, (0, n - mono.shape[0])))
    samples = np.clip(np.concatenate(fitted), -1.0, 1.0)
    path = Path(out_dir) / AUDIO_FILE
    sf.write(str(path), samples, cfg.sample_rate, format=AUDIO_FORMAT, subtype=AUDIO_SUBTYPE)
    decoded, sr = _read(path, len(fitted) * n)
    images = compute_batch(list(decoded.reshape(len(fitted), n)), sr, cfg)
    out = np.asarray(sess.run(None, {input_name: images})[0], dtype=np.float64)
    entry = {
        "file": AUDIO_FILE,
        "format": f"{AUDIO_FORMAT} {AUDIO_SUBTYPE}",
        "sample_rate": int(sr),
        "window_samples": int(n),
        "windows": len(fitted),
        "source": source,
        "output": out.round(6).tolist(),
        "atol": float(atol),
    }
    return entry, path


def _read(path: Path, frames: int) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as fh:
            if fh.frames != frames or fh.channels != 1:
                raise ValueError(f"{fh.frames} frames x {fh.channels} channels, expected {frames} x 1")
            sr = int(fh.samplerate)
            data = fh.read(frames, dtype="float32", always_2d=False)
    except (RuntimeError, ValueError, OSError, sf.LibsndfileError) as err:
        raise SonotrapError(f"reference audio {path} cannot be read ({str(err)[:120]}); re-download the bundle") from None
    return np.asarray(data, dtype=np.float32), sr


def _entry(ref: dict[str, Any], files: dict[str, Any] | None, src: Path) -> tuple[str, int, int, int, np.ndarray, float]:
    """The audio entry's fields, type- and bound-checked; SonotrapError names what is wrong."""
    entry = ref["audio"]
    try:
        name = entry["file"]
        windows, n, sr = int(entry["windows"]), int(entry["window_samples"]), int(entry["sample_rate"])
        expected = np.asarray(entry["output"], dtype=np.float64)
        atol = float(entry.get("atol", ref.get("atol", 0.05)))
        if not isinstance(name, str) or not files or name not in files:
            raise ValueError(f"its file {str(name)[:60]!r} is not listed in the manifest's files")
        if not (1 <= windows <= MAX_WINDOWS and 1 <= n and windows * n <= MAX_AUDIO_SAMPLES and 1000 <= sr <= 384_000):
            raise ValueError("windows, window_samples or sample_rate out of range")
        if expected.ndim != 2 or expected.shape[0] != windows or not np.all(np.isfinite(expected)):
            raise ValueError(f"output shape {expected.shape} does not match {windows} windows")
        if not 0.0 <= atol <= 0.5:
            raise ValueError(f"atol {atol} out of range")
    except (KeyError, TypeError, ValueError) as err:
        raise SonotrapError(f"model bundle {src} has a corrupt reference-audio entry ({err}); rebuild the bundle") from None
    return name, windows, n, sr, expected, atol


def check_reference_audio(bundle_dir: Path, manifest: Any, frontend: FrontendConfig, sess: Any, src: Path) -> float:
    """Frontend + model on the bundle's reference audio; returns the max abs difference.

    Raises one-line SonotrapError on a missing or tampered file (sha256 against the signed
    listing) and on outputs that differ from the stored ones by more than the tolerance.
    """
    ref = manifest.reference
    name, windows, n, rate, expected, atol = _entry(ref, manifest.files, src)
    listed = manifest.files[name]
    path = Path(bundle_dir) / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise SonotrapError(f"model bundle {src} lacks its reference audio {name}; re-download the bundle") from None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_AUDIO_BYTES:
        raise SonotrapError(f"reference audio {path} is not a plain file of plausible size; re-download the bundle")
    if not isinstance(listed, dict) or st.st_size != listed.get("size") or sha256_file(path) != str(listed.get("sha256", "")).lower():
        raise SonotrapError(f"reference audio {path} fails its size/sha256 check (corrupt or tampered); re-download the bundle")
    audio, sr = _read(path, windows * n)
    if sr != rate:
        raise SonotrapError(f"reference audio {path} is sampled at {sr} Hz, its manifest entry says {rate} Hz; rebuild the bundle")
    try:
        images = compute_batch(list(audio.reshape(windows, n)), sr, frontend)
        got = np.asarray(sess.run([manifest.output_name], {manifest.input_name: images})[0], dtype=np.float64)
    except MemoryError:
        raise SonotrapError("the bundle's frontend or model needs more memory than this process may use") from None
    except SonotrapError:
        raise
    except Exception as err:
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise SonotrapError(f"model in {src} fails on its reference audio ({first}); rebuild the bundle") from None
    if got.shape != expected.shape:
        raise SonotrapError(
            f"model in {src} gives output shape {got.shape} on its reference audio, bundle says {expected.shape}; rebuild the bundle"
        )
    diff = np.abs(got - expected)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else (0, 0)
    if diff.size and not diff[worst] <= atol:
        w, k = int(worst[0]), int(worst[1])
        labels = [lab.code for lab in manifest.labels]
        label = labels[k] if k < len(labels) else str(k)
        raise SonotrapError(
            f"model bundle {src}: reference audio gives {got[w, k]:.3f} for label {label} (window {w}), bundle says "
            f"{expected[w, k]:.3f}: the frontend settings do not match the model (or this device's frontend "
            "computes differently); rebuild the bundle with the frontend the model was trained with"
        )
    return float(diff.max()) if diff.size else 0.0
