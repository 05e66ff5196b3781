"""Training and serving see the same image: the trainer's windows equal the edge pipeline's, bit for bit.

The recording is 44.1 kHz FLAC and the model runs at 32 kHz, so both sides go through the
resampler too. The edge side is the real streaming path (FileSource blocks -> ring buffer ->
hop schedule -> ``edge.inference.frontend.analyse`` + ``image_of``, i.e. ``compute``); the trainer side is ``WindowDataset`` and
``load_split_arrays`` (what training, evaluation, calibration and the FP32/INT8 check use).
"""

from __future__ import annotations

import csv
import math

import numpy as np
import soundfile as sf

import edge.inference.pipeline
from edge.config import Config
from edge.inference.frontend import FrontendConfig
from edge.inference.runtime import Classifier
from edge.models.bundle import load_bundle
from tests.support.tiny_model import make_tiny_bundle
from trainer.dataset import WindowDataset
from trainer.prepare import DataSpec, prepare_run
from trainer.rundata import load_split_arrays
from trainer.windows import Window, write_windows


def test_trainer_and_edge_compute_identical_tensors(tmp_path, monkeypatch):
    from edge.analysis.analyze import analyze_file

    sr = 44100
    rng = np.random.default_rng(4)
    t = np.arange(int(6.3 * sr)) / sr
    audio = 0.002 * rng.standard_normal(t.size) + 0.004 * np.sin(2 * np.pi * 2500 * t) * (np.sin(t * 3) > 0.5)
    (tmp_path / "rec").mkdir()
    sf.write(tmp_path / "rec" / "a.flac", audio.astype(np.float32), sr)
    with (tmp_path / "rec" / "annotations.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["file", "start_s", "end_s", "label"], ["a.flac", 1.0, 1.4, "call"]])
    cfg = FrontendConfig()
    run = prepare_run(DataSpec(data=str(tmp_path / "rec"), fractions=(1.0, 0.0, 0.0)), cfg, tmp_path / "run").run

    images: list[np.ndarray] = []
    real = edge.inference.pipeline.image_of
    monkeypatch.setattr(edge.inference.pipeline, "image_of", lambda mel, fe: images.append(real(mel, fe)) or images[-1])
    classifier = Classifier(load_bundle(make_tiny_bundle(tmp_path / "bundle", cfg)))
    edge_cfg = Config()
    edge_cfg.model.hop_s = 0.5
    result = analyze_file(tmp_path / "rec" / "a.flac", classifier, edge_cfg, batch=3)
    assert result.error is None and len(images) == 9  # hops ending at 2.0, 2.5, ..., 6.0 s

    # The same spans as training windows: hop k's window is [0.5 k - 2, 0.5 k).
    windows = [Window("a.flac", 0.5 * k - 2.0, 0.5 * k, math.nan, math.nan, (), None) for k in range(4, 13)]
    ds = WindowDataset(run, windows)
    for i, edge_image in enumerate(images):
        trainer_image = ds[i][0].numpy()
        assert trainer_image.shape == edge_image.shape == cfg.image_shape
        assert np.array_equal(trainer_image, edge_image), f"window {i} differs"
    write_windows(tmp_path / "run" / "windows_val.csv", windows)
    arrays = load_split_arrays(tmp_path / "run", "val")
    assert np.array_equal(arrays.images, np.stack(images))
