"""Pseudo labels (Zhong et al. 2020): confident scores fill unknown label entries.

Validation-style data (weak labels) leaves most (window, class) entries unknown. After a round
of training the model scores every training window; an UNKNOWN entry scored ``>= high``
becomes present and one scored ``<= low`` absent, for the next round's training only.
Known entries never change, and every round decides afresh from the original labels with
the newest model, so one round's mistake is not locked in. Validation and test windows keep
their original labels, so the rounds' metrics compare like with like.

This module holds the labels themselves (assign, check, merge, save, load) and needs no
torch, so the torch Dataset can merge them in; :mod:`trainer.pseudo_rounds` drives the
rounds of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import SonotrapError
from trainer.windows import Window

PSEUDO_FILE = "pseudo_labels.npz"


@dataclass
class PseudoLabels:
    """The entries a round assigned: ``known`` marks them, ``targets`` holds their 0/1."""

    targets: np.ndarray  # (N, K) float32
    known: np.ndarray  # (N, K) bool, True only where a pseudo label was assigned
    unknown_before: int
    added_present: int
    added_absent: int

    def counts(self) -> dict[str, int]:
        return {"unknown_before": self.unknown_before, "added_present": self.added_present,
                "added_absent": self.added_absent}


def implausible(labels: PseudoLabels, targets: np.ndarray, known: np.ndarray, factor: float = 3.0) -> str | None:
    """Why these pseudo labels look degenerate, or None.

    A model trained almost only on positives (review exports without rejected hits) scores
    nearly every class high; its pseudo labels then declare dozens of species present in every
    window and the next round learns that. Caught by comparing present labels per window:
    validated + pseudo against validated alone.
    """
    n = max(len(targets), 1)
    validated = float((np.asarray(targets) * np.asarray(known)).sum()) / n
    after = validated + labels.added_present / n
    if labels.added_present and after > factor * max(validated, 1.0):
        return (f"pseudo labels put {after:.1f} present labels in each window where the validated labels "
                f"have {validated:.1f}: the model scores most classes high (too few validated-absent "
                "examples?); raise --pseudo-high or add rejected detections to the export")
    return None


def pseudo_label(
    probs: np.ndarray, targets: np.ndarray, known: np.ndarray, high: float = 0.9, low: float = 0.1,
) -> PseudoLabels:
    """Unknown entries with ``probs >= high`` -> present, ``<= low`` -> absent; the rest stay unknown."""
    check_bounds(high, low)
    probs = np.asarray(probs, dtype=np.float64)
    unknown = ~np.asarray(known, dtype=bool)
    if probs.shape != unknown.shape or np.asarray(targets).shape != unknown.shape:
        raise SonotrapError(f"scores {probs.shape} and labels {unknown.shape} differ in shape")
    present = unknown & (probs >= high)
    absent = unknown & (probs <= low)
    return PseudoLabels(present.astype(np.float32), present | absent, int(unknown.sum()),
                        int(present.sum()), int(absent.sum()))


def check_bounds(high: float, low: float) -> None:
    if not 0.0 <= low < high <= 1.0:
        raise SonotrapError(f"pseudo-label bounds low={low}, high={high} must satisfy 0 <= low < high <= 1; "
                            "pass e.g. --pseudo-low 0.1 --pseudo-high 0.9")


def merge(targets: np.ndarray, known: np.ndarray, p_targets: np.ndarray, p_known: np.ndarray):
    """Labels with pseudo entries filled into the unknown ones (known entries win)."""
    fill = p_known & ~known
    return np.where(fill, p_targets, targets).astype(np.float32), known | fill


def _keys(windows: list[Window]) -> np.ndarray:
    return np.array([f"{w.file}|{w.start_s:.6f}" for w in windows])


def save_pseudo(run_dir: Path, labels: PseudoLabels, windows: list[Window], label_names: list[str]) -> Path:
    path = Path(run_dir) / PSEUDO_FILE
    np.savez_compressed(path, targets=labels.targets, known=labels.known, windows=_keys(windows),
                        labels=np.array(label_names))
    return path


def load_pseudo(run_dir: Path, windows: list[Window], label_names: list[str]):
    """``(targets, known)`` of ``run_dir``'s pseudo labels, or None when the run has none."""
    path = Path(run_dir) / PSEUDO_FILE
    if not path.is_file():
        return None
    with np.load(path) as z:
        if list(z["labels"]) != list(label_names) or not np.array_equal(z["windows"], _keys(windows)):
            raise SonotrapError(f"{path} was made for other windows or labels than {run_dir}; "
                                "delete it and rerun the pseudo-label round")
        return z["targets"].astype(np.float32), z["known"].astype(bool)
