"""Per-label thresholds that hold on new recordings, and which labels to ship disabled.

Picking "the lowest threshold whose validation precision reaches 0.9" fits the threshold to
a handful of windows: with a few positives from one or two recordings some threshold always
reaches 0.9 by chance, and in the field the label then reports mostly noise. Here the
precision at each candidate threshold is judged by its lower bound over a bootstrap that
resamples whole validation RECORDINGS (windows of one recording are not independent), and
every replicate counts one unseen false alarm (precision = TP / (TP + FP + 1)), so a
threshold backed by three hits cannot claim 0.9. The chosen threshold is the lowest (most
recall) whose lower bound reaches the target. A label is disabled when no threshold does, or
when validation holds too few positives to say; it keeps its best-F1 threshold and its
measured precision so an operator who enables it knows what to expect.

Pure numpy; inputs are per-window scores, 0/1 truth and a recording id per window.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

MIN_POSITIVES = 5  # validation positive windows a label needs before its precision can be judged
MIN_POSITIVE_RECORDINGS = 2
# Manifest thresholds lie strictly inside (0, 1); the floor keeps a disabled label that an
# operator enables from firing on every window.
THRESHOLD_RANGE = (0.1, 0.99)


@dataclass
class OperatingPoint:
    threshold: float
    enabled: bool
    expected_precision: float | None  # validation precision at the threshold (point estimate)
    expected_recall: float | None  # validation window recall at the threshold
    precision_lower: float | None  # bootstrap lower bound at the threshold
    positives: int
    positive_recordings: int
    reason: str | None = None  # why disabled

    def to_dict(self) -> dict:
        return asdict(self)


def _clip(t: float) -> float:
    return float(min(max(t, THRESHOLD_RANGE[0]), THRESHOLD_RANGE[1]))


def _best_f1(scores: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(threshold, precision, recall) at the best-F1 cut; (0.5, nan, nan) without positives."""
    if not y.any():
        return 0.5, math.nan, math.nan
    order = np.argsort(-scores, kind="mergesort")
    s, yy = scores[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.cumsum(yy)[last]
    p, r = tp / (last + 1), tp / y.sum()
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0)
    i = int(np.argmax(f1))
    return float(s[last[i]]), float(p[i]), float(r[i])


def estimate(
    scores: np.ndarray, positive: np.ndarray, groups: np.ndarray, target_precision: float = 0.9, *,
    n_boot: int = 200, quantile: float = 0.1, min_positives: int = MIN_POSITIVES,
    min_positive_recordings: int = MIN_POSITIVE_RECORDINGS, seed: int = 0,
) -> OperatingPoint:
    """The operating point of one label from validation windows grouped by recording."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    n_pos, pos_recs = int(y.sum()), len(np.unique(g[y]))
    thr_f1, p_f1, r_f1 = _best_f1(s, y)
    fallback = OperatingPoint(_clip(thr_f1), False, _nan_none(p_f1), _nan_none(r_f1), None, n_pos, pos_recs)
    if n_pos < min_positives or pos_recs < min_positive_recordings:
        fallback.reason = (f"too few validation positives to judge ({n_pos} windows in {pos_recs} recordings; "
                           f"needs {min_positives} in {min_positive_recordings})")
        return fallback
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted, g_sorted = s[order], y[order], g[order]
    cuts = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), len(s_sorted) - 1]  # last index of each distinct score
    rng = np.random.default_rng(seed)
    n_groups = int(g.max()) + 1
    # Bootstrap weights: how often each recording is drawn; a window weighs as its recording.
    w = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(np.float64)
    wi = w[:, g_sorted]  # (B, N)
    tp = np.cumsum(wi * y_sorted[None, :], axis=1)[:, cuts]
    fired = np.cumsum(wi, axis=1)[:, cuts]
    # One unseen false alarm per replicate; a replicate where nothing fires says nothing.
    prec = np.where(fired > 0, tp / (fired + 1.0), np.nan)
    defined = np.isfinite(prec).sum(axis=0)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lower = np.nanquantile(prec, quantile, axis=0)
    lower = np.where(defined >= n_boot // 2, lower, 0.0)
    point_tp = np.cumsum(y_sorted)[cuts]
    point_p = point_tp / (cuts + 1)
    point_r = point_tp / n_pos
    ok = np.flatnonzero(lower >= target_precision)
    if ok.size == 0:
        best = int(np.argmax(lower))
        fallback.precision_lower = float(lower[best])
        fallback.reason = (f"precision cannot reach {target_precision:.2f} on new recordings "
                           f"(best lower bound {lower[best]:.2f}; validation precision at best F1 "
                           f"{_fmt(p_f1)})")
        return fallback
    i = int(ok[-1])  # lowest qualifying threshold: most recall
    return OperatingPoint(_clip(float(s_sorted[cuts[i]])), True, float(point_p[i]), float(point_r[i]),
                          float(lower[i]), n_pos, pos_recs)


def estimate_all(
    scores: np.ndarray, targets: np.ndarray, groups: np.ndarray, labels: list[str],
    target_precision: float = 0.9, known: np.ndarray | None = None, **kwargs,
) -> dict[str, OperatingPoint]:
    """:func:`estimate` for every column of ``scores`` (``known`` masks unlabelled entries)."""
    scores, targets = np.asarray(scores), np.asarray(targets) > 0.5
    groups = np.asarray(groups)
    out = {}
    for k, lab in enumerate(labels):
        m = np.ones(len(scores), bool) if known is None else np.asarray(known[:, k], bool)
        out[lab] = estimate(scores[m, k], targets[m, k], groups[m], target_precision, **kwargs)
    return out


def _nan_none(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _fmt(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.2f}"
