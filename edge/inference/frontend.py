"""The spectrogram frontend: the ONE implementation used by both trainer and edge.

Training and serving call the same function with the same parameters (stored in the model
manifest), so the image a model was trained on and the image it sees in the field can never
disagree. numpy only, so the edge never needs torch (nor scipy's 80 MB import).

Pipeline for one window of raw audio at any sample rate:
downmix -> resample to ``sample_rate`` -> remove the window's DC offset -> pad/crop to
``window_s`` -> framed STFT (Hann) -> power -> mel filterbank over [fmin, fmax] -> dB
relative to the window's own maximum (gain invariant: field audio often peaks below 1% of
full scale), but never relative to less than the absolute ``floor_db`` -> clip to
``top_db`` -> scale to [0, 1] -> replicate to 3 channels -> ImageNet mean/std (the ResNet50
was pretrained on such images). Output: float32 ``(3, n_mels, n_frames)``, low frequencies
at row 0.

Why the floor: pure gain normalisation turns digital silence, a DC offset or sub-LSB noise
into a full-contrast image the model happily classifies. Below ``floor_db`` a window is
blank (all zeros before normalisation), and the pipeline does not even run the model on it
(:func:`level_db`, used by ``edge.inference.gate``). Levels are in dB relative to
full-scale white noise: white noise of RMS -90 dBFS reads about -90 dB in every mel band
(its window peak, the maximum over cells, reads about 10 dB higher).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from math import gcd
from typing import Any

import numpy as np

from edge.errors import SonotrapError

FRONTEND_VERSION = 1
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_NORMALIZATIONS = ("imagenet", "unit")


@dataclass(frozen=True)
class FrontendConfig:
    """Every parameter of the frontend; written verbatim into the model manifest."""

    sample_rate: int = 32000
    window_s: float = 2.0
    n_fft: int = 1024
    hop_length: int = 500
    n_mels: int = 128
    n_frames: int = 128
    fmin: float = 50.0
    fmax: float = 15000.0
    top_db: float = 80.0
    floor_db: float = -100.0  # absolute level floor (dB re full-scale white noise per mel band)
    channels: int = 3
    normalization: str = "imagenet"
    version: int = FRONTEND_VERSION

    def __post_init__(self) -> None:
        problems = []
        if self.sample_rate < 1000:
            problems.append(f"sample_rate={self.sample_rate} is below 1000 Hz")
        if self.window_s <= 0:
            problems.append(f"window_s={self.window_s} must be > 0")
        if self.n_fft < 16 or self.hop_length < 1:
            problems.append("n_fft must be >= 16 and hop_length >= 1")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            problems.append(
                f"band fmin={self.fmin}..fmax={self.fmax} must satisfy 0 <= fmin < fmax <= "
                f"sample_rate/2={self.sample_rate / 2}"
            )
        if self.n_mels < 1 or self.n_frames < 1 or self.channels not in (1, 3):
            problems.append("n_mels and n_frames must be >= 1 and channels 1 or 3")
        if self.top_db <= 0:
            problems.append(f"top_db={self.top_db} must be > 0")
        if not -200.0 <= self.floor_db <= 0.0:
            problems.append(f"floor_db={self.floor_db} must be within -200..0 dB")
        if self.normalization not in _NORMALIZATIONS:
            problems.append(f"normalization={self.normalization!r} is not one of {_NORMALIZATIONS}")
        if self.version != FRONTEND_VERSION:
            problems.append(
                f"frontend version {self.version} is not supported by this sonotrap "
                f"(supports {FRONTEND_VERSION}); upgrade sonotrap"
            )
        if problems:
            raise SonotrapError("invalid frontend parameters: " + "; ".join(problems))

    @property
    def window_samples(self) -> int:
        """Samples in one window at the model's sample rate."""
        return int(round(self.window_s * self.sample_rate))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.n_mels, self.n_frames)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrontendConfig:
        """Build from a manifest dict; unknown keys mean a newer frontend we cannot honour."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SonotrapError(
                f"frontend parameters {unknown} are unknown to this sonotrap version; "
                "upgrade sonotrap to run this model"
            )
        try:
            return cls(**data)
        except TypeError as err:
            raise SonotrapError(f"invalid frontend parameters: {err}") from None


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Downmix ``(samples,)`` or ``(samples, channels)`` to float32 mono."""
    audio = np.asarray(audio)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    elif audio.ndim != 1:
        raise SonotrapError(f"audio must be 1-D or (samples, channels), got shape {audio.shape}")
    if audio.dtype.kind in "iu":
        audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max)
    return audio.astype(np.float32, copy=False)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (exact rational ratio); identity when the rates match.

    The same result as ``scipy.signal.resample_poly(audio, up, down)`` (Kaiser-windowed sinc,
    beta 5, zero padding; a test compares them) in numpy alone: importing scipy.signal costs
    the daemon ~80 MB of RSS, a third of its footprint.
    """
    if from_rate == to_rate:
        return audio
    if from_rate <= 0 or to_rate <= 0:
        raise SonotrapError(f"sample rate {from_rate} -> {to_rate} is invalid; rates must be positive integers")
    g = gcd(int(from_rate), int(to_rate))
    up, down = int(to_rate) // g, int(from_rate) // g
    rev, skip = _polyphase(up, down)
    x = np.asarray(audio, dtype=np.float64)
    n_in, taps = x.shape[0], rev.shape[1]
    n_out = -(-n_in * up // down)
    # Output j sits at upsampled index j*down: y[j] = sum_k h[(j*down) % up + k*up] * x[(j*down)//up - k].
    # Outputs j, j+up, j+2up, ... share a filter phase and step through x by ``down``.
    last = ((skip + n_out - 1) * down) // up
    padded = np.concatenate([np.zeros(taps - 1), x, np.zeros(max(0, last + 1 - n_in))])
    frames = np.lib.stride_tricks.sliding_window_view(padded, taps)  # frames[i] = x[i-taps+1 .. i]
    out = np.empty(n_out, dtype=np.float32)
    for r in range(min(up, n_out)):
        t = (skip + r) * down
        count = -(-(n_out - r) // up)
        out[r::up] = frames[t // up: t // up + down * count: down] @ rev[t % up]
    return out


@lru_cache(maxsize=8)
def _polyphase(up: int, down: int) -> tuple[np.ndarray, int]:
    """``resample_poly``'s low-pass filter as an ``(up, taps)`` polyphase matrix (taps reversed,
    to dot with a window of x in time order), plus the number of leading outputs it drops."""
    max_rate = max(up, down)
    half_len = 10 * max_rate
    m = np.arange(2 * half_len + 1, dtype=np.float64) - half_len
    h = np.sinc(m / max_rate) / max_rate * np.kaiser(2 * half_len + 1, 5.0)  # scipy.signal.firwin
    h *= up / h.sum()
    pre = down - half_len % down
    h = np.concatenate([np.zeros(pre), h])
    taps = -(-h.shape[0] // up)
    h = np.pad(h, (0, taps * up - h.shape[0]))
    return np.ascontiguousarray(h.reshape(taps, up).T[:, ::-1]), (half_len + pre) // down


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(cfg: FrontendConfig) -> np.ndarray:
    """Triangular HTK-mel filters, shape ``(n_mels, n_fft // 2 + 1)``, area-normalised."""
    n_bins = cfg.n_fft // 2 + 1
    freqs = np.linspace(0.0, cfg.sample_rate / 2, n_bins)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lower) / np.maximum(centre - lower, 1e-9)
    falling = (upper - freqs[None, :]) / np.maximum(upper - centre, 1e-9)
    fb = np.clip(np.minimum(rising, falling), 0.0, None)
    # Narrow low bands can fall between FFT bins: give each the nearest bin so no row is empty.
    for i in np.flatnonzero(fb.sum(axis=1) == 0):
        fb[i, int(np.argmin(np.abs(freqs - centre[i, 0])))] = 1.0
    fb /= fb.sum(axis=1, keepdims=True)
    return fb.astype(np.float32)


@lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    return np.hanning(n_fft + 1)[:-1].astype(np.float32)


def fit_window(audio: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Zero-pad or crop model-rate audio to the exact samples the STFT needs."""
    needed = (cfg.n_frames - 1) * cfg.hop_length + cfg.n_fft
    if audio.shape[0] >= needed:
        return audio[:needed]
    return np.pad(audio, (0, needed - audio.shape[0]))


def mel_power(audio: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Mel power spectrogram ``(n_mels, n_frames)`` of model-rate mono audio, DC removed.

    The window's mean is subtracted first: a DC offset leaks through the Hann window into
    the lowest mel bands and would otherwise pass the level floor as a loud "sound".
    """
    x = fit_window(audio - np.float32(audio.mean()) if audio.size else audio, cfg)
    frames = np.lib.stride_tricks.sliding_window_view(x, cfg.n_fft)[:: cfg.hop_length]
    spec = np.fft.rfft(frames * _hann(cfg.n_fft), axis=1)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    return mel_filterbank(cfg) @ power.T


@lru_cache(maxsize=8)
def _full_scale(n_fft: int) -> float:
    """Mel power of full-scale (RMS 1) white noise: the 0 dB reference of :func:`level_db`."""
    return float(np.sum(_hann(n_fft).astype(np.float64) ** 2))


def to_db(mel: np.ndarray | float, cfg: FrontendConfig) -> np.ndarray:
    """Mel power in dB relative to full-scale white noise (-inf-safe: floored at -300 dB)."""
    return 10.0 * np.log10(np.maximum(np.asarray(mel, dtype=np.float64) / _full_scale(cfg.n_fft), 1e-30))


def level_db(mel: np.ndarray, cfg: FrontendConfig) -> float:
    """A window's level: its loudest mel cell in dB; below ``cfg.floor_db`` the image is blank."""
    peak = float(mel.max()) if mel.size else 0.0
    return float(to_db(peak, cfg)) if np.isfinite(peak) else -300.0


def normalize(mel: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """dB relative to the window maximum (or the absolute floor, whichever is higher),
    clipped to ``top_db``, scaled to [0, 1]; a window below the floor is all zeros."""
    peak = float(mel.max())
    if not np.isfinite(peak) or level_db(mel, cfg) < cfg.floor_db:
        return np.zeros_like(mel, dtype=np.float32)
    floor = peak * 10.0 ** (-cfg.top_db / 10.0)
    db = 10.0 * np.log10(np.maximum(mel, floor) / peak)
    return ((db + cfg.top_db) / cfg.top_db).astype(np.float32)


def to_image(unit: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Replicate a [0, 1] spectrogram to the model's channels and apply its normalisation."""
    img = np.repeat(unit[None, :, :], cfg.channels, axis=0)
    if cfg.normalization == "imagenet":
        mean = _IMAGENET_MEAN[: cfg.channels, None, None]
        std = _IMAGENET_STD[: cfg.channels, None, None]
        img = (img - mean) / std
    return np.ascontiguousarray(img, dtype=np.float32)


def analyse(audio: np.ndarray, sample_rate: int, cfg: FrontendConfig) -> np.ndarray:
    """Raw audio window (any rate, mono or multi-channel) -> mel power ``(n_mels, n_frames)``.

    The first half of :func:`compute`; the pipeline's gates look at this before deciding
    whether the model runs on the window.
    """
    mono = to_mono(audio)
    if not np.all(np.isfinite(mono)):
        mono = np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
    return mel_power(resample(mono, int(sample_rate), cfg.sample_rate), cfg)


def image_of(mel: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Mel power from :func:`analyse` -> model input ``(C, H, W)``."""
    return to_image(normalize(mel, cfg), cfg)


def compute(audio: np.ndarray, sample_rate: int, cfg: FrontendConfig) -> np.ndarray:
    """Raw audio window (any rate, mono or multi-channel) -> model input ``(C, H, W)``.

    This is the function both the trainer's dataset and the edge daemon call.
    """
    return image_of(analyse(audio, sample_rate, cfg), cfg)


def compute_batch(windows: list[np.ndarray], sample_rate: int, cfg: FrontendConfig) -> np.ndarray:
    """Stack :func:`compute` over several windows into ``(N, C, H, W)``."""
    if not windows:
        return np.zeros((0, *cfg.image_shape), dtype=np.float32)
    return np.stack([compute(w, sample_rate, cfg) for w in windows])
