"""Scores per hop -> detection events. Pure: no clocks, no I/O, easy to test.

A call usually spans several overlapping windows, so consecutive hops above a label's
threshold merge into ONE event (start of the first window above threshold, end of the last,
peak and mean score, hop count). Short dips are tolerated (``max_gap_hops``), and an event
stays open as long as a new window still overlaps it, so one label never has two
overlapping events (windows are longer than hops: two hits three hops apart share audio).
The price is latency: an event ends at most one window length after its last hit, and
calls repeated faster than that (continuous song) would make one endless event, so an event
is cut after ``max_event_s`` and the next one starts where it ended. Blips
shorter than ``min_hops`` are dropped, and a label is not re-reported within
``min_report_interval_s`` of the end of its previous report. An event is emitted when it
ends; optionally a ``started`` message with the same id is emitted as soon as it qualifies.

Labels the bundle ships disabled (their threshold cannot be trusted to reach the target
precision) are never scored into events unless the operator names them in
``detector.enable_labels`` (or sets it to ``"all"``): the decision is made here, once, for
the daemon and ``analyze`` alike.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.config import DetectorConfig
from edge.errors import SonotrapError

log = logging.getLogger("sonotrap.detector")


@dataclass
class DetectionEvent:
    """One detected call (or run of calls) of one label."""

    id: str  # uuid4 hex, assigned at the first hit; the dedup key end to end
    label: str
    name: str
    state: str  # "started" (optional early message) | "ended" (the event)
    start: float  # epoch s: start of the first window above threshold
    end: float  # epoch s: end of the last window above threshold
    peak_score: float
    mean_score: float
    hops: int
    first_hop: int = 0  # hop index of the first / last hit (for clips and tests)
    last_hop: int = 0


@dataclass
class _Open:
    id: str
    start: float
    end: float
    first_hop: int
    last_hop: int
    peak: float
    total: float
    hits: int
    started_sent: bool = False
    suppressed: bool = False


@dataclass
class DetectorStats:
    events: int = 0
    started: int = 0
    dropped_short: int = 0
    suppressed_interval: int = 0


def resolve_thresholds(
    labels: Sequence[str], bundle_thresholds: dict[str, float], cfg: DetectorConfig
) -> dict[str, float]:
    """Bundle thresholds, then ``default_threshold`` for all, then per-label overrides.

    Also checks that every label named in the config exists in the model, so a typo in
    ``detector.include`` cannot silently disable detections.
    """
    valid = list(labels)
    known = set(valid)
    for key, names in (
        ("detector.thresholds", list(cfg.thresholds)),
        ("detector.include", cfg.include),
        ("detector.exclude", cfg.exclude),
        ("detector.enable_labels", [] if isinstance(cfg.enable_labels, str) else cfg.enable_labels),
    ):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SonotrapError(
                f"config: {key} names unknown label(s) {', '.join(map(repr, unknown))}; "
                f"valid labels: {', '.join(valid)}"
            )
    out = {}
    for label in valid:
        thr = cfg.default_threshold if cfg.default_threshold is not None else bundle_thresholds.get(label, 0.5)
        out[label] = float(cfg.thresholds.get(label, thr))
    return out


def enabled_labels(manifest_labels: Sequence, cfg: DetectorConfig) -> set[str]:
    """Labels enabled by the bundle, plus those the operator enables (``"all"``: every label)."""
    if cfg.enable_labels == "all":
        return {lab.code for lab in manifest_labels}
    return {lab.code for lab in manifest_labels if getattr(lab, "enabled", True)} | set(cfg.enable_labels)


@dataclass
class Detector:
    """Stateful event builder; feed it one hop at a time with :meth:`update`."""

    labels: list[str]
    names: dict[str, str]
    thresholds: dict[str, float]
    cfg: DetectorConfig = field(default_factory=DetectorConfig)
    new_id: Callable[[], str] = field(default=lambda: uuid.uuid4().hex)
    enabled: set[str] | None = None  # None = every label; else only these become events

    def __post_init__(self) -> None:
        self._active = [
            (i, lab)
            for i, lab in enumerate(self.labels)
            if (not self.cfg.include or lab in self.cfg.include) and lab not in self.cfg.exclude
            and (self.enabled is None or lab in self.enabled)
        ]
        self._open: dict[str, _Open] = {}
        self._last_reported_end: dict[str, float] = {}
        self.stats = DetectorStats()

    @classmethod
    def for_bundle(cls, bundle, cfg: DetectorConfig) -> Detector:
        """A detector using ``bundle``'s labels, thresholds and enabled flags with ``cfg``'s overrides."""
        thr = resolve_thresholds(bundle.labels, bundle.manifest.thresholds, cfg)
        enabled = enabled_labels(bundle.manifest.labels, cfg)
        off = [lab for lab in bundle.labels if lab not in enabled]
        if off:
            level = logging.WARNING if len(off) == len(bundle.labels) else logging.INFO
            log.log(level, "%d of %d labels are disabled by the model (precision not reliable on validation), "
                    "so %s; publish them with --enable-labels all|A,B (detector.enable_labels): %s",
                    len(off), len(bundle.labels),
                    "nothing will be published" if len(off) == len(bundle.labels) else "those are not published",
                    ", ".join(off[:8]) + (" ..." if len(off) > 8 else ""))
        return cls(labels=list(bundle.labels), names=dict(bundle.names), thresholds=thr, cfg=cfg, enabled=enabled)

    @property
    def active_labels(self) -> list[str]:
        """The labels this detector can report."""
        return [lab for _, lab in self._active]

    @property
    def open_labels(self) -> list[str]:
        return list(self._open)

    def update(self, hop: int, window_start: float, window_end: float, scores: Sequence[float]) -> list[DetectionEvent]:
        """Process one hop's scores; returns the events (started/ended) this hop produced.

        ``hop`` is the hop index (consecutive hops differ by 1; a larger jump counts as
        that many missed hops for gap tolerance).
        """
        values = np.asarray(scores, dtype=np.float64)
        out: list[DetectionEvent] = []
        for i, label in self._active:
            score = float(values[i])
            ev = self._open.get(label)
            if score >= self.thresholds[label]:
                start = window_start
                if ev is not None:
                    capped = self.cfg.max_event_s > 0 and window_end - ev.start > self.cfg.max_event_s
                    if capped or self._ended(ev, hop, window_start):
                        out.extend(self._close(label))
                        start = max(window_start, ev.end)  # a capped event's successor must not overlap it
                        ev = None
                if ev is None:
                    ev = _Open(self.new_id(), start, window_end, hop, hop, score, 0.0, 0)
                    ev.suppressed = (
                        self.cfg.min_report_interval_s > 0
                        and label in self._last_reported_end
                        and window_start < self._last_reported_end[label] + self.cfg.min_report_interval_s
                    )
                    self._open[label] = ev
                ev.end = window_end
                ev.last_hop = hop
                ev.peak = max(ev.peak, score)
                ev.total += score
                ev.hits += 1
                if (
                    self.cfg.publish_started
                    and not ev.started_sent
                    and not ev.suppressed
                    and ev.hits >= self.cfg.min_hops
                ):
                    ev.started_sent = True
                    self.stats.started += 1
                    out.append(self._event(label, ev, "started"))
            elif ev is not None and self._ended(ev, hop + 1, window_start):
                out.extend(self._close(label))
        return out

    def _ended(self, ev: _Open, hop: int, window_start: float) -> bool:
        """True once the gap since the last hit is too long AND this window no longer overlaps it.

        ``hop`` is the next hop that could still be a hit (the current one for a hit).
        """
        return hop - ev.last_hop - 1 > self.cfg.max_gap_hops and window_start >= ev.end

    def flush(self) -> list[DetectionEvent]:
        """End every open event (shutdown, model swap, end of file)."""
        out: list[DetectionEvent] = []
        for label in list(self._open):
            out.extend(self._close(label))
        return out

    def _close(self, label: str) -> list[DetectionEvent]:
        ev = self._open.pop(label)
        if ev.hits < self.cfg.min_hops:
            self.stats.dropped_short += 1
            return []
        if ev.suppressed:
            self.stats.suppressed_interval += 1
            return []
        self._last_reported_end[label] = ev.end
        self.stats.events += 1
        return [self._event(label, ev, "ended")]

    def _event(self, label: str, ev: _Open, state: str) -> DetectionEvent:
        return DetectionEvent(
            id=ev.id,
            label=label,
            name=self.names.get(label, label),
            state=state,
            start=ev.start,
            end=ev.end,
            peak_score=round(ev.peak, 6),
            mean_score=round(ev.total / max(1, ev.hits), 6),
            hops=ev.hits,
            first_hop=ev.first_hop,
            last_hop=ev.last_hop,
        )
