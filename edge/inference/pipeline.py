"""The hop schedule shared by ``sonotrap run`` and ``sonotrap analyze``.

Audio samples go into a ring buffer; hop k's window ends at absolute sample
``k * hop_samples`` (schedule in samples, never wall clock). Every complete pending hop is
run through the shared frontend and the classifier, several at once when processing fell
behind, and its scores go to the detector. Both commands therefore produce the same
detections for the same audio. Between frontend and classifier, :mod:`edge.inference.gate`
decides per hop whether the model runs at all; a gated hop gets all-zero scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge.config import GateConfig
from edge.contracts import ModelRuntime
from edge.inference.detector import DetectionEvent, Detector
from edge.inference.frontend import analyse, image_of
from edge.inference.gate import ACTIVE, Gate
from edge.inference.ringbuffer import RingBuffer


@dataclass
class HopResult:
    hop: int  # hop index k
    sample_end: int  # absolute sample index where the window ends (exclusive) = k * hop_samples
    t_start: float  # times from the pipeline's clock (epoch in the daemon, file seconds in analyze)
    t_end: float
    scores: np.ndarray  # (K,) probabilities
    events: list[DetectionEvent] = field(default_factory=list)
    model_version: str = ""
    gated: bool = False  # the model did not run on this hop (quiet or inactive): scores are 0


class HopPipeline:
    """Ring buffer + hop schedule + frontend + classifier + detector."""

    def __init__(
        self,
        classifier: ModelRuntime,
        detector: Detector,
        sample_rate: int,
        hop_s: float,
        max_batch: int = 8,
        time_of: Callable[[int], float] | None = None,
        slack_s: float = 2.0,
        gate: GateConfig | None = None,
    ) -> None:
        self.sample_rate = int(sample_rate)
        self.hop_samples = max(1, int(round(hop_s * self.sample_rate)))
        self.hop_s = self.hop_samples / self.sample_rate
        self.max_batch = max_batch
        self.slack_s = slack_s
        self.time_of = time_of or (lambda s: s / self.sample_rate)
        self.classifier = classifier
        self.detector = detector
        self.gate_cfg = gate or GateConfig()
        self.gate = Gate(self.gate_cfg, classifier.bundle.frontend, self.hop_s)
        self.window_samples = 0
        self.ring: RingBuffer  # sized by _set_window (again when a swapped model has another window)
        self.next_hop = 0
        self.processed = 0  # hops through the pipeline (gated or not)
        self.skipped = 0  # hops lost because processing fell behind
        self.gated = 0  # hops that skipped the model (see edge.inference.gate)
        self._set_window()
        self.next_hop = self.first_hop

    @property
    def first_hop(self) -> int:
        """The first hop whose window lies entirely in the stream (ends at or after one window)."""
        return math.ceil(self.window_samples / self.hop_samples)

    def _set_window(self) -> None:
        fe = self.classifier.bundle.frontend
        if self.gate.fe != fe:  # a swapped model with another frontend: its own noise floor
            self.gate = Gate(self.gate_cfg, fe, self.hop_s)
        self.window_samples = int(round(fe.window_s * self.sample_rate))
        capacity = self.window_samples + (self.max_batch + 1) * self.hop_samples + int(self.slack_s * self.sample_rate)
        old: RingBuffer | None = getattr(self, "ring", None)
        self.ring = RingBuffer(capacity) if old is None else old.resized(capacity)

    @property
    def total(self) -> int:
        return self.ring.total

    def append(self, samples: np.ndarray) -> None:
        self.ring.append(samples)

    def pending(self) -> int:
        """Complete hops not processed yet."""
        return max(0, self.ring.total // self.hop_samples - self.next_hop + 1)

    def swap(self, classifier: ModelRuntime, detector: Detector) -> list[DetectionEvent]:
        """Switch model between two hops; returns events the old detector ended (if replaced)."""
        ended: list[DetectionEvent] = []
        if detector is not self.detector:
            ended = self.detector.flush()
        self.classifier = classifier
        self.detector = detector
        old_window = self.window_samples
        self._set_window()
        if self.window_samples != old_window:
            self.next_hop = max(self.next_hop, self.first_hop)
        return ended

    def step(self, max_batch: int | None = None) -> list[HopResult]:
        """Process up to ``max_batch`` pending hops as one batch (oldest first)."""
        n = min(self.pending(), max_batch or self.max_batch)
        if n <= 0:
            return []
        # Hops whose window was already overwritten (fell too far behind) are skipped, counted.
        while n > 0 and not self.ring.holds(self.next_hop * self.hop_samples - self.window_samples, self.next_hop * self.hop_samples):
            self.next_hop += 1
            self.skipped += 1
            n = min(self.pending(), max_batch or self.max_batch)
        if n <= 0:
            return []
        hops = list(range(self.next_hop, self.next_hop + n))
        return self._run(hops, [self.ring.read_ending_at(k * self.hop_samples, self.window_samples) for k in hops])

    def finish_short(self) -> list[HopResult]:
        """For a stream shorter than one window: classify what there is once (zero-padded)."""
        if self.processed or self.ring.total == 0 or self.ring.total >= self.window_samples:
            return []
        audio = np.zeros(self.window_samples, dtype=np.float32)
        audio[: self.ring.total] = self.ring.newest(self.ring.total)
        return self._run([self.first_hop], [audio], span=(0, self.ring.total))

    def _run(
        self, hops: list[int], windows: list[np.ndarray], span: tuple[int, int] | None = None
    ) -> list[HopResult]:
        fe = self.classifier.bundle.frontend
        mels = [analyse(w, self.sample_rate, fe) for w in windows]
        run = [self.gate.decide(m) == ACTIVE for m in mels]
        probs: np.ndarray = np.zeros((len(hops), len(self.classifier.bundle.labels)), dtype=np.float32)
        if any(run):
            probs[np.flatnonzero(run)] = self.classifier.predict(
                np.stack([image_of(m, fe) for m, r in zip(mels, run, strict=True) if r]))
        version = self.classifier.bundle.version
        out = []
        for k, scores, ran in zip(hops, probs, run, strict=True):
            start, end = span or (k * self.hop_samples - self.window_samples, k * self.hop_samples)
            t_start, t_end = self.time_of(start), self.time_of(end)
            events = self.detector.update(k, t_start, t_end, scores)
            out.append(HopResult(k, end, t_start, t_end, scores, events, version, gated=not ran))
        self.next_hop = hops[-1] + 1
        self.processed += len(hops)
        self.gated += len(run) - sum(run)
        return out

    def flush(self) -> list[DetectionEvent]:
        return self.detector.flush()
