"""The learning-rate schedule (warm-up, then cosine) and the time budget it can follow.

Kept apart from the training procedure because both are pure arithmetic on steps and
seconds, and a budget-limited run must anneal exactly as the schedule promises (tested).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Budget:
    """The ``--max-minutes`` time budget, counted across resumes."""

    seconds: float  # math.inf without a budget
    used_before: float  # seconds used by earlier sessions of this run
    started: float  # time.monotonic() when this session started

    def used(self) -> float:
        return self.used_before + time.monotonic() - self.started

    def exhausted(self) -> bool:
        return self.used() > self.seconds

    def fraction(self) -> Callable[[], float] | None:
        """Share of the budget used, for the LR schedule; the last ~6% is kept for validation and
        finalising, so the cosine ends before it. None without a budget."""
        if not math.isfinite(self.seconds):
            return None
        return lambda: self.used() / (0.94 * self.seconds)


def lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float,
              time_fraction: Callable[[], float] | None = None) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine down to ``min_ratio``.

    With a time budget, ``time_fraction()`` (share of the budget used) advances the cosine
    when it is ahead of the step count, so a budget-limited run still anneals fully.
    """
    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if time_fraction is not None:
            t = max(t, time_fraction())
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f
