"""Speed-changed copies of the labelled windows, as extra rows for the linear head.

Why: stage 1 learnt BirdNET's embedding from the train recordings' audio, so the frozen
student's features of those windows are better than of any recording it has not heard, and a
head fitted only on them is fitted on features the field never gives it. A copy of each
labelled window, its recording played 5-16 % faster or slower (pitch and tempo together, as
stage 1's copies of the unlabeled recordings), is audio the student never heard and keeps the
window's labels; fitted on the windows and their copies, the head sees both kinds of feature.
Measured on nips4bplus in docs/training.md. The copies are training rows only: every figure
(out-of-fold, validation) is still scored on the windows themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from trainer.rundata import RunData, image_chunks
from trainer.teacher_cache import speed_rate


def copy_rates(files: list[str], copy: int, seed: int = 0) -> dict[str, float]:
    """Recording -> playback rate of copy number ``copy`` (1, 2, ...): one rate per recording, seeded."""
    rng = np.random.default_rng([seed, copy])
    return {f: speed_rate(rng) for f in sorted(set(files))}


class _Cut(NamedTuple):
    file: str
    start_s: float  # on the time line of the recording played ``rate`` times faster
    rate: float


def copy_images(run: RunData, windows, rates: dict[str, float], chunk: int = 256) -> Iterator[np.ndarray]:
    """Frontend images (float32) of ``windows`` cut from their recordings played at ``rates``.

    Each copy window keeps the original window's centre, so the call it was labelled for stays
    in it; it covers ``rate`` times the original's stretch of the recording.
    """
    half = run.frontend.window_s / 2
    cuts = [_Cut(w.file, max(0.0, (w.start_s + half) / rates[w.file] - half), rates[w.file]) for w in windows]
    return image_chunks(run.root, cuts, run.frontend, chunk)


def copy_image_chunks(run: RunData, copies: int, seed: int = 0,
                      splits: tuple[str, ...] = ("train", "val")) -> list[Iterator[np.ndarray]]:
    """Per copy, its image chunks, rows in the order of ``splits``' windows (the head's rows)."""
    windows = [w for s in splits for w in run.windows(s)]
    files = [w.file for w in windows]
    return [copy_images(run, windows, copy_rates(files, n, seed)) for n in range(1, copies + 1)]


def stack_copies(x: np.ndarray, targets: np.ndarray, known: np.ndarray, rows, copies: list[np.ndarray]):
    """The labelled rows and, under them, each copy's rows ``rows`` with the same targets."""
    if not copies:
        return x, targets, known
    if rows is None:
        raise ValueError("the copies of labelled rows need the rows' indices (rows=)")
    n = 1 + len(copies)
    return (np.concatenate([x, *(cp[rows] for cp in copies)]), np.tile(targets, (n, 1)), np.tile(known, (n, 1)))


def with_copies(fit, copies: list[np.ndarray]):
    """``fit`` that also learns from the copies of the labelled rows it is given (``rows``)."""
    if not copies:
        return fit

    def fit_with_copies(x, targets, known, c, seed=0, rows=None):
        return fit(*stack_copies(x, targets, known, rows, copies), c, seed)

    return fit_with_copies
