"""2-s windows and their 3-state labels, as in LeBien et al. 2020.

- One window centred on each call (clipped to the recording); a call longer than the window
  yields ``ceil(call / window)`` windows spread over it. In training the dataset jitters the
  window around its call (:func:`jitter_start`) and relabels it (:func:`window_targets`).
- A window's label set is every call overlapping it by at least ``min_overlap`` of the call
  OR of the window (default 0.25).
- Windows without calls are negatives: each recording is tiled with windows and tiles that
  touch no call of a kept label become negatives (complete recordings only: in a
  validation-style recording an empty tile says nothing).
- Labels are 3-state: ``targets`` (0/1) and ``known`` per class. In a complete recording every
  class is known; otherwise only classes with a validated (present True/False) annotation
  overlapping the window are known.

Pure functions, numpy only (no torch): the quantize/export tools rebuild windows too.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import SonotrapError
from trainer.annotations import Annotation, Recording


@dataclass(frozen=True)
class WindowConfig:
    window_s: float = 2.0
    min_overlap: float = 0.25
    # Calls of the same file whose centres lie closer than this to an already kept window's
    # anchor, and whose labels that window already has, do not get a window of their own
    # (0 = one window per call, as in the paper; nips4b songs are made of 0.05-s syllables).
    min_spacing_s: float = 0.0
    negatives: bool = True


@dataclass(frozen=True)
class Window:
    """A window of ``file`` from ``start_s`` (length ``end_s - start_s``).

    ``call_start_s``/``call_end_s`` locate the anchoring call (NaN for negative tiles), which
    bounds the training jitter. ``positives``/``known`` name classes; ``known`` None = all.
    """

    file: str
    start_s: float
    end_s: float
    call_start_s: float
    call_end_s: float
    positives: tuple[str, ...]
    known: tuple[str, ...] | None

    @property
    def is_call(self) -> bool:
        return not math.isnan(self.call_start_s)


def overlaps_enough(a0: float, a1: float, w0: float, w1: float, fraction: float) -> bool:
    """Call [a0,a1) overlaps window [w0,w1) by >= fraction of the call or of the window."""
    ov = min(a1, w1) - max(a0, w0)
    if ov <= 0:
        return False
    return ov >= fraction * (a1 - a0) - 1e-9 or ov >= fraction * (w1 - w0) - 1e-9


def window_targets(
    anns: Iterable[Annotation], start_s: float, end_s: float, labels: list[str], complete: bool,
    min_overlap: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(targets float32 (K,), known bool (K,)) of the window [start_s, end_s)."""
    index = {lab: i for i, lab in enumerate(labels)}
    targets = np.zeros(len(labels), dtype=np.float32)
    known = np.full(len(labels), complete, dtype=bool)
    for a in anns:
        k = index.get(a.label)
        if k is None or a.present is None:
            continue
        if overlaps_enough(a.start_s, a.end_s, start_s, end_s, min_overlap):
            known[k] = True
            if a.present:
                targets[k] = 1.0
    return targets, known


def place(centre: float, duration: float, window_s: float) -> float:
    """Start of a window centred on ``centre``, clipped inside a recording of ``duration``."""
    if duration <= window_s:
        return 0.0
    return float(min(max(centre - window_s / 2, 0.0), duration - window_s))


def jitter_start(w: Window, duration: float, max_shift_s: float, rng: np.random.Generator) -> float:
    """A random start near ``w.start_s`` that keeps its anchoring call inside the window."""
    length = w.end_s - w.start_s
    lo, hi = w.start_s - max_shift_s, w.start_s + max_shift_s
    if w.is_call and w.call_end_s - w.call_start_s <= length:
        lo = max(lo, w.call_end_s - length)
        hi = min(hi, w.call_start_s)
    lo, hi = max(lo, 0.0), min(hi, max(duration - length, 0.0))
    if hi <= lo:
        return w.start_s
    return float(rng.uniform(lo, hi))


def _key(w: Window) -> tuple:
    return (w.file, round(w.start_s, 3))


def make_windows(
    recordings: list[Recording], annotations: list[Annotation], labels: list[str], cfg: WindowConfig
) -> list[Window]:
    """All call windows and negative tiles of ``recordings`` (see module docstring)."""
    by_file: dict[str, list[Annotation]] = defaultdict(list)
    for a in annotations:
        by_file[a.file].append(a)
    keep = set(labels)
    W = cfg.window_s
    out: list[Window] = []
    for rec in recordings:
        anns = sorted(by_file.get(rec.file, []), key=lambda a: (a.start_s, a.end_s, a.label))
        anchors = [a for a in anns if a.label in keep and a.present is not None]
        seen: set[tuple] = set()
        last_centre: float | None = None
        last_pos: set[str] = set()
        for a in anchors:
            length = a.end_s - a.start_s
            pieces = max(1, math.ceil(length / W - 1e-9))
            for p in range(pieces):
                if pieces == 1:
                    centre, c0, c1 = (a.start_s + a.end_s) / 2, a.start_s, a.end_s
                else:
                    c0 = a.start_s + p * length / pieces
                    c1 = c0 + length / pieces
                    centre = (c0 + c1) / 2
                if (
                    cfg.min_spacing_s > 0 and last_centre is not None
                    and abs(centre - last_centre) < cfg.min_spacing_s and a.label in last_pos
                ):
                    continue
                start = place(centre, rec.duration_s, W)
                t, k = window_targets(anns, start, start + W, labels, rec.complete, cfg.min_overlap)
                w = _window(rec.file, start, W, c0, c1, labels, t, k)
                if _key(w) in seen:
                    continue
                seen.add(_key(w))
                out.append(w)
                last_centre, last_pos = centre, set(w.positives)
        if cfg.negatives and rec.complete:
            calls = [a for a in anns if a.label in keep and a.present]
            for start in tile_starts(rec.duration_s, W):
                if any(a.end_s > start and a.start_s < start + W for a in calls):
                    continue
                t, k = window_targets(anns, start, start + W, labels, True, cfg.min_overlap)
                w = _window(rec.file, start, W, math.nan, math.nan, labels, t, k)
                if _key(w) not in seen:
                    seen.add(_key(w))
                    out.append(w)
    return out


def tile_starts(duration: float, window_s: float) -> list[float]:
    """Non-overlapping tiles; a remainder over half a window gets a final tile ending at the end."""
    if duration <= window_s:
        return [0.0]
    n = int(duration // window_s)
    starts = [i * window_s for i in range(n)]
    if duration - n * window_s > window_s / 2:
        starts.append(duration - window_s)
    return starts


def _window(file, start, W, c0, c1, labels, targets, known) -> Window:
    pos = tuple(lab for lab, t in zip(labels, targets, strict=True) if t > 0)
    kn = None if known.all() else tuple(lab for lab, k in zip(labels, known, strict=True) if k)
    return Window(file, round(start, 6), round(start + W, 6), c0, c1, pos, kn)


def to_arrays(windows: list[Window], labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stack windows' labels into ``targets (N,K) float32`` and ``known (N,K) bool``."""
    index = {lab: i for i, lab in enumerate(labels)}
    targets = np.zeros((len(windows), len(labels)), dtype=np.float32)
    known = np.ones((len(windows), len(labels)), dtype=bool)
    for n, w in enumerate(windows):
        for lab in w.positives:
            targets[n, index[lab]] = 1.0
        if w.known is not None:
            known[n] = False
            for lab in w.known:
                known[n, index[lab]] = True
    return targets, known


FIELDS = ("file", "start_s", "end_s", "call_start_s", "call_end_s", "positives", "known")


def write_windows(path: str | Path, windows: list[Window]) -> None:
    """CSV with ``;``-joined label lists; ``known`` is ``*`` when every class is known."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        wr = csv.writer(fh)
        wr.writerow(FIELDS)
        for w in windows:
            wr.writerow([
                w.file, f"{w.start_s:.6f}", f"{w.end_s:.6f}",
                "" if math.isnan(w.call_start_s) else f"{w.call_start_s:.6f}",
                "" if math.isnan(w.call_end_s) else f"{w.call_end_s:.6f}",
                ";".join(w.positives), "*" if w.known is None else ";".join(w.known),
            ])


def read_windows(path: str | Path) -> list[Window]:
    path = Path(path)
    if not path.is_file():
        raise SonotrapError(f"window list {path} does not exist; is this a sonotrap run directory?")
    out = []
    with path.open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            out.append(Window(
                r["file"], float(r["start_s"]), float(r["end_s"]),
                float(r["call_start_s"]) if r["call_start_s"] else math.nan,
                float(r["call_end_s"]) if r["call_end_s"] else math.nan,
                tuple(x for x in r["positives"].split(";") if x),
                None if r["known"] == "*" else tuple(x for x in r["known"].split(";") if x),
            ))
    return out
