"""``sonotrap evaluate``: metrics report for a checkpoint or a bundle, as the user sees it.

``--checkpoint``: window AP/ROC-AUC with thresholds chosen on validation (written back into
the checkpoint), plus the user's view of the FP32 model through the edge pipeline.
``--bundle``: what the daemon would publish with that bundle as it ships (its thresholds and
enabled labels) on a split of a data folder; ``--set-operating-points`` (validation only)
re-estimates the bundle's thresholds and enabled labels and rewrites its manifest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PT", help="RUN_DIR/best.pt (or RUN_DIR)")
    src.add_argument("--bundle", metavar="DIR", help="a model bundle: scored through the edge pipeline")
    p.add_argument("--split", choices=("val", "test", "train"), default="test")
    p.add_argument("--out", metavar="REPORT_DIR", help="folder for metrics.json, summary.md (and PNGs)")
    p.add_argument("--target-precision", type=float, default=0.9,
                   help="per-label precision the thresholds must reach on new recordings")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", metavar="DIR", help="audio root if it moved since training")
    p.add_argument("--no-write-thresholds", action="store_true", help="leave the checkpoint unchanged")
    p.add_argument("--no-user-view", action="store_true",
                   help="checkpoint: skip the edge-pipeline event/presence figures (faster)")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("--bundle mode")
    g.add_argument("--data", metavar="DIR",
                   help="data folder with files.csv + annotations.csv (default: $SONOTRAP_DATA/nips4bplus, "
                        "else ../shared/data/nips4bplus)")
    g.add_argument("--split-file", metavar="JSON", help="split.json of the training run (default: recreate "
                   "the standard split by recording, seed 0, 70/15/15)")
    g.add_argument("--seed", type=int, default=0, help="split seed when recreating it")
    g.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="daemon setting to score with, as in 'sonotrap run' (e.g. detector.enable_labels='\"all\"')")
    g.add_argument("--set-operating-points", action="store_true",
                   help="with --split val: re-estimate thresholds and enabled labels, rewrite the manifest")


def _data_dir(args) -> Path:
    from edge.errors import SonotrapError

    if args.data:
        return Path(args.data)
    env = os.environ.get("SONOTRAP_DATA")
    for cand in ([Path(env) / "nips4bplus"] if env else []) + [Path("../shared/data/nips4bplus")]:
        if (cand / "files.csv").is_file():
            return cand
    raise SonotrapError("no data folder found for --bundle; pass --data DIR (files.csv + annotations.csv)")


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def print_view(view: dict) -> None:
    ev, pr, fa = view["event"], view["presence"], view["false_alarms"]
    print(f"{view['split']}: {view['recordings']} recordings, {view['audio_s']:.0f} s audio, "
          f"{view['enabled_labels']} labels published")
    print(f"  events:   precision {_fmt(ev['precision'])} ({ev['correct']}/{ev['detections']} detections on a call), "
          f"recall {_fmt(ev['recall'])} ({ev['found']}/{ev['calls']} calls found)")
    print(f"  presence: precision {_fmt(pr['precision'])}, recall {_fmt(pr['recall'])} (label per recording)")
    if "window" in view:
        w = view["window"]
        print(f"  windows:  precision {_fmt(w['precision'])}, recall {_fmt(w['recall'])} (pooled)")
    print(f"  call-free audio: {fa['detections']} detections in {fa['audio_s']:.0f} s "
          f"({fa['recordings_with_detections']}/{fa['recordings']} recordings) = {_fmt(fa['per_hour'])} per hour")


def run_bundle(args) -> int:
    from edge.config import load_config
    from edge.errors import SonotrapError
    from edge.models.bundle import load_bundle
    from trainer import edge_eval

    cfg = load_config(None, args.overrides)
    b = load_bundle(args.bundle)
    data = edge_eval.load_split(_data_dir(args), b.labels, args.split, args.split_file, args.seed)
    if args.set_operating_points:
        if args.split != "val":
            raise SonotrapError("--set-operating-points chooses thresholds on validation only; use --split val")
        if not Path(args.bundle).is_dir():
            raise SonotrapError(f"{args.bundle} is not a bundle directory; unpack it to rewrite its manifest")
        points, _ = edge_eval.set_operating_points(args.bundle, data, args.target_precision, threads=args.threads)
        on = [k for k, p in points.items() if p.enabled]
        print(f"{len(on)} of {len(points)} labels enabled at precision >= {args.target_precision}: {', '.join(on) or '-'}")
        b = load_bundle(args.bundle)
    view = edge_eval.user_view_report(b, args.split, data, cfg, threads=args.threads)
    print_view(view)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {"bundle": str(args.bundle), "data": str(data.root), "split_file": args.split_file,
                  "seed": args.seed, "settings": args.overrides, "user_view": view}
        (out / "metrics.json").write_text(json.dumps(_clean(report), indent=1) + "\n", encoding="utf-8")
        print(f"report in {out}")
    return 0


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def run(args: argparse.Namespace) -> int:
    from edge.errors import SonotrapError

    if not 0 < args.target_precision <= 1:
        raise SonotrapError(f"--target-precision {args.target_precision} must be in (0, 1]")
    if args.bundle:
        return run_bundle(args)
    if args.set_operating_points:
        raise SonotrapError("--set-operating-points applies to --bundle; a checkpoint gets them when bundled")
    if not args.out:
        raise SonotrapError("--checkpoint needs --out REPORT_DIR")
    from trainer.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(
        args.checkpoint, args.split, args.out, args.target_precision, args.batch_size, args.workers,
        args.data_root, args.device, progress=not args.no_progress,
        write_thresholds=not args.no_write_thresholds, user_view=not args.no_user_view,
    )
    m = report["metrics"]
    print(f"{args.split}: macro-AP {m['macro_ap']:.4f}, macro ROC-AUC {m['macro_roc_auc']:.4f}, "
          f"macro F1 {m['macro_f1']:.4f} over {m['num_windows']} windows; report in {args.out}")
    if "user_view" in report:
        print_view(report["user_view"])
    return 0
