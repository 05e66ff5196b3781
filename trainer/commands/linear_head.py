"""``sonotrap linear-head RUN_DIR``: a logistic-regression fc on the distilled backbone (trainer.linear_head)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run directory trained with --teacher (its best.pt and distill/)")
    parser.add_argument("--backbone", type=Path, default=None,
                        help="ResNet50 state dict, or a bundle (directory, .tar.gz or model.onnx) whose backbone "
                             "is reused, dequantized (default: RUN/distill/backbone.pt)")
    parser.add_argument("--out-name", default="linear_head.pt", help="checkpoint file name in the run directory")
    parser.add_argument("--folds", type=int, default=0, metavar="K",
                        help="cross-fit: pool train + validation recordings into K folds by recording; C is "
                             "chosen on out-of-fold macro-AP, the head is fitted on all of them, and the bundle's "
                             "operating points are set on every one (0: fit on train, choose C on validation)")
    parser.add_argument("--unlabeled", type=Path, metavar="DIR", default=None,
                        help="folder of unlabeled recordings (files.csv) of the same region: the head also "
                             "self-trains on the windows it is sure about, and is used only if that scores "
                             "better on the same held-out figure")
    parser.add_argument("--pseudo-high", type=float, default=0.9,
                        help="with --unlabeled: an unlabeled window scored >= this is a positive of that label")
    parser.add_argument("--pseudo-low", type=float, default=0.1,
                        help="with --unlabeled: an unlabeled window scored <= this is a negative of that label")
    parser.add_argument("--pseudo-teacher", choices=["birdnet"], default=None,
                        help="with --unlabeled: the unlabeled windows are labelled by a probe on BirdNET's "
                             "embeddings (fitted on the same labelled windows as the head; needs the "
                             "sonotrap[birdnet] extra; outputs cached in RUN/teacher/) instead of by the head "
                             "itself; the bundle does not need BirdNET")
    parser.add_argument("--speed-copies", type=int, default=0, metavar="N",
                        help="the head also learns from N copies of each labelled window, its recording played "
                             "5-16%% faster or slower (audio the backbone never heard, as in the field); "
                             "figures are still scored on the windows")
    parser.add_argument("--c", type=float, nargs="+", default=None, metavar="C",
                        help="L2 strengths of the logistic regressions to try (default: 0.003 0.01 0.03 0.1); "
                             "each costs one fit per fold and head")
    parser.add_argument("--choose-on", choices=["pooled", "val-recordings"], default="pooled",
                        help="with --folds: the out-of-fold macro-AP that chooses C and the head: over all "
                             "train + validation recordings (pooled), or over the validation recordings alone, "
                             "whose audio a distilled backbone never heard (the field's case)")
    parser.add_argument("--teacher-threads", type=int, default=1, help="CPU threads for BirdNET")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the feature pass")


def run(args: argparse.Namespace) -> int:
    import torch

    from edge.errors import SonotrapError
    from trainer.crossfit import POOLED, UNHEARD
    from trainer.linear_head import C_GRID, linear_head

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.speed_copies < 0:
        raise SonotrapError(f"--speed-copies {args.speed_copies}: give 0 (none) or more copies")
    if args.folds == 1 or args.folds < 0:
        raise SonotrapError(f"--folds {args.folds}: use 0 (no cross-fitting) or at least 2 folds")
    out, choice = linear_head(args.run, args.backbone, out_name=args.out_name, folds=args.folds,
                              unlabeled=args.unlabeled, pseudo=(args.pseudo_high, args.pseudo_low),
                              pseudo_teacher=args.pseudo_teacher, teacher_threads=args.teacher_threads,
                              speed_copies=args.speed_copies, c_grid=tuple(args.c or C_GRID),
                              choose_on=UNHEARD if args.choose_on == "val-recordings" else POOLED)
    what = f"{args.folds}-fold out-of-fold macro-AP" if args.folds else "validation macro-AP"
    st = choice.get("self_training")
    unheard = (st or {}).get("scores_val_recordings") or {"": choice.get("cv_macro_ap_val_recordings") or {}}
    for name, grid in (st["scores"] if st else {"": choice.get("cv_macro_ap") or choice["val_macro_ap"]}).items():
        print(f"{what}{f' ({name} head)' if name else ''}: "
              + ", ".join(f"C={float(c):g}: {ap:.4f}" for c, ap in grid.items()))
        if unheard.get(name):  # what compares backbones: the recordings stage 1 never heard
            print("  on the validation recordings alone (never trained on, not even their audio): "
                  + ", ".join(f"C={float(c):g}: {ap:.4f}" for c, ap in unheard[name].items()))
    pseudo = "teacher-labelled" if st and "teacher" in st else "self-trained"
    head = f"the {pseudo if st['used'] else 'labelled-only'} head, " if st else ""
    on = " (chosen on the validation recordings)" if choice.get("chosen_on") == UNHEARD else ""
    print(f"wrote {out}: {head}C={choice['c']:g}{on}")
    print(f"next: sonotrap evaluate --checkpoint {out} --split test, then sonotrap quantize {out} -o BUNDLE")
    return 0
