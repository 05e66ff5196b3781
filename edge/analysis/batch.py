"""Batch analysis over N worker processes, each with its own model and one onnxruntime thread.

One process per core with a single-threaded model scales better than one process with N
model threads: every recording is independent, so there is nothing to synchronise, and the
decoding, frontend and detector (numpy, Python) run in parallel too instead of waiting on
the GIL. Each worker commits its recording's result file and Raven table itself
(:mod:`edge.analysis.results`); the parent only counts and draws the progress bar.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.analysis.analyze import analyze_file, event_rows, raven_table
from edge.analysis.recording_scores import AGGREGATIONS, RecordingScores
from edge.analysis.recordings import Recording
from edge.analysis.results import Result, raven_path, settings_key, write_atomic
from edge.config import Config


@dataclass(frozen=True)
class BatchSettings:
    bundle_path: str
    cfg: Config
    threads: int
    out: Path
    raven: bool = True
    batch: int = 16


@dataclass
class Done:
    name: str
    duration_s: float
    detections: int
    error: str | None


_worker: dict[str, Any] = {}


def init_worker(settings: BatchSettings) -> None:
    """Load the model once per process."""
    from edge.inference.runtime import Classifier
    from edge.models.bundle import load_bundle

    # "audio: file ..." per recording is noise in a batch of thousands and breaks the bar.
    logging.getLogger("sonotrap.audio").setLevel(logging.WARNING)
    bundle = load_bundle(settings.bundle_path)
    _worker.update(settings=settings, classifier=Classifier(bundle, settings.threads),
                   key=settings_key(bundle, settings.cfg))


def analyze_one(rec: Recording, progress: Callable[[float], None] | None = None) -> Done:
    """Analyse one recording and commit its result (and Raven table) under the output folder."""
    s: BatchSettings = _worker["settings"]
    classifier = _worker["classifier"]
    acc = RecordingScores(len(classifier.bundle.labels))
    fr = analyze_file(rec.path, classifier, s.cfg, batch=s.batch, progress=progress, on_scores=acc.add)
    result = Result(rec.name, _worker["key"], error=fr.error)
    if fr.error is None:
        result.duration_s, result.hops = fr.duration_s, fr.hops
        result.rows = event_rows(fr.events, fr.duration_s, rec.name)
        result.scores = {agg: [None if v != v else float(v) for v in acc.result(agg)] for agg in AGGREGATIONS}
        if s.raven:
            fe = classifier.bundle.frontend
            write_atomic(raven_path(s.out, rec.name), raven_table(result.rows, fe.fmin, fe.fmax))
    result.save(s.out)
    return Done(rec.name, result.duration_s, len(result.rows), fr.error)


def run_batch(
    recordings: Sequence[Recording],
    settings: BatchSettings,
    workers: int,
    on_done: Callable[[Done], None],
    progress: Callable[[float], None] | None = None,
    strict: bool = False,
) -> None:
    """Analyse ``recordings``; ``on_done`` after each one. ``strict``: stop after the first failure.

    One worker runs in this process (``progress`` then follows each recording as it is read);
    more run in spawned processes, reporting per finished recording.
    """
    if workers <= 1:
        init_worker(settings)
        for rec in recordings:
            done = analyze_one(rec, progress)
            on_done(done)
            if strict and done.error:
                return
        return
    ctx = multiprocessing.get_context("spawn")  # no model or thread state inherited from the parent
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker, initargs=(settings,)) as pool:
        queue = list(reversed(recordings))
        running: set[Future[Done]] = set()
        stop = False
        while queue or running:
            while queue and not stop and len(running) < 2 * workers:  # a short queue: stop soon when asked
                running.add(pool.submit(analyze_one, queue.pop()))
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                done = fut.result()
                on_done(done)
                stop = stop or (strict and done.error is not None)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker processes)."""
    try:
        import resource
    except ImportError:  # Windows: this process only
        return time.process_time()
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
