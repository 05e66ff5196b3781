"""Multi-label metrics in numpy (no sklearn, no torch), masked by the ``known`` matrix.

Per class, only windows where that class's label is known count. Average
precision is the step-wise (non-interpolated) area as in scikit-learn; ROC-AUC is the
Mann-Whitney statistic with tied scores counted half. A class without a known positive or
without a known negative has undefined AP/AUC (NaN) and is left out of macro averages.
Thresholds: the lowest threshold reaching the target precision (most recall), falling back
to the best-F1 threshold when no threshold reaches it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import rankdata


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Probabilities from logits (a linear head's scores), without overflow warnings."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def pr_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) at each distinct score, thresholds descending."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1] if len(s) else np.array([], int)
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    n_pos = max(int(y.sum()), 1)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / n_pos
    return precision, recall, s[last]


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    y = np.asarray(y, dtype=bool)
    if y.sum() == 0:
        return math.nan
    precision, recall, _ = pr_curve(y, s)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(np.asarray(s, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def f1_at(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(precision, recall, F1) when predicting ``s >= threshold``."""
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(s) >= threshold
    tp = int((pred & y).sum())
    p = tp / max(int(pred.sum()), 1)
    r = tp / max(int(y.sum()), 1)
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


@dataclass
class Threshold:
    threshold: float
    precision: float
    recall: float
    f1: float
    method: str  # "target_precision" | "best_f1" | "no_positives"


def choose_threshold(y: np.ndarray, s: np.ndarray, target_precision: float = 0.9) -> Threshold:
    y = np.asarray(y, dtype=bool)
    if y.sum() == 0:
        return Threshold(1.0, 0.0, 0.0, 0.0, "no_positives")
    precision, recall, thr = pr_curve(y, s)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    ok = np.flatnonzero(precision >= target_precision)
    if ok.size:
        i = int(ok[np.argmax(recall[ok])])  # most recall among thresholds meeting the precision
        method = "target_precision"
    else:
        i = int(np.argmax(f1))
        method = "best_f1"
    return Threshold(float(thr[i]), float(precision[i]), float(recall[i]), float(f1[i]), method)


def _nanmean(xs: list[float]) -> float:
    v = [x for x in xs if not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def evaluate_scores(
    probs: np.ndarray, targets: np.ndarray, known: np.ndarray, labels: list[str],
    thresholds: dict[str, float] | None = None,
) -> dict:
    """Per-class and macro AP / ROC-AUC / F1 (F1 at ``thresholds``, default 0.5)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets) > 0.5
    known = np.asarray(known, dtype=bool)
    per_class: dict[str, dict] = {}
    for k, lab in enumerate(labels):
        m = known[:, k]
        y, s = targets[m, k], probs[m, k]
        thr = (thresholds or {}).get(lab, 0.5)
        p, r, f1 = f1_at(y, s, thr)
        n_pos = int(y.sum())
        # Without a known negative precision is 1 at every step whatever the scores: undefined.
        ap = average_precision(y, s) if n_pos < len(y) else math.nan
        per_class[lab] = {
            "ap": ap, "roc_auc": roc_auc(y, s), "f1": f1 if n_pos else math.nan,
            "precision": p, "recall": r, "threshold": thr, "n_pos": n_pos, "n_known": int(m.sum()),
        }
    aps = [c["ap"] for c in per_class.values()]
    aucs = [c["roc_auc"] for c in per_class.values()]
    f1s = [c["f1"] for c in per_class.values()]
    m = known.ravel()
    return {
        "macro_ap": _nanmean(aps),
        "macro_roc_auc": _nanmean(aucs),
        "macro_f1": _nanmean(f1s),
        "micro_ap": average_precision(targets.ravel()[m], probs.ravel()[m]) if m.any() else math.nan,
        "classes_scored": sum(not math.isnan(a) for a in aps),
        "num_windows": int(len(probs)),
        "known_fraction": float(known.mean()) if known.size else math.nan,
        "per_class": per_class,
    }


def choose_thresholds(
    probs: np.ndarray, targets: np.ndarray, known: np.ndarray, labels: list[str], target_precision: float = 0.9
) -> dict[str, Threshold]:
    targets = np.asarray(targets) > 0.5
    known = np.asarray(known, dtype=bool)
    return {
        lab: choose_threshold(targets[known[:, k], k], probs[known[:, k], k], target_precision)
        for k, lab in enumerate(labels)
    }


def threshold_dicts(th: dict[str, Threshold]) -> dict[str, dict]:
    return {k: asdict(v) for k, v in th.items()}


def _macro_ap_on(probs: np.ndarray, targets: np.ndarray, known: np.ndarray, rows: np.ndarray,
                 labels: np.ndarray) -> float:
    aps = [average_precision(targets[rows[known[rows, k]], k], probs[rows[known[rows, k]], k]) for k in labels]
    return float(np.mean(aps))


def paired_bootstrap_macro_ap(probs_a: np.ndarray, probs_b: np.ndarray, targets: np.ndarray, known: np.ndarray,
                              files: list[str], replicates: int = 1000, seed: int = 0) -> dict[str, float]:
    """Window macro-AP of model A minus model B, with a by-recording bootstrap interval.

    Why: a test split holds few recordings per call type, so a difference of a few hundredths
    between two models may be one that another draw of recordings reverses. Windows of one
    recording are not independent, so whole recordings are resampled with replacement; both
    models are scored on the same draw, over the labels that draw gives a known positive and a
    known negative (so a replicate never compares the two on different labels). Returns the
    observed ``diff``, the 2.5 % / 97.5 % percentiles ``low`` / ``high``, and ``a_better``, the
    share of replicates where A scores higher.
    """
    y = np.asarray(targets) > 0.5
    kn = np.asarray(known, dtype=bool)
    a, b = np.asarray(probs_a, np.float64), np.asarray(probs_b, np.float64)
    names = sorted(set(files))
    index = {f: i for i, f in enumerate(names)}
    rec = np.array([index[f] for f in files])
    rows_of = [np.flatnonzero(rec == i) for i in range(len(names))]

    def diff(rows: np.ndarray) -> float:
        pos = (y[rows] & kn[rows]).any(axis=0)
        neg = (~y[rows] & kn[rows]).any(axis=0)
        labels = np.flatnonzero(pos & neg)
        if not len(labels):
            return math.nan
        return _macro_ap_on(a, y, kn, rows, labels) - _macro_ap_on(b, y, kn, rows, labels)

    observed = diff(np.arange(len(files)))
    rng = np.random.default_rng(seed)
    draws = np.array([diff(np.concatenate([rows_of[i] for i in rng.integers(0, len(names), len(names))]))
                      for _ in range(replicates)])
    draws = draws[~np.isnan(draws)]
    return {"diff": observed, "low": float(np.percentile(draws, 2.5)), "high": float(np.percentile(draws, 97.5)),
            "a_better": float(np.mean(draws > 0)), "replicates": int(len(draws))}
