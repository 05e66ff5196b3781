"""torch Dataset over a run's windows: audio -> augment -> ``edge.inference.frontend.compute`` -> tensor.

Unaugmented items are exactly :func:`trainer.rundata.window_image` (the edge's computation).
Training items draw their randomness from ``(seed, epoch, index)`` so a resumed run, or a
run with a different number of loader workers, sees the same augmented examples.

Augmentations: time shift (jitter around the anchoring call, window relabelled), random
gain, background mix-in from negative windows of the same split, SpecAugment-style time
and frequency masks on the image, and (``synthetic_negatives``) a fraction of items replaced
by silence/noise windows with every label known absent (:mod:`trainer.negatives`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from edge.inference.frontend import FrontendConfig, compute, resample, to_image
from trainer.negatives import negative_image
from trainer.pseudo import merge
from trainer.rundata import AudioCache, RunData, cut, window_image
from trainer.windows import Window, jitter_start, to_arrays, window_targets


@dataclass
class AugmentConfig:
    enabled: bool = True
    shift_s: float = 0.5  # max time shift around the call
    gain_db: float = 6.0  # random gain +-
    mix_prob: float = 0.5  # chance to mix in a negative window
    mix_snr_db: tuple[float, float] = (3.0, 20.0)  # signal-to-background ratio range
    time_masks: int = 2
    time_mask_frac: float = 0.08  # max width of each mask, fraction of the image width
    freq_masks: int = 2
    freq_mask_frac: float = 0.08
    synthetic_negatives: float = 0.0  # chance an item becomes silence/noise, all labels absent


class WindowDataset(Dataset):
    """Items: ``(image (C,H,W) float32, targets (K,) float32, known (K,) bool, index)``.

    ``pseudo`` fills unknown label entries of the windows (pseudo-label rounds, training only).
    """

    def __init__(
        self, run: RunData, windows: list[Window], train: bool = False,
        augment: AugmentConfig | None = None, seed: int = 0, cache_bytes: int = 256 * 2**20,
        pseudo: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.run = run
        self.windows = windows
        self.cfg: FrontendConfig = run.frontend
        self.train = train
        self.aug = augment if augment is not None else AugmentConfig(enabled=False)
        self.seed = seed
        self.epoch = 0
        self.cache = AudioCache(cache_bytes)
        self.targets, self.known = to_arrays(windows, run.labels)
        self.pseudo = pseudo  # (targets, known) of pseudo-labelled entries (trainer.pseudo)
        if pseudo is not None:
            self.targets, self.known = merge(self.targets, self.known, *pseudo)
        self.by_file = run.annotations_by_file()
        self.negatives = [i for i, w in enumerate(windows) if not w.positives and w.known is None]
        self._mask_value = to_image(np.zeros((1, 1), dtype=np.float32), self.cfg)[:, 0, 0]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int):
        w = self.windows[i]
        if not (self.train and self.aug.enabled):
            image = window_image(self.cache, self.run.path(w.file), w.start_s, w.end_s - w.start_s, self.cfg)
            return torch.from_numpy(image), torch.from_numpy(self.targets[i]), torch.from_numpy(self.known[i]), i
        rng = np.random.default_rng((self.seed, self.epoch, i))
        if self.aug.synthetic_negatives > 0 and rng.random() < self.aug.synthetic_negatives:
            k = len(self.run.labels)
            return (torch.from_numpy(negative_image(rng, self.cfg)), torch.zeros(k), torch.ones(k, dtype=torch.bool), i)
        image, targets, known = self.augmented(w, rng)
        if self.pseudo is not None:  # the jittered window keeps its pseudo labels
            targets, known = merge(targets, known, self.pseudo[0][i], self.pseudo[1][i])
        return torch.from_numpy(image), torch.from_numpy(targets), torch.from_numpy(known), i

    def augmented(self, w: Window, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = self.aug
        length = w.end_s - w.start_s
        rec = self.run.recordings[w.file]
        start = jitter_start(w, rec.duration_s, a.shift_s, rng) if a.shift_s > 0 else w.start_s
        targets, known = window_targets(
            self.by_file.get(w.file, ()), start, start + length, self.run.labels, rec.complete,
            self.run.window.min_overlap,
        )
        audio, sr = self.cache.get(self.run.path(w.file))
        x = cut(audio, sr, start, length)
        if a.gain_db > 0:
            x = x * np.float32(10 ** (rng.uniform(-a.gain_db, a.gain_db) / 20))
        if self.negatives and a.mix_prob > 0 and rng.random() < a.mix_prob:
            j = self.negatives[int(rng.integers(len(self.negatives)))]
            bw = self.windows[j]
            if bw.file != w.file or abs(bw.start_s - start) > 1e-6:
                baudio, bsr = self.cache.get(self.run.path(bw.file))
                b = resample(cut(baudio, bsr, bw.start_s, length), bsr, sr)[: x.shape[0]]
                b = np.pad(b, (0, x.shape[0] - b.shape[0]))
                sx, sb = float(np.sqrt(np.mean(x**2))), float(np.sqrt(np.mean(b**2)))
                if sx > 0 and sb > 0:
                    snr = rng.uniform(*a.mix_snr_db)
                    x = x + b * np.float32(sx / sb * 10 ** (-snr / 20))
        image = compute(x, sr, self.cfg)
        _, h, wd = image.shape
        for _ in range(a.time_masks):
            width = int(rng.integers(0, max(1, int(a.time_mask_frac * wd)) + 1))
            t0 = int(rng.integers(0, max(1, wd - width + 1)))
            image[:, :, t0: t0 + width] = self._mask_value[:, None, None]
        for _ in range(a.freq_masks):
            height = int(rng.integers(0, max(1, int(a.freq_mask_frac * h)) + 1))
            f0 = int(rng.integers(0, max(1, h - height + 1)))
            image[:, f0: f0 + height, :] = self._mask_value[:, None, None]
        return image, targets, known
