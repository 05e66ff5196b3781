"""Recording-level scores: per recording and label, the max (or top-2 mean) window score.

Weak labels come per recording or per detection, and presence/absence surveys ask
"was species X heard in this recording?"; the natural answer is the best window's score.
``top2mean`` (mean of the two best windows) is less swayed by one spurious window. Scores
are fed hop by hop, so memory stays O(labels) for recordings of any length. numpy only.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from edge.errors import SonotrapError

AGGREGATIONS = ("max", "top2mean")


class RecordingScores:
    """Running top-2 of each label's window scores for one recording."""

    def __init__(self, num_labels: int) -> None:
        self.best = np.full(num_labels, -np.inf, dtype=np.float64)
        self.second = np.full(num_labels, -np.inf, dtype=np.float64)
        self.windows = 0

    def add(self, scores: np.ndarray) -> None:
        """One window's (K,) scores, or a batch (N, K)."""
        s = np.asarray(scores, dtype=np.float64)
        for row in s.reshape(-1, self.best.shape[0]):
            higher = row > self.best
            self.second = np.where(higher, self.best, np.maximum(self.second, row))
            self.best = np.where(higher, row, self.best)
            self.windows += 1

    def result(self, agg: str = "max") -> np.ndarray:
        """(K,) recording scores; NaN when no window was scored. One window: top2mean = max."""
        if agg not in AGGREGATIONS:
            raise SonotrapError(f"--recording-agg {agg!r} is not one of {', '.join(AGGREGATIONS)}")
        if self.windows == 0:
            return np.full(self.best.shape, np.nan)
        if agg == "max" or self.windows == 1:
            return self.best.copy()
        return (self.best + self.second) / 2


def aggregate(window_scores: np.ndarray, agg: str = "max") -> np.ndarray:
    """Recording score of an (N, K) window-score matrix (the batch form of :class:`RecordingScores`)."""
    s = np.asarray(window_scores, dtype=np.float64)
    acc = RecordingScores(s.shape[1])
    acc.add(s)
    return acc.result(agg)


def open_recording_scores(path: str | Path) -> TextIO:
    """Open the CSV for writing before any audio is analysed, so a bad path fails first."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("w", newline="", encoding="utf-8")
    except OSError as err:
        raise SonotrapError(f"cannot write recording scores to {path} ({err.strerror or err}); "
                            "pass a writable --recording-scores PATH") from None


def write_recording_scores(
    fh: TextIO, labels: Sequence[str], rows: Sequence[tuple[str, np.ndarray]],
) -> None:
    """CSV ``recording,<label1>,<label2>,...``: one row per recording, scores to 4 decimals."""
    w = csv.writer(fh)
    w.writerow(["recording", *labels])
    for name, scores in rows:
        w.writerow([name, *("" if np.isnan(v) else f"{v:.4f}" for v in scores)])
