"""``sonotrap evaluate``: metrics report for a checkpoint; per-class thresholds into the checkpoint."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PT", help="RUN_DIR/best.pt (or RUN_DIR)")
    p.add_argument("--split", choices=("val", "test", "train"), default="test")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="folder for metrics.json, summary.md, PNGs")
    p.add_argument("--target-precision", type=float, default=0.9,
                   help="per-class thresholds chosen on val for this precision (fallback: best F1)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", metavar="DIR", help="audio root if it moved since training")
    p.add_argument("--no-write-thresholds", action="store_true", help="leave the checkpoint unchanged")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from edge.errors import SonotrapError
    from trainer.evaluate import evaluate_checkpoint

    if not 0 < args.target_precision <= 1:
        raise SonotrapError(f"--target-precision {args.target_precision} must be in (0, 1]")
    report = evaluate_checkpoint(
        args.checkpoint, args.split, args.out, args.target_precision, args.batch_size, args.workers,
        args.data_root, args.device, progress=not args.no_progress,
        write_thresholds=not args.no_write_thresholds,
    )
    m = report["metrics"]
    print(f"{args.split}: macro-AP {m['macro_ap']:.4f}, macro ROC-AUC {m['macro_roc_auc']:.4f}, "
          f"macro F1 {m['macro_f1']:.4f} over {m['num_windows']} windows; report in {args.out}")
    return 0
