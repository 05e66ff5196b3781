"""``sonotrap analyze PATH...``: detections for recordings (files or folders, recursive).

Writes ``<out>/detections.csv`` (all recordings) and ``<out>/<name>.selections.txt`` (a Raven
selection table per recording), where ``<name>`` is the recording's path relative to the
common parent of the inputs. Each finished recording is committed at once under
``<out>/results/``, so a re-run skips what is done and a killed run loses only the recordings
in flight. ``--workers N`` analyses in N processes; ``--shard K/N`` takes a stable 1/N of the
recordings (one cluster job each) and ``--merge`` joins the shards' results into the tables.
Unreadable or truncated recordings are reported in one line each, skipped and counted; the
exit status is 1 if any failed (``--strict`` stops at the first).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from edge.commands.run import add_config_arguments, config_from_args
from edge.errors import SonotrapError

log = logging.getLogger("sonotrap.analyze")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="recordings or folders (searched recursively)")
    parser.add_argument("-o", "--out", default="sonotrap-detections", metavar="DIR",
                        help="output folder (default: ./sonotrap-detections)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="analyse in N processes, one model thread each unless --threads (default 1)")
    parser.add_argument("--shard", metavar="K/N",
                        help="analyse only shard K of N (stable by recording name); join with --merge")
    parser.add_argument("--merge", action="store_true",
                        help="only write detections.csv (and --recording-scores) from the results in --out")
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


def _merge(out: Path, args: argparse.Namespace) -> int:
    from edge.analysis.results import merge

    summary = merge(out, scores_path=Path(args.recording_scores) if args.recording_scores else None,
                    agg=args.recording_agg)
    print(f"merged {summary.recordings} recording(s), {summary.audio_s:.1f} s of audio: "
          f"{summary.detections} detection(s) -> {out / 'detections.csv'}"
          + (f"; {len(summary.failed)} could not be read" if summary.failed else "")
          + (f"; {len(summary.missing)} not analysed yet (first: {summary.missing[0]})" if summary.missing else ""),
          file=sys.stderr)
    return 1 if summary.missing else 0


def run(args: argparse.Namespace) -> int:
    from edge.analysis.batch import BatchSettings, Done, cpu_seconds, run_batch
    from edge.analysis.progress import Progress
    from edge.analysis.recording_scores import open_recording_scores
    from edge.analysis.recordings import find_recordings, parse_shard, select_shard
    from edge.analysis.results import check_settings, load_result, settings_key, write_plan
    from edge.inference.detector import resolve_thresholds
    from edge.models.bundle import load_bundle
    from edge.service.daemon import model_bundle_path

    out = Path(args.out)
    if args.merge:
        if args.paths or args.shard:
            raise SonotrapError("--merge joins the results already in --out; pass no PATH and no --shard")
        return _merge(out, args)
    if not args.paths:
        raise SonotrapError("pass the recordings or folders to analyse (or --merge -o DIR)")
    if args.batch < 1 or args.workers < 1:
        raise SonotrapError(f"--batch {args.batch} and --workers {args.workers} must be >= 1")
    shard = parse_shard(args.shard) if args.shard else (1, 1)
    if args.shard and args.recording_scores:
        raise SonotrapError("a shard writes no tables; pass --recording-scores to `sonotrap analyze --merge`")
    cfg = config_from_args(args)
    recordings = select_shard(find_recordings(args.paths), *shard)
    bundle_path = model_bundle_path(cfg)
    bundle = load_bundle(bundle_path)
    resolve_thresholds(bundle.labels, bundle.manifest.thresholds, cfg.detector)  # config errors up front
    key = settings_key(bundle, cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SonotrapError(f"cannot write to output folder {out} ({err.strerror or err}); pass --out") from None
    write_plan(out, shard, [r.name for r in recordings])  # a full disk: the CLI's one-line disk error
    if args.recording_scores:
        open_recording_scores(args.recording_scores).close()  # a bad path fails before hours of work
    todo = []
    for rec in recordings:
        res = load_result(out, rec.name)
        if res is not None and res.error is None:
            check_settings(res, key, out)
        else:
            todo.append(rec)
    threads = args.threads or (cfg.model.threads if args.workers == 1 else 1)
    settings = BatchSettings(str(bundle_path), cfg, threads, out, raven=not args.no_raven, batch=args.batch)
    expected = {rec.name: _info_duration(rec.path) for rec in todo}
    bar = Progress(sum(expected.values()), enabled=not args.no_progress)
    analyzed = failed = detections = 0
    audio_s = 0.0

    def on_done(done: Done) -> None:
        nonlocal analyzed, failed, detections, audio_s
        if args.workers > 1:
            bar.update(expected[done.name])
        if done.error:
            failed += 1
            bar.write(f"skipped: {done.error}")
        else:
            analyzed += 1
        audio_s += done.duration_s
        detections += done.detections

    t0, cpu0 = time.monotonic(), cpu_seconds()
    with bar.capture_logging():
        try:
            run_batch(todo, settings, args.workers, on_done, progress=bar.update if args.workers == 1 else None,
                      strict=args.strict)
        finally:
            bar.close()
    wall, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    skipped = len(recordings) - len(todo)
    print(
        f"analyzed {analyzed} recording(s), {audio_s:.1f} s of audio in {wall:.1f} s with "
        f"{args.workers} worker(s) x {threads} thread(s), {cpu:.1f} s CPU: "
        f"{audio_s / max(wall, 1e-9):.3g} audio-hours per wall-hour, {audio_s / max(cpu, 1e-9):.3g} per CPU-hour "
        f"({bundle.name} {bundle.version}, {detections} detection(s))"
        + (f"; {skipped} already done" if skipped else "")
        + (f"; {failed} recording(s) could not be read" if failed else ""),
        file=sys.stderr,
    )
    if args.shard:
        print(f"shard {shard[0]}/{shard[1]} done; join the shards with `sonotrap analyze --merge -o {out}`",
              file=sys.stderr)
    else:
        _merge(out, args)
    return 1 if failed else 0
