"""Known answers for trainer.metrics, worked out by hand in the comments.

Scores are listed in descending order where possible so the precision/recall steps can be
read straight off the arrays.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer import metrics
from trainer.metrics import (
    average_precision,
    choose_threshold,
    choose_thresholds,
    evaluate_scores,
    f1_at,
    pr_curve,
    roc_auc,
)

Y4 = np.array([1, 0, 1, 0])
S4 = np.array([0.9, 0.8, 0.7, 0.1])


# --- average precision ----------------------------------------------------------------------

def test_average_precision_step_area():
    # thr 0.9: P 1/1, R 1/2 | thr 0.8: P 1/2, R 1/2 | thr 0.7: P 2/3, R 2/2 | thr 0.1: P 2/4, R 1
    # AP = sum (R_i - R_{i-1}) * P_i = 1/2 * 1 + 0 * 1/2 + 1/2 * 2/3 + 0 * 1/2 = 1/2 + 1/3 = 5/6
    assert average_precision(Y4, S4) == pytest.approx(5 / 6)


def test_average_precision_with_tied_scores():
    # Tied scores form one threshold: thr 0.5 takes both (1 pos, 1 neg): P 1/2, R 1/2;
    # thr 0.2: P 2/3, R 1.  AP = 1/2 * 1/2 + 1/2 * 2/3 = 1/4 + 1/3 = 7/12.
    assert average_precision(np.array([1, 0, 1]), np.array([0.5, 0.5, 0.2])) == pytest.approx(7 / 12)
    # The order of tied items does not matter.
    assert average_precision(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.2])) == pytest.approx(7 / 12)


def test_average_precision_perfect_worst_and_undefined():
    # Perfect ranking: precision 1 at every recall step -> 1.
    assert average_precision(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.2, 0.1])) == 1.0
    # Worst ranking: positives last. thr .3: P 1/3, R 1/2; thr .1: P 2/4, R 1 -> 1/6 + 1/4 = 5/12.
    assert average_precision(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.3, 0.1])) == pytest.approx(5 / 12)
    # No positive: undefined.
    assert math.isnan(average_precision(np.array([0, 0]), np.array([0.3, 0.2])))


def test_pr_curve_points():
    p, r, t = pr_curve(Y4, S4)
    np.testing.assert_allclose(t, [0.9, 0.8, 0.7, 0.1])
    np.testing.assert_allclose(p, [1, 1 / 2, 2 / 3, 1 / 2])
    np.testing.assert_allclose(r, [1 / 2, 1 / 2, 1, 1])


# --- ROC-AUC -------------------------------------------------------------------------------

def test_roc_auc_pair_count():
    # Pairs (pos, neg): (.9,.8) win, (.9,.1) win, (.7,.8) loss, (.7,.1) win -> 3/4.
    assert roc_auc(Y4, S4) == pytest.approx(0.75)
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.2, 0.1])) == 1.0
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0


def test_roc_auc_counts_ties_half():
    # y = [1, 0, 1, 0], s = [.5, .5, .7, .1]
    # Pairs: (.5 vs .5) tie = 1/2, (.5 vs .1) = 1, (.7 vs .5) = 1, (.7 vs .1) = 1 -> 3.5 / 4 = 0.875.
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.7, 0.1])) == pytest.approx(0.875)
    # Every score equal: every pair a tie -> 1/2.
    assert roc_auc(np.array([1, 0, 1, 0, 0]), np.full(5, 0.3)) == pytest.approx(0.5)


def test_roc_auc_undefined_without_both_classes():
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.3, 0.2])))
    assert math.isnan(roc_auc(np.array([0, 0]), np.array([0.3, 0.2])))


# --- F1 at a threshold ----------------------------------------------------------------------

def test_f1_at():
    # thr 0.75: predicted [1, 1, 0, 0]; TP 1, P 1/2, R 1/2, F1 1/2.
    assert f1_at(Y4, S4, 0.75) == pytest.approx((0.5, 0.5, 0.5))
    # thr 0.7 is inclusive (s >= thr): predicted [1, 1, 1, 0]; TP 2, P 2/3, R 1, F1 = 2*(2/3)/(5/3) = 0.8.
    assert f1_at(Y4, S4, 0.7) == pytest.approx((2 / 3, 1.0, 0.8))
    # Nothing predicted: P, R, F1 all 0 (no division by zero).
    assert f1_at(Y4, S4, 0.95) == (0.0, 0.0, 0.0)
    # No positive at all: recall 0, F1 0.
    assert f1_at(np.array([0, 0]), np.array([0.9, 0.1]), 0.5) == (0.0, 0.0, 0.0)


# --- threshold choice -----------------------------------------------------------------------

Y6 = np.array([1, 1, 0, 1, 0, 0])
S6 = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
# thr:  .9     .8     .7     .6     .5     .4
# P:    1      1      2/3    3/4    3/5    1/2
# R:    1/3    2/3    2/3    1      1      1


def test_choose_threshold_lowest_threshold_meeting_precision():
    # Target 0.75: thresholds .9, .8 and .6 reach it; .6 has the most recall (1).
    th = choose_threshold(Y6, S6, 0.75)
    assert th.method == "target_precision"
    assert (th.threshold, th.precision, th.recall) == pytest.approx((0.6, 0.75, 1.0))
    assert th.f1 == pytest.approx(2 * 0.75 / 1.75)
    # Target 0.9: only .9 and .8 reach it; .8 recalls 2/3.
    th = choose_threshold(Y6, S6, 0.9)
    assert th.method == "target_precision"
    assert (th.threshold, th.precision, th.recall) == pytest.approx((0.8, 1.0, 2 / 3))
    # Target 1.0 is reached too (precision exactly 1).
    assert choose_threshold(Y6, S6, 1.0).threshold == pytest.approx(0.8)


def test_choose_threshold_keeps_the_precise_one_when_recall_ties():
    # y = [1, 0, 0], s = [.9, .5, .4]: every threshold recalls 1 and reaches precision 0.3;
    # the choice (most recall, then the first = highest threshold) is .9, precision 1.
    th = choose_threshold(np.array([1, 0, 0]), np.array([0.9, 0.5, 0.4]), 0.3)
    assert th.method == "target_precision"
    assert (th.threshold, th.precision, th.recall) == pytest.approx((0.9, 1.0, 1.0))


def test_choose_threshold_falls_back_to_best_f1():
    # y = [0, 1, 0, 1], s = [.9, .8, .7, .6]
    # thr .9: P 0,   R 0,   F1 0
    # thr .8: P 1/2, R 1/2, F1 1/2
    # thr .7: P 1/3, R 1/2, F1 2/5
    # thr .6: P 1/2, R 1,   F1 2/3   <- best F1; precision 0.9 is never reached.
    th = choose_threshold(np.array([0, 1, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6]), 0.9)
    assert th.method == "best_f1"
    assert (th.threshold, th.precision, th.recall, th.f1) == pytest.approx((0.6, 0.5, 1.0, 2 / 3))


def test_choose_threshold_without_positives():
    th = choose_threshold(np.array([0, 0, 0]), np.array([0.9, 0.5, 0.1]), 0.9)
    assert th.method == "no_positives"
    assert (th.threshold, th.precision, th.recall, th.f1) == (1.0, 0.0, 0.0, 0.0)


# --- masking in evaluate_scores / choose_thresholds -----------------------------------------

LABELS = ["a", "b", "c"]


def _masked_case():
    """6 windows x 3 classes. Class a: fully known. Class b: known only in rows 0-3.
    Class c: known only where it is absent (no known positive)."""
    probs = np.array([
        [0.9, 0.8, 0.2],
        [0.8, 0.3, 0.1],
        [0.7, 0.6, 0.4],
        [0.6, 0.2, 0.3],
        [0.5, 0.9, 0.9],
        [0.4, 0.1, 0.8],
    ])
    targets = np.array([
        [1, 1, 0],
        [1, 0, 0],
        [0, 1, 0],
        [1, 0, 0],
        [0, 0, 1],
        [0, 1, 1],
    ], dtype=np.float32)
    known = np.array([
        [1, 1, 1],
        [1, 1, 1],
        [1, 1, 1],
        [1, 1, 0],
        [1, 0, 0],
        [1, 0, 0],
    ], dtype=bool)
    return probs, targets, known


def _same(a, b):
    """Equal nested metrics, NaN == NaN."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b)
    else:
        assert a == pytest.approx(b)


def test_evaluate_scores_per_class_known_answers():
    probs, targets, known = _masked_case()
    m = evaluate_scores(probs, targets, known, LABELS)
    a, b, c = (m["per_class"][k] for k in LABELS)
    # Class a is Y6/S6 from above: AP = 1/3*1 + 1/3*1 + 0 + 1/3*3/4 = 11/12;
    # AUC pairs (pos .9,.8,.6 vs neg .7,.5,.4): 3 + 3 + 2 = 8 of 9.
    assert a["ap"] == pytest.approx(11 / 12)
    assert a["roc_auc"] == pytest.approx(8 / 9)
    assert (a["n_pos"], a["n_known"]) == (3, 6)
    # F1 at the default 0.5: predicted rows 0-4; TP 3, P 3/5, R 1, F1 3/4.
    assert (a["precision"], a["recall"], a["f1"], a["threshold"]) == pytest.approx((0.6, 1.0, 0.75, 0.5))
    # Class b, known rows 0-3: y = [1, 0, 1, 0], s = [.8, .3, .6, .2]; sorted .8(1) .6(1) .3 .2 -> AP 1, AUC 1.
    assert (b["ap"], b["roc_auc"], b["n_pos"], b["n_known"]) == (1.0, 1.0, 2, 4)
    # Class c: known rows 0-2 are all negatives -> AP, AUC and F1 undefined.
    assert math.isnan(c["ap"]) and math.isnan(c["roc_auc"]) and math.isnan(c["f1"])
    assert (c["n_pos"], c["n_known"]) == (0, 3)
    # Macro averages leave c out.
    assert m["macro_ap"] == pytest.approx((11 / 12 + 1.0) / 2)
    assert m["macro_roc_auc"] == pytest.approx((8 / 9 + 1.0) / 2)
    assert m["macro_f1"] == pytest.approx((0.75 + 1.0) / 2)  # b at 0.5: predicts rows 0, 2 -> F1 1
    assert m["classes_scored"] == 2
    assert m["num_windows"] == 6
    assert m["known_fraction"] == pytest.approx(13 / 18)


def test_evaluate_scores_uses_given_thresholds():
    probs, targets, known = _masked_case()
    m = evaluate_scores(probs, targets, known, LABELS, {"a": 0.75})
    # a at 0.75: predicted rows 0, 1; TP 2, P 1, R 2/3, F1 0.8. b keeps the default 0.5.
    assert (m["per_class"]["a"]["f1"], m["per_class"]["a"]["threshold"]) == pytest.approx((0.8, 0.75))
    assert m["per_class"]["b"]["threshold"] == 0.5


def test_unknown_entries_change_nothing():
    probs, targets, known = _masked_case()
    before = evaluate_scores(probs, targets, known, LABELS, {"a": 0.65, "b": 0.5, "c": 0.5})
    th_before = choose_thresholds(probs, targets, known, LABELS, 0.8)
    rng = np.random.default_rng(0)
    probs2, targets2 = probs.copy(), targets.copy()
    probs2[~known] = rng.uniform(size=int((~known).sum()))
    targets2[~known] = 1 - targets2[~known]  # flip every unknown label
    after = evaluate_scores(probs2, targets2, known, LABELS, {"a": 0.65, "b": 0.5, "c": 0.5})
    th_after = choose_thresholds(probs2, targets2, known, LABELS, 0.8)
    _same(before, after)
    assert th_before == th_after
    # ...while changing a known entry does change the result.
    probs2[1, 1] = 0.95  # a known negative of b now outranks its positives
    assert evaluate_scores(probs2, targets2, known, LABELS)["per_class"]["b"]["ap"] != before["per_class"]["b"]["ap"]


def test_micro_ap_uses_only_known_entries():
    probs, targets, known = _masked_case()
    m = evaluate_scores(probs, targets, known, LABELS)
    expect = average_precision(targets[known], probs[known])
    assert m["micro_ap"] == pytest.approx(expect)
    # All unknown: undefined everything, and no crash.
    none = evaluate_scores(probs, targets, np.zeros_like(known), LABELS)
    assert math.isnan(none["micro_ap"]) and math.isnan(none["macro_ap"]) and none["classes_scored"] == 0


def test_class_without_known_negative_is_undefined_and_left_out():
    probs, targets, known = _masked_case()
    known = known.copy()
    known[:, 2] = [False, False, False, False, True, True]  # class c: only its two positives known
    m = evaluate_scores(probs, targets, known, LABELS)
    c = m["per_class"]["c"]
    assert (c["n_pos"], c["n_known"]) == (2, 2)
    # Precision is 1 at every step without negatives, whatever the scores: AP says nothing.
    assert math.isnan(c["ap"]) and math.isnan(c["roc_auc"])
    assert m["classes_scored"] == 2
    assert m["macro_ap"] == pytest.approx((11 / 12 + 1.0) / 2)
    assert m["macro_roc_auc"] == pytest.approx((8 / 9 + 1.0) / 2)


def test_choose_thresholds_masks_per_class():
    probs, targets, known = _masked_case()
    th = choose_thresholds(probs, targets, known, LABELS, 0.75)
    # a = Y6/S6 at target 0.75 -> .6 (see above).
    assert th["a"].method == "target_precision" and th["a"].threshold == pytest.approx(0.6)
    # b, known rows 0-3: .8(1) .6(1) -> precision 1 with recall 1 at .6.
    assert th["b"].method == "target_precision"
    assert (th["b"].threshold, th["b"].recall) == pytest.approx((0.6, 1.0))
    # c has no known positive (its positives are in unknown rows 4, 5).
    assert th["c"].method == "no_positives" and th["c"].threshold == 1.0


def _two_models(seed: int = 0):
    """Three windows per recording, 40 recordings, two labels; A ranks them perfectly, B at random."""
    rng = np.random.default_rng(seed)
    files = [f"r{i}" for i in range(40) for _ in range(3)]
    targets = (rng.random((120, 2)) < 0.3).astype(np.float32)
    targets[0], targets[1] = 1, 0  # every label has a positive and a negative
    known = np.ones_like(targets, dtype=bool)
    return targets * 0.8 + 0.1, rng.random((120, 2)), targets, known, files


def test_paired_bootstrap_of_a_model_against_itself_is_exactly_zero():
    a, _, targets, known, files = _two_models()
    out = metrics.paired_bootstrap_macro_ap(a, a, targets, known, files, replicates=50)
    assert out["diff"] == 0 and out["low"] == 0 and out["high"] == 0 and out["a_better"] == 0
    assert out["replicates"] == 50


def test_paired_bootstrap_finds_the_better_model_and_brackets_the_observed_difference():
    a, b, targets, known, files = _two_models()
    out = metrics.paired_bootstrap_macro_ap(a, b, targets, known, files, replicates=200)
    observed = metrics.evaluate_scores(a, targets, known, ["x", "y"])["macro_ap"] - \
        metrics.evaluate_scores(b, targets, known, ["x", "y"])["macro_ap"]
    assert out["diff"] == pytest.approx(observed)
    assert 0 < out["low"] <= out["diff"] <= out["high"] <= 1
    assert out["a_better"] == 1.0
    swapped = metrics.paired_bootstrap_macro_ap(b, a, targets, known, files, replicates=200)
    assert swapped["diff"] == pytest.approx(-out["diff"]) and swapped["a_better"] == 0.0


def test_paired_bootstrap_resamples_whole_recordings(monkeypatch):
    """One recording holds every positive of a label: draws without it skip the label, never score part of it."""
    a, b, targets, known, files = _two_models()
    targets[:, 1] = 0
    targets[3:6, 1] = 1  # recording r1 only
    seen = []
    original = metrics._macro_ap_on

    def spy(probs, t, k, rows, labels):
        seen.append((set(np.asarray(files)[rows]), tuple(labels), len(rows)))
        return original(probs, t, k, rows, labels)

    monkeypatch.setattr(metrics, "_macro_ap_on", spy)
    metrics.paired_bootstrap_macro_ap(a, b, targets, known, files, replicates=30)
    assert len(seen) == 2 * 31
    for recs, labels, n_rows in seen:
        assert (1 in labels) == ("r1" in recs)
        assert n_rows == 120  # 40 recordings of 3 windows drawn, never single windows
