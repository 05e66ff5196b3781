"""``sonotrap linear-head RUN_DIR``: a logistic-regression fc on the distilled backbone (trainer.linear_head)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run directory trained with --teacher (its best.pt and distill/)")
    parser.add_argument("--backbone", type=Path, default=None,
                        help="ResNet50 state dict (default: RUN/distill/backbone.pt)")
    parser.add_argument("--out-name", default="linear_head.pt", help="checkpoint file name in the run directory")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the feature pass")


def run(args: argparse.Namespace) -> int:
    import torch

    from trainer.linear_head import linear_head

    if args.threads:
        torch.set_num_threads(args.threads)
    out, choice = linear_head(args.run, args.backbone, out_name=args.out_name)
    grid = ", ".join(f"C={c:g}: {ap:.4f}" for c, ap in choice["val_macro_ap"].items())
    print(f"wrote {out}: validation macro-AP {grid}; chose C={choice['c']:g}")
    print(f"next: sonotrap evaluate --checkpoint {out} --split test, then sonotrap quantize {out} -o BUNDLE")
    return 0
