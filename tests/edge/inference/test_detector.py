"""Detector: known score sequences -> exactly the expected events."""

from __future__ import annotations

import itertools

import pytest

from edge.config import DetectorConfig
from edge.errors import SonotrapError
from edge.inference.detector import Detector, resolve_thresholds

LABELS = ["a", "b"]
HOP, WIN = 0.5, 2.0


def make(cfg: DetectorConfig | None = None, thr: float = 0.5) -> Detector:
    counter = itertools.count()
    return Detector(
        labels=LABELS,
        names={"a": "Alpha", "b": "Beta"},
        thresholds={lab: thr for lab in LABELS},
        cfg=cfg or DetectorConfig(),
        new_id=lambda: f"id{next(counter)}",
    )


def feed(det: Detector, rows: list[tuple[float, float]], t0: float = 1000.0, flush: bool = True, win: float = WIN):
    """``win`` = HOP: windows do not overlap, so hits apart by a gap make separate events."""
    out = []
    for k, scores in enumerate(rows):
        end = t0 + win + k * HOP
        out += det.update(k, end - win, end, scores)
    if flush:
        out += det.flush()
    return out


def test_consecutive_hops_merge_into_one_event_with_stats():
    rows = [(0.1, 0), (0.6, 0), (0.9, 0), (0.7, 0), (0.2, 0), (0.1, 0)]
    (ev,) = feed(make(), rows)
    assert (ev.label, ev.name, ev.state, ev.hops) == ("a", "Alpha", "ended", 3)
    assert ev.start == pytest.approx(1000.0 + 1 * HOP)  # start of hop 1's window
    assert ev.end == pytest.approx(1000.0 + WIN + 3 * HOP)  # end of hop 3's window
    assert ev.peak_score == pytest.approx(0.9)
    assert ev.mean_score == pytest.approx((0.6 + 0.9 + 0.7) / 3)
    assert (ev.first_hop, ev.last_hop) == (1, 3)


def test_event_is_emitted_at_the_hop_it_ends_not_before():
    det = make()
    assert det.update(0, 0, 2, (0.9, 0)) == []
    assert det.update(1, 0.5, 2.5, (0.9, 0)) == []
    # Misses whose windows still overlap the event (ends 2.5) keep it open: a later hit merges.
    for k in range(2, 5):
        assert det.update(k, 0.5 * k, 0.5 * k + 2, (0.1, 0)) == []
    (ev,) = det.update(5, 2.5, 4.5, (0.1, 0))  # first window that no longer overlaps
    assert ev.hops == 2 and det.flush() == []


def test_gap_tolerance_and_split():
    rows = [(0.9, 0), (0.1, 0), (0.9, 0), (0.1, 0), (0.1, 0), (0.9, 0)]
    assert [e.hops for e in feed(make(), rows, win=HOP)] == [1, 1, 1]
    events = feed(make(DetectorConfig(max_gap_hops=1)), rows, win=HOP)
    assert [e.hops for e in events] == [2, 1]
    assert events[0].first_hop == 0 and events[0].last_hop == 2


def test_missing_hop_indices_count_as_gap():
    det = make()
    det.update(0, 0, 0.5, (0.9, 0))
    out = det.update(3, 1.5, 2.0, (0.9, 0))  # hops 1, 2 never processed
    assert len(out) == 1 and out[0].hops == 1
    assert det.flush()[0].first_hop == 3


def test_min_hops_drops_blips():
    rows = [(0.9, 0), (0.1, 0), (0.9, 0), (0.9, 0), (0.1, 0)]
    det = make(DetectorConfig(min_hops=2))
    events = feed(det, rows, win=HOP)
    assert [e.hops for e in events] == [2]
    assert det.stats.dropped_short == 1


def test_labels_are_independent_and_ids_unique():
    rows = [(0.9, 0.1), (0.9, 0.8), (0.1, 0.8), (0.1, 0.1)]
    events = feed(make(), rows)
    assert sorted((e.label, e.hops) for e in events) == [("a", 2), ("b", 2)]
    assert len({e.id for e in events}) == 2


def test_started_message_shares_the_event_id():
    rows = [(0.1, 0), (0.9, 0), (0.9, 0), (0.9, 0), (0.1, 0)]
    events = feed(make(DetectorConfig(publish_started=True, min_hops=2)), rows)
    assert [e.state for e in events] == ["started", "ended"]
    assert events[0].id == events[1].id
    assert events[0].hops == 2 and events[1].hops == 3  # started once min_hops reached


def test_min_report_interval_suppresses_repeats_per_label():
    rows = [(0.9, 0.9), (0.1, 0.1), (0.9, 0.1), (0.1, 0.1)] + [(0.1, 0.1)] * 20 + [(0.9, 0.1), (0.1, 0.1)]
    det = make(DetectorConfig(min_report_interval_s=5.0))
    events = feed(det, rows, win=HOP)
    # 'a' at hop 0 reported, hop 2 suppressed (within 5 s of the first's end), hop 24 reported.
    assert [(e.label, e.first_hop) for e in events if e.label == "a"] == [("a", 0), ("a", 24)]
    assert [e.label for e in events].count("b") == 1
    assert det.stats.suppressed_interval == 1


def test_flush_ends_open_events():
    det = make()
    det.update(0, 0, 2, (0.9, 0.9))
    assert sorted(e.label for e in det.flush()) == ["a", "b"]
    assert det.flush() == []


def test_include_exclude_and_thresholds():
    cfg = DetectorConfig(include=["b"], thresholds={"b": 0.95})
    det = Detector(LABELS, {}, resolve_thresholds(LABELS, {"a": 0.5, "b": 0.5}, cfg), cfg)
    assert feed(det, [(0.99, 0.9), (0.1, 0.1)]) == []  # a excluded, b below its override
    assert [e.label for e in feed(det, [(0.99, 0.97), (0.1, 0.1)])] == ["b"]
    excl = DetectorConfig(exclude=["a"])
    det = Detector(LABELS, {}, resolve_thresholds(LABELS, {}, excl), excl)
    assert [e.label for e in feed(det, [(0.99, 0.9)])] == ["b"]


def test_threshold_precedence():
    thr = resolve_thresholds(LABELS, {"a": 0.3, "b": 0.4}, DetectorConfig())
    assert thr == {"a": 0.3, "b": 0.4}
    thr = resolve_thresholds(LABELS, {"a": 0.3, "b": 0.4}, DetectorConfig(default_threshold=0.7, thresholds={"b": 0.2}))
    assert thr == {"a": 0.7, "b": 0.2}


@pytest.mark.parametrize("key", ["thresholds", "include", "exclude"])
def test_unknown_label_in_config_is_one_line_error_listing_valid_labels(key):
    value = {"nope": 0.5} if key == "thresholds" else ["nope"]
    with pytest.raises(SonotrapError) as err:
        resolve_thresholds(LABELS, {}, DetectorConfig(**{key: value}))
    msg = str(err.value)
    assert "\n" not in msg and f"detector.{key}" in msg and "'nope'" in msg and "a, b" in msg
