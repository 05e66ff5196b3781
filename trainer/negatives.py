"""Synthetic silence and noise windows with every label known absent (training negatives).

Field recorders produce long stretches of near-silence, DC offsets and steady hiss. A model
that only ever saw annotated field windows has no idea what to say about them, and with a
gain-invariant frontend it says something confident. Replacing a small fraction of training
items (``--negatives P``) with such windows, labelled "no label present", teaches it to
stay quiet. Levels span the frontend's absolute floor: below it the image is blank (the
edge skips the model there anyway), above it the noise is visible and must score low.
"""

from __future__ import annotations

import numpy as np

from edge.inference.frontend import FrontendConfig, compute

KINDS = ("silence", "dc", "white", "pink", "brown")
LEVEL_DB = (-130.0, -40.0)  # RMS range of the noise, dBFS


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Unit-RMS noise with power spectral density ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    if exponent:
        spec /= np.maximum(np.arange(spec.size), 1) ** (exponent / 2)
    x = np.fft.irfft(spec, n)
    return x / max(float(x.std()), 1e-12)


def negative_audio(rng: np.random.Generator, cfg: FrontendConfig, kind: str | None = None) -> np.ndarray:
    """One window of model-rate audio holding no call: silence, DC, or white/pink/brown noise."""
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    n = cfg.window_samples
    if kind == "silence":
        return np.zeros(n, dtype=np.float32)
    level = 10 ** (rng.uniform(*LEVEL_DB) / 20)
    if kind == "dc":
        x = np.full(n, rng.uniform(-0.5, 0.5)) + level * rng.standard_normal(n)
    else:
        x = level * coloured_noise(rng, n, KINDS.index(kind) - 2.0)
    return x.astype(np.float32)


def negative_image(rng: np.random.Generator, cfg: FrontendConfig) -> np.ndarray:
    """A negative window through the shared frontend: the model input ``(C, H, W)``."""
    return compute(negative_audio(rng, cfg), cfg.sample_rate, cfg)
