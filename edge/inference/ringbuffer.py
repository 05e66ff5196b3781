"""A fixed-size ring buffer of mono samples addressed by absolute sample index.

The daemon appends audio blocks as they arrive and reads windows by the absolute index of
their last sample, so the hop schedule is defined in samples (hop k ends at sample
k * hop_samples) and never drifts with wall-clock jitter. Memory is allocated once; an
append costs O(len(block)) and never reallocates, which matters on a months-long run.
"""

from __future__ import annotations

import numpy as np


class RingBuffer:
    """The newest ``capacity`` samples of an endless stream, plus an absolute sample counter."""

    def __init__(self, capacity: int, dtype: np.dtype | type = np.float32) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, dtype=dtype)
        self._total = 0  # samples ever appended
        self._first = 0  # absolute index of the first sample ever stored here (see resized)

    @property
    def total(self) -> int:
        """Absolute index one past the newest sample (= samples appended so far)."""
        return self._total

    @property
    def oldest(self) -> int:
        """Absolute index of the oldest sample still held."""
        return max(self._first, self._total - self.capacity)

    def __len__(self) -> int:
        return self._total - self.oldest

    def append(self, samples: np.ndarray) -> None:
        """Add samples at the end; the oldest are overwritten once the buffer is full."""
        x = np.asarray(samples, dtype=self._buf.dtype).reshape(-1)
        n = x.shape[0]
        if n == 0:
            return
        if n >= self.capacity:  # only the newest `capacity` samples can survive
            self._total += n - self.capacity
            x = x[-self.capacity :]
            n = self.capacity
        pos = self._total % self.capacity
        first = min(n, self.capacity - pos)
        self._buf[pos : pos + first] = x[:first]
        if first < n:
            self._buf[: n - first] = x[first:]
        self._total += n

    def holds(self, start: int, end: int) -> bool:
        """Whether absolute samples ``[start, end)`` are all still in the buffer."""
        return self.oldest <= start <= end <= self._total

    def read(self, start: int, end: int) -> np.ndarray:
        """A copy of absolute samples ``[start, end)``; raises IndexError if not all held."""
        if not self.holds(start, end):
            raise IndexError(f"samples [{start}, {end}) not held (have [{self.oldest}, {self._total}))")
        n = end - start
        pos = start % self.capacity
        if pos + n <= self.capacity:
            return self._buf[pos : pos + n].copy()
        return np.concatenate((self._buf[pos:], self._buf[: n - (self.capacity - pos)]))

    def read_ending_at(self, end: int, n: int) -> np.ndarray:
        """The ``n`` samples ending at absolute index ``end`` (exclusive)."""
        return self.read(end - n, end)

    def newest(self, n: int) -> np.ndarray:
        """The newest ``n`` samples (fewer if fewer were ever appended)."""
        n = min(n, len(self))
        return self.read(self._total - n, self._total)

    def resized(self, capacity: int) -> RingBuffer:
        """A new buffer of ``capacity`` holding as much of the newest audio as fits, same counter."""
        new = RingBuffer(capacity, self._buf.dtype)
        keep = min(len(self), capacity)
        new._total = new._first = self._total - keep
        new.append(self.newest(keep))
        return new
