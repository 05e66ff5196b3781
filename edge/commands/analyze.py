"""``sonotrap analyze PATH...``: detections for recordings (files or folders, recursive).

Writes ``<out>/detections.csv`` (all recordings) and ``<out>/<recording>.selections.txt``
(a Raven selection table per recording). Unreadable or truncated recordings are reported
in one line each, skipped and counted; the exit status is 1 if any failed (``--strict``
stops at the first).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

from edge.commands.run import add_config_arguments, config_from_args
from edge.errors import SonotrapError

log = logging.getLogger("sonotrap.analyze")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="recordings or folders (searched recursively)")
    parser.add_argument("-o", "--out", default="sonotrap-detections", metavar="DIR",
                        help="output folder (default: ./sonotrap-detections)")
    parser.add_argument("--batch", type=int, default=16, metavar="N", help="windows per model call (default 16)")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable recording")
    parser.add_argument("--no-raven", action="store_true", help="skip the per-recording Raven selection tables")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--recording-scores", metavar="PATH",
                        help="also write a recordings x labels CSV of recording-level scores")
    parser.add_argument("--recording-agg", choices=("max", "top2mean"), default="max",
                        help="recording score: best window (max, default) or mean of the two best windows")
    add_config_arguments(parser)


def _info_duration(path: Path) -> float:
    try:
        import soundfile as sf

        return float(sf.info(str(path)).duration)
    except Exception:  # unreadable files are reported when analysed
        return 0.0


def run(args: argparse.Namespace) -> int:
    from edge.analysis.analyze import (
        CSV_HEADER,
        Progress,
        analyze_file,
        csv_rows,
        find_recordings,
        write_raven,
    )
    from edge.analysis.recording_scores import RecordingScores, open_recording_scores, write_recording_scores
    from edge.inference.detector import resolve_thresholds
    from edge.inference.runtime import Classifier
    from edge.models.bundle import load_bundle
    from edge.service.daemon import model_bundle_path

    if args.batch < 1:
        raise SonotrapError(f"--batch {args.batch} must be >= 1")
    cfg = config_from_args(args)
    recordings = find_recordings(args.paths)
    bundle = load_bundle(model_bundle_path(cfg))
    resolve_thresholds(bundle.labels, bundle.manifest.thresholds, cfg.detector)  # config errors up front
    classifier = Classifier(bundle, cfg.model.threads)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        csv_fh = open(out / "detections.csv", "w", newline="", encoding="utf-8")  # noqa: SIM115
    except OSError as err:
        raise SonotrapError(f"cannot write to output folder {out} ({err.strerror or err}); pass --out") from None
    scores_fh = open_recording_scores(args.recording_scores) if args.recording_scores else None
    total = sum(_info_duration(p) for p, _ in recordings)
    bar = Progress(total, enabled=not args.no_progress)
    failed = detections = 0
    audio_s = 0.0
    t0 = time.monotonic()
    fe = bundle.frontend
    rec_scores: list[tuple[str, object]] = []
    with csv_fh:
        writer = csv.writer(csv_fh)
        writer.writerow(CSV_HEADER)
        for path, root in recordings:
            acc = RecordingScores(len(bundle.labels)) if scores_fh is not None else None
            result = analyze_file(path, classifier, cfg, batch=args.batch, progress=bar.update,
                                  on_scores=acc.add if acc is not None else None)
            rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
            if result.error:
                failed += 1
                bar.write(f"skipped: {result.error}")
                if args.strict:
                    break
                continue
            audio_s += result.duration_s
            detections += len(result.events)
            writer.writerows(csv_rows(result, str(rel)))
            if acc is not None:
                rec_scores.append((str(rel), acc.result(args.recording_agg)))
            csv_fh.flush()
            if not args.no_raven:
                write_raven(out / rel.with_name(rel.name + ".selections.txt"), result.events, fe.fmin, fe.fmax)
    bar.close()
    if scores_fh is not None:
        with scores_fh:
            write_recording_scores(scores_fh, bundle.labels, rec_scores)
    elapsed = time.monotonic() - t0
    ok = len(recordings) - failed
    print(
        f"analyzed {ok} recording(s), {audio_s:.1f} s of audio in {elapsed:.1f} s "
        f"({audio_s / max(elapsed, 1e-9):.0f}x real time) with {bundle.name} {bundle.version}: "
        f"{detections} detection(s) -> {out / 'detections.csv'}"
        + (f"; {failed} recording(s) could not be read" if failed else ""),
        file=sys.stderr,
    )
    return 1 if failed else 0
