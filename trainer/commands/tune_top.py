"""``sonotrap tune-top RUN_DIR --backbone B --unlabeled DIR``: layer4 taught by a BirdNET probe (trainer.tune_top)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run directory (its best.pt, windows and split)")
    parser.add_argument("--backbone", type=Path, required=True,
                        help="ResNet50 state dict (e.g. RUN/distill/backbone.pt) or a bundle (directory, .tar.gz or "
                             "model.onnx) whose backbone is reused, dequantized")
    parser.add_argument("--unlabeled", type=Path, metavar="DIR", required=True,
                        help="folder of unlabeled recordings (files.csv) of the same region: the probe scores "
                             "their windows, and the last block learns those scores")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/tuned)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs (the best on validation is kept)")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of layer4 (one-cycle)")
    parser.add_argument("--labelled-weight", type=float, default=1.0,
                        help="weight of the labelled train windows' own loss (0: learn from the teacher's scores "
                             "of the unlabeled windows only)")
    parser.add_argument("--teacher-threads", type=int, default=1, help="CPU threads for BirdNET")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for training")


def run(args: argparse.Namespace) -> int:
    import torch

    from trainer.tune_top import TuneArgs, tune_top

    if args.threads:
        torch.set_num_threads(args.threads)
    path, summary = tune_top(args.run, args.backbone, args.unlabeled, args.out,
                             TuneArgs(epochs=args.epochs, lr=args.lr, labelled_weight=args.labelled_weight),
                             teacher_threads=args.teacher_threads)
    print("validation macro-AP by epoch: " + ", ".join(f"{h['epoch']}: {h['val_macro_ap']:.4f}"
                                                        for h in summary["history"]))
    print(f"wrote {path} (epoch {summary['best_epoch']})")
    print(f"next: sonotrap linear-head {args.run} --backbone {path} --unlabeled {args.unlabeled} --pseudo-teacher "
          "birdnet (C chosen on validation; cross-fitted figures would be optimistic: the block learned the train "
          "labels)")
    return 0
