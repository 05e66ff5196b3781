"""Offline analysis: the daemon's exact pipeline over recordings, as fast as the CPU allows.

Each recording is decoded by the same file source the daemon replays (so a truncated file
is detected, not silently shortened), windows follow the same hop schedule and go through
the same frontend, classifier and detector — only batched as wide as possible. Event times
are seconds from the start of the recording. Outputs: one CSV for all recordings and one
Raven selection table per recording.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.config import Config
from edge.errors import SonotrapError
from edge.inference.detector import DetectionEvent, Detector
from edge.inference.pipeline import HopPipeline, HopResult
from edge.inference.runtime import Classifier

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".w64", ".rf64", ".opus"}
RAVEN_HEADER = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                "Low Freq (Hz)", "High Freq (Hz)", "Species", "Score"]
CSV_HEADER = ["file", "label", "name", "start_s", "end_s", "peak_score", "mean_score", "hops", "id"]


@dataclass
class FileResult:
    path: Path
    duration_s: float = 0.0
    events: list[DetectionEvent] = field(default_factory=list)
    error: str | None = None
    hops: int = 0


def find_recordings(paths: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """``(file, root)`` for every recording given directly or found (recursively) in a folder."""
    out: list[tuple[Path, Path]] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in AUDIO_SUFFIXES)
            out += [(q, p) for q in found]
        elif p.exists():
            out.append((p, p.parent))
        else:
            raise SonotrapError(f"{p} does not exist; pass recordings or folders that contain them")
    if not out:
        raise SonotrapError(
            f"no recordings found in {', '.join(map(str, paths))} "
            f"(looked for {', '.join(sorted(AUDIO_SUFFIXES))})"
        )
    return out


def analyze_file(
    path: Path,
    classifier: Classifier,
    cfg: Config,
    batch: int = 16,
    progress: Callable[[float], None] | None = None,
    on_scores: Callable[[np.ndarray], None] | None = None,
    on_hop: Callable[[HopResult], None] | None = None,
) -> FileResult:
    """Run the pipeline over one recording; errors are returned in ``FileResult.error``.

    ``on_scores`` receives every window's (K,) scores (recording-level scores); ``on_hop``
    every hop's full result (times and scores: offline evaluation replays the detector).
    """
    from edge.audio.filesource import FileSource

    audio_cfg = cfg.audio.__class__(**{**cfg.audio.__dict__, "source": "file", "file": str(path),
                                       "realtime": False, "loop": False, "block_s": 1.0,
                                       "silence_timeout_s": 0.0})
    result = FileResult(path)
    source = FileSource(audio_cfg, path=path)
    try:
        source.start()
    except SonotrapError as err:
        result.error = str(err)
        return result
    detector = Detector.for_bundle(classifier.bundle, cfg.detector)
    pipe = HopPipeline(classifier, detector, source.sample_rate, cfg.model.hop_s, max_batch=batch)

    def events(results) -> list[DetectionEvent]:
        for r in results:
            if on_scores is not None:
                on_scores(r.scores)
            if on_hop is not None:
                on_hop(r)
        return [e for r in results for e in r.events]

    try:
        while True:
            try:
                block = source.read(0)
            except SonotrapError as err:
                result.error = str(err)
                break
            if block is None:
                break
            pipe.append(block.samples)
            if progress:
                progress(block.duration)
            while pipe.pending() >= batch:
                result.events += events(pipe.step())
        while pipe.pending():
            result.events += events(pipe.step())
        result.events += events(pipe.finish_short())
        result.events += pipe.flush()
    finally:
        source.stop()
    result.events = [e for e in result.events if e.state == "ended"]
    result.duration_s = pipe.total / pipe.sample_rate
    result.hops = pipe.processed
    return result


def write_raven(path: Path, events: list[DetectionEvent], low_hz: float, high_hz: float) -> None:
    """A Raven Pro selection table (tab-separated), one row per event."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(RAVEN_HEADER)
        for i, e in enumerate(sorted(events, key=lambda e: (e.start, e.label)), start=1):
            w.writerow([i, "Spectrogram 1", 1, f"{max(0.0, e.start):.3f}", f"{e.end:.3f}",
                        f"{low_hz:.1f}", f"{high_hz:.1f}", e.label, f"{e.peak_score:.4f}"])


def csv_rows(result: FileResult, name: str) -> list[list]:
    return [[name, e.label, e.name, f"{max(0.0, e.start):.3f}", f"{e.end:.3f}", f"{e.peak_score:.4f}",
             f"{e.mean_score:.4f}", e.hops, e.id]
            for e in sorted(result.events, key=lambda e: (e.start, e.label))]


class Progress:
    """tqdm when installed (the ``train`` extra), else a plain one-line stderr bar."""

    def __init__(self, total: float, enabled: bool = True, unit: str = "s audio") -> None:
        self.total = max(total, 1e-9)
        self.done = 0.0
        self.enabled = enabled
        self._bar = None
        self._last = 0.0
        self._t0 = time.monotonic()
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=round(total, 1), unit=unit, file=sys.stderr, dynamic_ncols=True,
                             bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}]")
        except ImportError:
            self._bar = None

    def update(self, seconds: float) -> None:
        self.done += seconds
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(seconds)
            return
        now = time.monotonic()
        if now - self._last >= 0.2 or self.done >= self.total:
            self._last = now
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            speed = self.done / max(1e-9, now - self._t0)
            sys.stderr.write(f"\r[{bar:<30}] {frac * 100:5.1f}% {self.done:.0f}/{self.total:.0f} s audio, {speed:.0f}x")
            sys.stderr.flush()

    def write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            if self.enabled:
                sys.stderr.write("\r\033[K")
            sys.stderr.write(line + "\n")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
