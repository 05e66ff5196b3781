"""The user's-view metrics on hand-made detections and calls with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.user_metrics import (
    Span,
    event_scores,
    false_detections_per_hour,
    headline,
    merge_overlapping,
    presence_scores,
    user_view,
    window_scores,
)

CALLS = [
    Span("r1", "robin", 1.0, 2.0),
    Span("r1", "robin", 5.0, 6.0),
    Span("r1", "wren", 3.0, 4.0),
    Span("r2", "wren", 0.5, 1.0),
]
DETS = [
    Span("r1", "robin", 0.0, 1.5, 0.9),  # finds robin call 1 -> correct
    Span("r1", "robin", 2.0, 3.0, 0.8),  # touches call 1's end only -> wrong
    Span("r1", "wren", 5.5, 7.0, 0.7),  # overlaps a robin call, not a wren call -> wrong
    Span("r2", "wren", 0.0, 2.0, 0.6),  # finds wren in r2 -> correct
    Span("r3", "robin", 0.0, 2.0, 0.9),  # call-free recording -> false alarm
]


def test_event_precision_and_recall_known_answer():
    e = event_scores(DETS, CALLS)
    assert (e["detections"], e["correct"], e["calls"], e["found"]) == (5, 2, 4, 2)
    assert e["precision"] == pytest.approx(2 / 5) and e["recall"] == pytest.approx(2 / 4)
    assert e["per_label"]["robin"] | {} == {"detections": 3, "correct": 1, "calls": 2, "found": 1,
                                            "precision": 1 / 3, "recall": 0.5}
    assert e["per_label"]["wren"]["precision"] == 0.5 and e["per_label"]["wren"]["recall"] == 0.5


def test_one_detection_over_several_calls_finds_them_all_and_counts_once():
    calls = [Span("r", "a", 0.1, 0.2), Span("r", "a", 0.5, 0.6), Span("r", "a", 3.0, 3.1)]
    e = event_scores([Span("r", "a", 0.0, 1.0)], calls)
    assert (e["precision"], e["found"], e["calls"]) == (1.0, 2, 3)


def test_overlapping_detections_of_one_label_merge_before_counting():
    dets = [Span("r", "a", 0.0, 2.0, 0.6), Span("r", "a", 1.5, 3.5, 0.9), Span("r", "b", 1.0, 2.0)]
    merged = merge_overlapping(dets)
    assert merged == [Span("r", "a", 0.0, 3.5, 0.9), Span("r", "b", 1.0, 2.0)]
    e = event_scores(dets, [Span("r", "a", 3.0, 3.2)])
    assert (e["detections"], e["correct"]) == (2, 1)  # merged 'a' is correct, 'b' is not
    assert merge_overlapping([Span("r", "a", 0, 1), Span("r", "a", 1, 2)]) == [
        Span("r", "a", 0, 1), Span("r", "a", 1, 2)]  # touching is not overlapping


def test_presence_per_recording_known_answer():
    p = presence_scores(DETS, CALLS)
    # predicted pairs: (r1,robin) ok, (r1,wren) ok, (r2,wren) ok, (r3,robin) wrong; annotated: 3 pairs
    assert (p["predicted"], p["annotated"], p["correct"]) == (4, 3, 3)
    assert p["precision"] == pytest.approx(0.75) and p["recall"] == pytest.approx(1.0)


def test_pooled_window_precision_recall_with_unknown_entries_and_disabled_labels():
    probs = np.array([[0.9, 0.2], [0.6, 0.8], [0.1, 0.9], [0.7, 0.1]])
    targets = np.array([[1, 0], [0, 1], [1, 1], [1, 0]])
    known = np.array([[1, 1], [1, 1], [1, 1], [0, 1]], bool)  # row 3 label 0 unknown
    w = window_scores(probs, targets, known, np.array([0.5, 0.5]))
    # fired (known): (0,0) tp, (1,0) fp, (1,1) tp, (2,1) tp -> 3/4; positives known: (0,0),(1,1),(2,0),(2,1) -> 3/4
    assert (w["correct"], w["predicted"], w["positives"]) == (3, 4, 4)
    assert w["precision"] == pytest.approx(0.75) and w["recall"] == pytest.approx(0.75)
    w = window_scores(probs, targets, known, np.array([0.5, 0.5]), active=np.array([True, False]))
    assert (w["correct"], w["predicted"], w["positives"]) == (1, 2, 4)


def test_false_detections_per_hour_on_call_free_audio():
    f = false_detections_per_hour(DETS + [Span("r3", "robin", 1.0, 2.5)], {"r3": 30.0, "r4": 150.0})
    assert f["detections"] == 1  # the two r3 robin detections overlap: one event
    assert f["per_hour"] == pytest.approx(1 / (180 / 3600)) and f["recordings_with_detections"] == 1


def test_user_view_puts_it_together_and_nothing_is_nan_by_accident():
    v = user_view(DETS, CALLS, {"r1": 10.0, "r2": 5.0, "r3": 36.0})
    h = headline(v)
    assert h["event_precision"] == pytest.approx(0.4) and h["presence_recall"] == pytest.approx(1.0)
    assert h["false_detections_per_hour"] == pytest.approx(100.0)
    empty = user_view([], CALLS, {"r1": 10.0})
    assert math.isnan(empty["event"]["precision"]) and empty["event"]["recall"] == 0.0
