"""What every audio source shares: the block type, the bounded queue, counters, the silence watchdog.

A source's producer (PortAudio callback, stdin reader thread) only appends to a bounded
queue; everything that may take time — silence analysis, event reporting, logging — happens
on the consumer side in :meth:`AudioSource.read`, so the audio callback never blocks.
Lost audio is always counted: ``overflows`` (PortAudio status flags) and ``queue_drops``
(blocks the consumer did not take in time), reported in :meth:`AudioSource.stats` and via
``on_event("overflow", ...)``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.config import AudioConfig
from edge.errors import SonotrapError

log = logging.getLogger("sonotrap.audio")

EventSink = Callable[[str, dict], None]

OVERFLOW_REPORT_INTERVAL_S = 10.0  # at most one "overflow" event per this many seconds
_END = object()  # queue sentinel: the producer has finished


@dataclass
class AudioBlock:
    """A run of consecutive samples of the selected channel."""

    samples: np.ndarray  # float32 mono, shape (n,)
    sample_rate: int  # rate of `samples` (device/file/stdin rate; the frontend resamples windows)
    start_time: float  # wall-clock epoch seconds of the first sample
    received: float  # time.monotonic() when the block entered the process

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def end_time(self) -> float:
        return self.start_time + self.duration


class SilenceWatch:
    """Dead-input watchdog: how long the input has been digital silence or a constant value.

    A disconnected or muted ADC often yields exact zeros or a fixed DC value; real audio,
    even a quiet night, never holds one value for seconds.
    """

    EPS = 1e-7  # far below one 24-bit LSB

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.silent_samples = 0
        self.sample_rate = 1
        self._value: float | None = None
        self.reported = False

    @property
    def silent_for_s(self) -> float:
        return self.silent_samples / self.sample_rate

    def update(self, samples: np.ndarray, sample_rate: int) -> str | None:
        """Feed one block; returns "silence" when the timeout is crossed, "silence_ended" after."""
        if len(samples) == 0:
            return None
        self.sample_rate = sample_rate
        lo, hi = float(samples.min()), float(samples.max())
        if hi - lo <= self.EPS:
            if self._value is not None and abs(lo - self._value) <= self.EPS:
                self.silent_samples += len(samples)
            else:
                self._value = lo
                self.silent_samples = len(samples)
            if self.timeout_s > 0 and not self.reported and self.silent_for_s >= self.timeout_s:
                self.reported = True
                return "silence"
            return None
        self._value = None
        self.silent_samples = 0
        if self.reported:
            self.reported = False
            return "silence_ended"
        return None


def queue_blocks(cfg: AudioConfig) -> int:
    """Queue length in blocks for ``cfg.queue_s`` seconds of audio."""
    return max(2, math.ceil(cfg.queue_s / cfg.block_s))


class AudioSource:
    """Base class: producer side ``_offer``/``_finish``, consumer side ``read``/``stats``."""

    kind = "audio"

    def __init__(self, cfg: AudioConfig, sample_rate: int, on_event: EventSink | None = None):
        self.cfg = cfg
        self.sample_rate = int(sample_rate)
        self.finished = False
        self._on_event = on_event
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_blocks(cfg))
        self._stop = threading.Event()
        self._error: SonotrapError | None = None
        self._state = "stopped"
        self._device = ""
        self.overflows = 0
        self.queue_drops = 0
        self.dropped_samples = 0
        self.retries = 0
        self.blocks = 0
        self.samples = 0
        self._silence = SilenceWatch(cfg.silence_timeout_s)
        self._reported = (0, 0)
        self._last_report = -math.inf

    # ------------------------------------------------------------ producer side

    def _offer(self, block: AudioBlock) -> bool:
        """Append without blocking; a full queue drops the block and counts it."""
        try:
            self._queue.put_nowait(block)
            return True
        except queue.Full:
            self.queue_drops += 1
            self.dropped_samples += len(block.samples)
            return False

    def _finish(self, error: SonotrapError | None = None) -> None:
        """End of stream (optionally with an error to raise after the queued audio)."""
        if error is not None and self._error is None:
            self._error = error
        while not self._stop.is_set():
            try:
                self._queue.put(_END, timeout=0.2)
                return
            except queue.Full:
                continue

    # ------------------------------------------------------------ consumer side

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        self._state = "stopped"

    def read(self, timeout: float) -> AudioBlock | None:
        """Next block, or None on timeout / at the end; raises the source's fatal error."""
        if self.finished:
            if self._error is not None:
                raise self._error
            return None
        try:
            item = self._queue.get(timeout=max(0.0, timeout) if self._error is None else 0)
        except queue.Empty:
            if self._error is not None:
                self._fail()
            self._report_overflows()
            return None
        if item is _END:
            self.finished = True
            if self._state not in ("stopped", "error"):
                self._state = "finished"
            if self._error is not None:
                self._fail()
            return None
        self._accept(item)
        return item

    def _fail(self) -> None:
        assert self._error is not None
        self.finished = True
        self._state = "error"
        self._emit("audio_error", {"error": str(self._error), "fatal": True})
        raise self._error

    def _accept(self, block: AudioBlock) -> None:
        self.blocks += 1
        self.samples += len(block.samples)
        change = self._silence.update(block.samples, block.sample_rate)
        if change == "silence":
            log.warning("audio input %s has been silent/constant for %.0f s (dead microphone?)",
                        self._device, self._silence.silent_for_s)
            self._emit("silence", {"device": self._device, "silent_for_s": round(self._silence.silent_for_s, 1)})
        elif change == "silence_ended":
            log.info("audio input %s is live again", self._device)
            self._emit("silence_ended", {"device": self._device})
        self._report_overflows()

    def _report_overflows(self) -> None:
        now = time.monotonic()
        counts = (self.overflows, self.queue_drops)
        if counts == self._reported or now - self._last_report < OVERFLOW_REPORT_INTERVAL_S:
            return
        new = (counts[0] - self._reported[0], counts[1] - self._reported[1])
        self._reported, self._last_report = counts, now
        log.warning("audio lost: %d new input overflows, %d new queue drops (totals %d, %d)",
                    new[0], new[1], counts[0], counts[1])
        self._emit("overflow", {"device": self._device, "overflows": counts[0], "queue_drops": counts[1],
                                "new_overflows": new[0], "new_queue_drops": new[1],
                                "dropped_samples": self.dropped_samples})

    def _emit(self, kind: str, data: dict) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, data)
        except Exception:  # the daemon's reporting must never take the audio down
            log.exception("audio event handler failed for %s", kind)

    def stats(self) -> dict:
        return {
            "state": self._state,
            "device": self._device,
            "source": self.kind,
            "sample_rate": self.sample_rate,
            "overflows": self.overflows,
            "queue_drops": self.queue_drops,
            "dropped_samples": self.dropped_samples,
            "queue_depth": self._queue.qsize(),
            "silent_for_s": round(self._silence.silent_for_s, 3),
            "retries": self.retries,
            "blocks": self.blocks,
            "samples": self.samples,
            "error": str(self._error) if self._error else None,
        }
