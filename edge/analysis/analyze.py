"""Offline analysis: the daemon's exact pipeline over recordings, as fast as the CPU allows.

Each recording is decoded by the same file source the daemon replays (so a truncated file
is detected, not silently shortened), windows follow the same hop schedule and go through
the same frontend, classifier and detector — only batched as wide as possible. Event times
are seconds from the start of the recording, never past its end. This module analyses one
recording and formats its rows; which recordings, in how many processes and where the
results go is :mod:`edge.analysis.batch`'s job.
"""

from __future__ import annotations

import csv
import io
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.config import Config
from edge.contracts import ModelRuntime
from edge.errors import SonotrapError
from edge.inference.detector import DetectionEvent, Detector
from edge.inference.pipeline import HopPipeline, HopResult

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
    gated: int = 0  # hops that skipped the model (below the level floor, or inactive)


def analyze_file(
    path: Path,
    classifier: ModelRuntime,
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
    pipe = HopPipeline(classifier, detector, source.sample_rate, cfg.model.hop_s, max_batch=batch,
                       gate=cfg.gate)

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
    result.gated = pipe.gated
    return result




def event_rows(events: Sequence[DetectionEvent], duration_s: float, recording: str) -> list[list[str]]:
    """``[label, name, start_s, end_s, peak, mean, hops, id]`` per event, sorted by start time.

    The id is derived from the recording's name, label and start, so re-analysing (in any
    number of shards, workers or restarts) gives the same ids, not a fresh random one each run.

    Times are in ms, inside the recording: the end is rounded down so that a call at the end
    of a 1.787937-s file ends at 1.787, never at 1.788 (a time Raven and OpenSoundscape
    would place after the recording's end).
    """
    rows = []
    for e in sorted(events, key=lambda e: (e.start, e.label)):
        end = math.floor(min(e.end, duration_s) * 1000 + 1e-6) / 1000
        start = min(round(max(0.0, e.start), 3), end)
        rows.append([e.label, e.name, f"{start:.3f}", f"{end:.3f}", f"{e.peak_score:.4f}",
                     f"{e.mean_score:.4f}", str(e.hops),
                     uuid.uuid5(uuid.NAMESPACE_URL, f"sonotrap-analyze:{recording}:{e.label}:{start:.3f}").hex])
    return rows


def raven_table(rows: Sequence[Sequence[str]], low_hz: float, high_hz: float) -> str:
    """A Raven Pro selection table (tab-separated), one selection per :func:`event_rows` row."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(RAVEN_HEADER)
    for i, (label, _name, start, end, peak, *_rest) in enumerate(rows, start=1):
        w.writerow([i, "Spectrogram 1", 1, start, end, f"{low_hz:.1f}", f"{high_hz:.1f}", label, peak])
    return buf.getvalue()
