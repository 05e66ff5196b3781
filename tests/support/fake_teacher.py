"""A stand-in for BirdNET in trainer tests: deterministic 'embeddings' from the audio's spectrum.

It has BirdNET's interface (``run(audio (N, 144000)) -> Outputs``) and counts the windows it
was asked for, so tests can check what the teacher cache computes, without the CC BY-NC-SA
model or the optional extra.
"""

from __future__ import annotations

import numpy as np

from trainer.birdnet import EMBEDDING_DIM, WINDOW_SAMPLES, Outputs


class FakeTeacher:
    def __init__(self, n_logits: int = 8) -> None:
        self.windows = 0
        self.proj = np.random.default_rng(0).standard_normal((EMBEDDING_DIM, n_logits)).astype(np.float32)

    def run(self, audio: np.ndarray) -> Outputs:
        assert audio.shape[1] == WINDOW_SAMPLES
        self.windows += audio.shape[0]
        spec = np.abs(np.fft.rfft(audio, axis=1))[:, : 2 * 8 * EMBEDDING_DIM]  # 0-8 kHz at 48 kHz
        emb = np.log1p(1e3 * spec.reshape(audio.shape[0], EMBEDDING_DIM, -1).mean(axis=2)).astype(np.float32)
        return Outputs(emb, emb @ self.proj)
