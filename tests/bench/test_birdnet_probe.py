"""The probe benchmark's metrics, by hand (the same functions score BirdNET's probe and our models)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "birdnet_probe", Path(__file__).resolve().parents[2] / "bench" / "birdnet_probe.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)

LABELS = ["a", "b"]


def test_recording_scores_take_the_max_over_each_recordings_windows():
    probs = np.array([[0.1, 0.9], [0.7, 0.2], [0.3, 0.4]])
    targets = np.array([[0, 1], [1, 0], [0, 0]], dtype=np.float32)
    known = np.ones_like(targets, dtype=bool)
    p, t, k = probe.recording_scores(probs, targets, known, ["r1", "r1", "r2"])
    np.testing.assert_allclose(p, [[0.7, 0.9], [0.3, 0.4]])
    np.testing.assert_array_equal(t, [[1, 1], [0, 0]])
    assert k.all()


def test_pooled_precision_recall_counts_positives_of_disabled_labels():
    probs = np.array([[0.9, 0.9], [0.8, 0.1], [0.2, 0.95]])
    targets = np.array([[1, 1], [0, 0], [0, 1]], dtype=np.float32)
    known = np.ones_like(targets, dtype=bool)
    th = {"a": {"threshold": 0.5, "enabled": True}, "b": {"threshold": 0.5, "enabled": False}}
    pr = probe.pooled_pr(probs, targets, known, LABELS, th)
    assert pr["precision"] == pytest.approx(0.5)  # a: one hit, one false alarm
    assert pr["recall"] == pytest.approx(1 / 3)  # b's two positives count, unfound
    assert pr["enabled_labels"] == 1


def test_validation_rule_disables_labels_that_cannot_reach_the_precision():
    s = np.array([[0.9, 0.9], [0.8, 0.8], [0.1, 0.7], [0.2, 0.1]])
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], dtype=np.float32)
    th = probe.val_thresholds(s, y, np.ones_like(y, dtype=bool), LABELS, 0.9)
    assert th["a"]["enabled"] and th["a"]["threshold"] == pytest.approx(0.8)
    assert not th["b"]["enabled"] and th["b"]["why"] == "best_f1"


def test_score_row_and_markdown():
    rng = np.random.default_rng(0)
    targets = (rng.random((20, 2)) < 0.4).astype(np.float32)
    probs = np.clip(targets * 0.6 + rng.random((20, 2)) * 0.5, 0, 1)
    known = np.ones_like(targets, dtype=bool)
    th = probe.val_thresholds(probs, targets, known, LABELS, 0.9)
    m = probe.score(probs, targets, known, LABELS, [f"r{i // 4}" for i in range(20)], th)
    assert 0.5 < m["window_macro_ap"] <= 1 and not math.isnan(m["recording_macro_roc_auc"])
    md = probe.markdown([{"model": "x", "thresholds": "val-p0.9", "split": "test", "metrics": m}])
    assert md.count("\n") == 2 and "| x | val-p0.9 | test |" in md
