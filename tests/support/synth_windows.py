"""Labelled spectrogram windows from generated calls, and a small CNN trained on them.

Export/quantization tests need real frontend windows with known labels and a model whose
AP means something, in seconds on two cores: three call types (tones/sweeps in separate
bands, overlapping in time, in noise, at random quiet levels) through ``edge.inference.frontend``,
and a 3-layer CNN with BatchNorm/ReLU (the same op mix as ResNet50) trained for a few epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.inference.frontend import FrontendConfig, compute

LABELS = ["low_whistle", "mid_trill", "high_sweep"]
BANDS = {"low_whistle": (900.0, 1500.0), "mid_trill": (2500.0, 3300.0), "high_sweep": (5000.0, 7000.0)}


def make_windows(n: int, seed: int = 0, cfg: FrontendConfig | None = None, silent: bool = False):
    """``(images, targets, labels)``; ``silent=True`` gives all-zero audio (a broken calibration set)."""
    cfg = cfg or FrontendConfig()
    rng = np.random.default_rng(seed)
    sr, ns = cfg.sample_rate, cfg.window_samples
    t = np.arange(ns) / sr
    images, targets = [], []
    for _ in range(n):
        if silent:
            images.append(compute(np.zeros(ns, np.float32), sr, cfg))
            targets.append(np.zeros(len(LABELS), np.float32))
            continue
        level = 10 ** rng.uniform(-4, -2.5)
        x = level * rng.standard_normal(ns)
        y = np.zeros(len(LABELS), np.float32)
        for k, label in enumerate(LABELS):
            if rng.random() > 0.4:
                continue
            lo, hi = BANDS[label]
            on = rng.uniform(0, 1.4)
            dur = rng.uniform(0.15, 0.6)
            env = ((t >= on) & (t < on + dur)).astype(np.float64)
            amp = level * 10 ** rng.uniform(-0.8, 0.2)
            if label == "high_sweep":
                f0 = rng.uniform(lo, lo + 500)
                phase = 2 * np.pi * (f0 * (t - on) + (hi - f0) * (t - on) ** 2 / (2 * dur))
            elif label == "mid_trill":
                f = rng.uniform(lo, hi - 300)
                phase = 2 * np.pi * (f * t + 150 / 25 * np.sin(2 * np.pi * 25 * t))
            else:
                phase = 2 * np.pi * rng.uniform(lo, hi) * t
            x += amp * env * np.sin(phase)
            y[k] = 1.0
        if rng.random() < 0.3:  # distractor tone outside every band
            x += level * rng.uniform(0.5, 2) * np.sin(2 * np.pi * rng.uniform(1800, 2200) * t)
        images.append(compute(x.astype(np.float32), sr, cfg))
        targets.append(y)
    return np.stack(images), np.stack(targets), list(LABELS)


def save_npz(path: Path, images: np.ndarray, targets: np.ndarray, labels: list[str]) -> Path:
    np.savez(path, images=images, targets=targets, known=np.ones_like(targets, dtype=bool), labels=np.array(labels))
    return path


def small_cnn(num_classes: int):
    import torch
    from torch import nn

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()

            def block(i: int, o: int) -> nn.Sequential:
                return nn.Sequential(nn.Conv2d(i, o, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

            self.features = nn.Sequential(block(3, 16), block(16, 32), block(32, 32))
            self.pool = nn.AdaptiveMaxPool2d((16, 1))  # keep frequency, pool over time
            self.fc = nn.Linear(32 * 16, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    return SmallCNN()


def train_small_cnn(images: np.ndarray, targets: np.ndarray, epochs: int = 12, seed: int = 0):
    """A few epochs of Adam on the generated windows; returns the model in eval mode."""
    import torch

    torch.manual_seed(seed)
    model = small_cnn(targets.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x, y = torch.from_numpy(images), torch.from_numpy(targets)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(32):
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()
