"""The model call: a bundle's onnxruntime session behind ``predict(images) -> probs``.

Keeps a rolling record of inference latencies so the daemon can report p50/p99 in its
status without any extra instrumentation.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from edge.errors import SonotrapError
from edge.models.bundle import ModelBundle


class Classifier:
    """A loaded model: images ``(N, C, H, W)`` float32 -> probabilities ``(N, K)``."""

    def __init__(self, bundle: ModelBundle, threads: int = 1, latency_window: int = 512) -> None:
        self.bundle = bundle
        self.session = bundle.create_session(threads)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        man = bundle.manifest
        if man.input_name not in inputs or man.output_name not in outputs:
            raise SonotrapError(
                f"model {bundle.model_path} has inputs {inputs} / outputs {outputs} but the manifest "
                f"expects {man.input_name!r} -> {man.output_name!r}; rebuild the bundle"
            )
        self._input = man.input_name
        self._output = man.output_name
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=latency_window)  # seconds per window
        self.calls = 0
        self.windows = 0

    @property
    def labels(self) -> list[str]:
        return self.bundle.labels

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Run the model on a batch; returns float32 ``(N, K)``."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
        t0 = time.perf_counter()
        (probs,) = self.session.run([self._output], {self._input: images})
        elapsed = time.perf_counter() - t0
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != (images.shape[0], len(self.labels)):
            raise SonotrapError(
                f"model {self.bundle.model_path} returned shape {probs.shape}, expected "
                f"({images.shape[0]}, {len(self.labels)}) for its {len(self.labels)} labels; rebuild the bundle"
            )
        with self._lock:
            per_window = elapsed / max(1, images.shape[0])
            self._latencies.extend([per_window] * images.shape[0])
            self.calls += 1
            self.windows += images.shape[0]
        return probs

    def self_test(self) -> np.ndarray:
        """One inference on a silent window: proves the session runs and outputs are sane."""
        from edge.inference.frontend import compute

        fe = self.bundle.frontend
        img = compute(np.zeros(fe.window_samples, dtype=np.float32), fe.sample_rate, fe)
        probs = self.predict(img[None])
        if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
            raise SonotrapError(
                f"model {self.bundle.model_path} gives non-probabilities on silence; rebuild the bundle"
            )
        return probs[0]

    def latency_ms(self) -> dict[str, float | None]:
        """p50/p99 inference time per window (ms) over the recent window of calls."""
        with self._lock:
            lat = np.array(self._latencies, dtype=np.float64)
        if lat.size == 0:
            return {"p50": None, "p99": None}
        return {
            "p50": round(float(np.percentile(lat, 50)) * 1000, 2),
            "p99": round(float(np.percentile(lat, 99)) * 1000, 2),
        }
