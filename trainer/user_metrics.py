"""Quality as a user of the detector sees it: events, recordings, windows, false alarms per hour.

Window AP and ROC-AUC rank scores; a user never sees a score ranking, only what the daemon
publishes at the bundle's thresholds. These pure functions (numpy only, no torch) score
those published detections against annotated calls:

- event precision: the share of detections that overlap an annotated call of their label;
- event recall: the share of annotated calls overlapped by a detection of their label;
- presence precision/recall per recording: "label heard in this recording" vs annotated;
- pooled window precision/recall over every known (window, label) entry at the thresholds;
- false detections per hour on call-free audio (recordings annotated as holding no call).

Intervals overlap when they share time (touching ends do not count). Detections of one label
in one recording that overlap are merged into one first (:func:`merge_overlapping`), as the
detector itself does, so a burst is never counted as several hits.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Span:
    """A detection or an annotated call: ``label`` from ``start`` to ``end`` s in ``file``."""

    file: str
    label: str
    start: float
    end: float
    score: float = 1.0


def overlaps(a: Span, b: Span) -> bool:
    return a.file == b.file and a.start < b.end and b.start < a.end


def _by_key(spans: Iterable[Span]) -> dict[tuple[str, str], list[Span]]:
    out: dict[tuple[str, str], list[Span]] = defaultdict(list)
    for s in spans:
        out[(s.file, s.label)].append(s)
    for v in out.values():
        v.sort(key=lambda s: (s.start, s.end))
    return out


def merge_overlapping(spans: Iterable[Span]) -> list[Span]:
    """One span per run of overlapping spans of the same label in the same file (max score)."""
    out: list[Span] = []
    for (file, label), group in _by_key(spans).items():
        cur = group[0]
        for s in group[1:]:
            if s.start < cur.end:
                cur = Span(file, label, cur.start, max(cur.end, s.end), max(cur.score, s.score))
            else:
                out.append(cur)
                cur = s
        out.append(cur)
    return sorted(out, key=lambda s: (s.file, s.start, s.label))


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def event_scores(detections: Sequence[Span], calls: Sequence[Span]) -> dict:
    """Event precision/recall overall and per label (detections are merged first)."""
    dets = _by_key(merge_overlapping(detections))
    truth = _by_key(calls)
    per: dict[str, dict[str, int]] = defaultdict(lambda: {"detections": 0, "correct": 0, "calls": 0, "found": 0})
    for key in set(dets) | set(truth):
        d, c = dets.get(key, []), truth.get(key, [])
        row = per[key[1]]
        row["detections"] += len(d)
        row["correct"] += sum(any(overlaps(x, y) for y in c) for x in d)
        row["calls"] += len(c)
        row["found"] += sum(any(overlaps(y, x) for x in d) for y in c)
    tot = {k: sum(r[k] for r in per.values()) for k in ("detections", "correct", "calls", "found")}
    return {
        "precision": _ratio(tot["correct"], tot["detections"]),
        "recall": _ratio(tot["found"], tot["calls"]),
        **tot,
        "per_label": {
            lab: {**r, "precision": _ratio(r["correct"], r["detections"]), "recall": _ratio(r["found"], r["calls"])}
            for lab, r in sorted(per.items())
        },
    }


def presence_scores(detections: Sequence[Span], calls: Sequence[Span]) -> dict:
    """Recording-level presence: (file, label) pairs detected vs annotated."""
    pred = {(d.file, d.label) for d in detections}
    true = {(c.file, c.label) for c in calls}
    hit = len(pred & true)
    return {"precision": _ratio(hit, len(pred)), "recall": _ratio(hit, len(true)),
            "predicted": len(pred), "annotated": len(true), "correct": hit}


def window_scores(probs: np.ndarray, targets: np.ndarray, known: np.ndarray, thresholds: np.ndarray,
                  active: np.ndarray | None = None) -> dict:
    """Pooled window precision/recall at per-label ``thresholds`` over known entries.

    ``active`` (K,) bool: labels the detector can publish; the others never fire.
    """
    probs, thresholds = np.asarray(probs, float), np.asarray(thresholds, float)
    y = np.asarray(targets) > 0.5
    known = np.asarray(known, dtype=bool)
    pred = probs >= thresholds[None, :]
    if active is not None:
        pred &= np.asarray(active, dtype=bool)[None, :]
    pred, y = pred & known, y & known
    tp = int((pred & y).sum())
    return {"precision": _ratio(tp, int(pred.sum())), "recall": _ratio(tp, int(y.sum())),
            "predicted": int(pred.sum()), "positives": int(y.sum()), "correct": tp}


def false_detections_per_hour(detections: Sequence[Span], call_free: dict[str, float]) -> dict:
    """Detections (merged) on recordings annotated as call-free, per hour of that audio."""
    dets = [d for d in merge_overlapping(detections) if d.file in call_free]
    hours = sum(call_free.values()) / 3600.0
    return {"per_hour": _ratio(len(dets), hours), "detections": len(dets), "recordings": len(call_free),
            "recordings_with_detections": len({d.file for d in dets}), "audio_s": round(hours * 3600.0, 3)}


def user_view(detections: Sequence[Span], calls: Sequence[Span], durations: dict[str, float],
              window: dict | None = None) -> dict:
    """All user-facing figures for one set of recordings (``durations``: every scored file).

    ``calls`` must hold every annotated call of the scored labels in those files; a file with
    none counts as call-free audio.
    """
    files = set(durations)
    detections = [d for d in detections if d.file in files]
    calls = [c for c in calls if c.file in files]
    with_calls = {c.file for c in calls}
    out = {
        "recordings": len(files),
        "audio_s": round(float(sum(durations.values())), 3),
        "event": event_scores(detections, calls),
        "presence": presence_scores(detections, calls),
        "false_alarms": false_detections_per_hour(
            detections, {f: d for f, d in durations.items() if f not in with_calls}),
    }
    if window is not None:
        out["window"] = window
    return out


def headline(view: dict) -> dict[str, float]:
    """The few numbers a user asks for, flat (for tables and the manifest summary)."""
    out = {
        "event_precision": view["event"]["precision"], "event_recall": view["event"]["recall"],
        "presence_precision": view["presence"]["precision"], "presence_recall": view["presence"]["recall"],
        "false_detections_per_hour": view["false_alarms"]["per_hour"],
    }
    if "window" in view:
        out |= {"window_precision": view["window"]["precision"], "window_recall": view["window"]["recall"]}
    return out
