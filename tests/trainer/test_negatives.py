"""Synthetic silence/noise negatives: all labels known absent, levels around the frontend floor."""

from __future__ import annotations

import csv

import numpy as np
import soundfile as sf
import torch

from edge.inference.frontend import FrontendConfig, analyse, compute, level_db
from trainer.dataset import AugmentConfig, WindowDataset
from trainer.negatives import KINDS, LEVEL_DB, coloured_noise, negative_audio
from trainer.prepare import DataSpec, prepare_run

CFG = FrontendConfig()


def test_each_kind_is_what_it_says():
    rng = np.random.default_rng(0)
    assert not np.any(negative_audio(rng, CFG, "silence"))
    for kind in KINDS[1:]:
        x = negative_audio(rng, CFG, kind)
        assert x.shape == (CFG.window_samples,) and x.dtype == np.float32
        assert 10 * np.log10(np.mean((x - x.mean()) ** 2)) <= LEVEL_DB[1] + 1
    white, pink = coloured_noise(rng, 64000, 0.0), coloured_noise(rng, 64000, 1.0)
    low = slice(1, 64000 * 200 // 32000)  # below 200 Hz
    assert np.abs(np.fft.rfft(pink)[low]).mean() > 5 * np.abs(np.fft.rfft(white)[low]).mean()


def test_levels_span_the_floor():
    rng = np.random.default_rng(1)
    levels = [level_db(analyse(negative_audio(rng, CFG, "white"), CFG.sample_rate, CFG), CFG) for _ in range(60)]
    assert min(levels) < CFG.floor_db < max(levels)


def test_dataset_replaces_items_with_all_absent_negatives(tmp_path):
    sr = 32000
    t = np.arange(int(4.0 * sr)) / sr
    audio = 0.002 * np.random.default_rng(2).standard_normal(t.size) + 0.01 * np.sin(2 * np.pi * 3000 * t) * (t > 1)
    (tmp_path / "rec").mkdir()
    sf.write(tmp_path / "rec" / "a.flac", audio.astype(np.float32), sr)
    with (tmp_path / "rec" / "annotations.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["file", "start_s", "end_s", "label"], ["a.flac", 1.0, 4.0, "call"]])
    run = prepare_run(DataSpec(data=str(tmp_path / "rec"), fractions=(1.0, 0.0, 0.0)), CFG, tmp_path / "run").run
    windows = run.windows("train")
    assert any(w.positives for w in windows)
    all_neg = WindowDataset(run, windows, train=True, augment=AugmentConfig(synthetic_negatives=1.0))
    for i in range(len(windows)):
        image, targets, known, idx = all_neg[i]
        assert idx == i and image.shape == CFG.image_shape and torch.isfinite(image).all()
        assert not targets.any() and known.all()
    none = WindowDataset(run, windows, train=True, augment=AugmentConfig(synthetic_negatives=0.0))
    assert any(none[i][1].any() for i in range(len(windows)))
    half = WindowDataset(run, windows * 20, train=True, augment=AugmentConfig(synthetic_negatives=0.5))
    replaced = sum(bool(half[i][2].all() and not half[i][1].any()) for i in range(len(half)))
    assert 0 < replaced < len(half)


def test_a_blank_negative_is_the_edge_blank_image():
    x = negative_audio(np.random.default_rng(3), CFG, "silence")
    np.testing.assert_array_equal(compute(x, CFG.sample_rate, CFG), compute(np.zeros(10), CFG.sample_rate, CFG))
