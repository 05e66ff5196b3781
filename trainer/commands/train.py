"""``sonotrap train``: labelled recordings -> run directory with best.pt / last.pt.

torch is imported only inside :func:`run`, so ``sonotrap --help`` works on an edge install.
"""

from __future__ import annotations

import argparse
import os

from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data (one of --data, --annotations, --raven, --folders, --validation)")
    d.add_argument("--data", metavar="DIR", help="folder with annotations.csv (+ files.csv), e.g. nips4bplus")
    d.add_argument("--annotations", metavar="CSV", help="table file,start_s,end_s,label[,present]")
    d.add_argument("--files", metavar="CSV", help="with --annotations: every labelled file (no row = negative)")
    d.add_argument("--root", metavar="DIR", help="with --annotations: folder the file paths are relative to")
    d.add_argument("--raven", metavar="DIR", help="folder of Raven selection tables + recordings")
    d.add_argument("--folders", metavar="DIR", help="folder-per-class clips DIR/<label>/*.wav")
    d.add_argument("--validation", action="append", default=[], metavar="CSV",
                   help="validation export (Arbimon pattern matching or file,start_s,end_s,label,present); "
                        "repeatable; only the validated class of each detection is known (weak labels)")
    d.add_argument("--strict", action="store_true", help="stop at the first bad input row instead of skipping")
    d.add_argument("--min-examples", type=int, default=1, help="drop labels with fewer calls (default 1)")
    d.add_argument("--include", type=_names, default=[], metavar="A,B", help="keep only these labels")
    d.add_argument("--exclude", type=_names, default=[], metavar="A,B", help="drop these labels")
    d.add_argument("--merge", metavar="CSV", help="mapping file from,to (e.g. Erirub_call,Erirub)")
    d.add_argument("--names", metavar="CSV", help="human label names code,name (default: from the code)")
    d.add_argument("--species", metavar="CSV",
                   help="species table code,scientific_name,common_name[,group], code = label prefix "
                        "(Erirub for Erirub_song): names like 'European Robin (Erithacus rubecula) song'")
    d.add_argument("--min-overlap", type=float, default=0.25,
                   help="a call labels a window when overlapping >= this fraction of call or window")
    d.add_argument("--min-spacing", type=float, default=0.0, metavar="S",
                   help="calls closer than S s to a kept window with their label get no own window")
    d.add_argument("--split", type=_floats, default=(0.7, 0.15, 0.15), metavar="TR,VA,TE",
                   help="fractions of recordings for train,val,test (default 0.7,0.15,0.15)")
    d.add_argument("--split-file", metavar="JSON", help="reuse the split.json of another run")

    f = p.add_argument_group("frontend (written into the model)")
    f.add_argument("--image-size", type=int, help="n_mels = n_frames = N (default 128)")
    f.add_argument("--n-mels", type=int)
    f.add_argument("--n-frames", type=int)
    f.add_argument("--sample-rate", type=int)
    f.add_argument("--fmin", type=float)
    f.add_argument("--fmax", type=float)

    t = p.add_argument_group("training")
    t.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (checkpoints, split, logs)")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--warmup-epochs", type=float, default=1.0)
    t.add_argument("--weights", default="imagenet", help="imagenet | none | PATH to a ResNet50 state dict")
    t.add_argument("--freeze-epochs", type=int, default=0, help="train only the head for the first N epochs")
    t.add_argument("--loss", choices=("bce", "focal"), default="bce")
    t.add_argument("--focal-gamma", type=float, default=2.0)
    t.add_argument("--balance", choices=("pos-weight", "sampler", "none"), default="pos-weight",
                   help="class imbalance: per-class positive weights, balanced sampling, or nothing")
    t.add_argument("--max-pos-weight", type=float, default=10.0)
    t.add_argument("--patience", type=int, default=8, help="early stopping: epochs without val improvement")
    t.add_argument("--select-by", choices=("macro_ap", "macro_roc_auc", "loss"), default="macro_ap",
                   help="validation metric that picks best.pt and drives early stopping (weak labels: macro_roc_auc)")
    t.add_argument("--max-minutes", type=float, help="time budget: stop gracefully with the best checkpoint")
    t.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs in this session (--resume later)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=2, help="data loading worker processes")
    t.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--no-amp", action="store_true", help="train in fp32 (default: fp16 mixed precision on GPU, bf16 on CPUs with native bf16)")
    t.add_argument("--resume", action="store_true", help="continue RUN_DIR/last.pt exactly")
    t.add_argument("--target-precision", type=float, default=0.9, help="for the per-class thresholds")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--unknown-weight", type=float, default=0.0, metavar="W",
                   help="weak labels: count unknown entries as negatives of weight W in [0, 1] "
                        "(0: ignored; 1/(classes-1) is 'weak assume negative')")
    t.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate, keep and export an exponential moving average of the weights with this "
                        "per-step decay (e.g. 0.995, about 200 steps; 0: off)")

    te = p.add_argument_group("teacher distillation (needs the optional extra: pip install 'sonotrap[birdnet]')")
    te.add_argument("--teacher", choices=("birdnet",),
                    help="stage 1: learn BirdNET's embedding of each window (labelled train + --unlabeled "
                         "windows), stage 2: fine-tune on the labels; the bundle does not need BirdNET")
    te.add_argument("--unlabeled", metavar="DIR", help="folder of unlabeled recordings with files.csv (stage 1)")
    te.add_argument("--distill-epochs", type=int, default=30, help="stage-1 epochs (default 30)")
    te.add_argument("--distill-minutes", type=float, metavar="M",
                    help="stage-1 time budget incl. the teacher cache (default half of --max-minutes)")
    te.add_argument("--distill-lr", type=float, default=1e-3)
    te.add_argument("--teacher-threads", type=int, default=1, help="threads for BirdNET (teacher cache)")
    te.add_argument("--distill-mixes", type=int, default=0, metavar="N",
                    help="stage 1 also fits N mixes of two recordings' windows (the second 0-12 dB quieter), "
                         "each with the teacher's output on that mix (teacher cached; default 0)")
    te.add_argument("--distill-speed", type=int, default=0, metavar="K",
                    help="stage 1 also fits K copies of each --unlabeled recording played 5-16 %% faster or "
                         "slower (pitch and tempo), each with the teacher's output on that copy (default 0)")
    te.add_argument("--distill-tilt", type=int, default=0, metavar="K",
                    help="stage 1 also fits K copies of each --unlabeled recording with its timbre tilted by "
                         "1.5-4.5 dB per octave either way, each with the teacher's output on that copy (default 0)")
    te.add_argument("--distill-init", metavar="RUN_DIR|BUNDLE",
                    help="start stage 1 from another run's stage 1 (its distill/last.pt: backbone and "
                         "projection head) or from a bundle's backbone (batch norm restored, a new "
                         "projection head fitted first) instead of --weights")

    ps = p.add_argument_group("pseudo-labelling (weak labels: fill unknown entries with confident scores)")
    ps.add_argument("--pseudo-rounds", type=int, default=0, metavar="N",
                    help="after training, N rounds that retrain with pseudo labels (RUN_DIR/round-N)")
    ps.add_argument("--pseudo-high", type=float, default=0.9, help="unknown entries scored >= this become present")
    ps.add_argument("--pseudo-low", type=float, default=0.1, help="unknown entries scored <= this become absent")
    ps.add_argument("--pseudo-epochs", type=int, metavar="N", help="epochs per pseudo-label round (default --epochs)")

    a = p.add_argument_group("augmentation")
    a.add_argument("--no-augment", action="store_true")
    a.add_argument("--shift", type=float, default=0.5, metavar="S", help="max time shift around the call")
    a.add_argument("--gain-db", type=float, default=6.0)
    a.add_argument("--mix-prob", type=float, default=0.5, help="chance to mix in a negative window")
    a.add_argument("--negatives", type=float, default=0.0, metavar="P",
                   help="chance a training item is replaced by synthetic silence/noise with every label "
                        "absent (teaches the model to stay quiet on empty audio)")
    a.add_argument("--time-masks", type=int, default=2)
    a.add_argument("--freq-masks", type=int, default=2)


def frontend_from_args(args: argparse.Namespace) -> FrontendConfig:
    base = FrontendConfig()
    kw: dict = {}
    if args.image_size:
        kw["n_mels"] = kw["n_frames"] = args.image_size
    for name in ("n_mels", "n_frames", "sample_rate", "fmin", "fmax"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if "sample_rate" in kw and "fmax" not in kw:
        kw["fmax"] = min(base.fmax, kw["sample_rate"] / 2)
    if "n_frames" in kw or "sample_rate" in kw:
        # Keep the window covered: n_frames hops span window_s.
        rate, frames = kw.get("sample_rate", base.sample_rate), kw.get("n_frames", base.n_frames)
        kw["hop_length"] = max(1, int(round(base.window_s * rate)) // frames)
    return FrontendConfig(**kw)


def run(args: argparse.Namespace) -> int:
    from trainer.dataset import AugmentConfig
    from trainer.labels import LabelSelection, read_mapping
    from trainer.prepare import DataSpec
    from trainer.train import PROBLEMS_FILE, TrainArgs, train
    from trainer.windows import WindowConfig

    if len(args.split) != 3:
        raise SonotrapError(f"--split needs three fractions train,val,test; got {args.split}")
    spec = None
    if not args.resume:
        spec = DataSpec(
            data=args.data, annotations=args.annotations, files=args.files, raven=args.raven,
            folders=args.folders, validations=args.validation, root=args.root, strict=args.strict,
            selection=LabelSelection(args.min_examples, args.include, args.exclude,
                                     read_mapping(args.merge) if args.merge else {}),
            names_file=args.names, species_file=args.species,
            window=WindowConfig(min_overlap=args.min_overlap, min_spacing_s=args.min_spacing),
            fractions=tuple(args.split), split_file=args.split_file, seed=args.seed,
        )
    if not 0.0 <= args.negatives <= 1.0:
        raise SonotrapError(f"--negatives {args.negatives} must be a probability within 0..1")
    augment = AugmentConfig(
        enabled=not args.no_augment, shift_s=args.shift, gain_db=args.gain_db, mix_prob=args.mix_prob,
        time_masks=args.time_masks, freq_masks=args.freq_masks, synthetic_negatives=args.negatives,
    )
    targs = TrainArgs(
        out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, weights=args.weights,
        freeze_epochs=args.freeze_epochs, loss=args.loss, focal_gamma=args.focal_gamma,
        balance=args.balance, max_pos_weight=args.max_pos_weight, patience=args.patience, select_by=args.select_by,
        unknown_weight=args.unknown_weight, teacher=args.teacher, ema=args.ema,
        max_minutes=args.max_minutes, stop_after=args.stop_after, seed=args.seed, workers=args.workers,
        threads=args.threads,
        amp=not args.no_amp, device=args.device, resume=args.resume,
        target_precision=args.target_precision, progress=not args.no_progress, augment=augment,
    )
    if args.pseudo_rounds < 0:
        raise SonotrapError(f"--pseudo-rounds {args.pseudo_rounds} must be >= 0")
    if args.teacher and args.pseudo_rounds:
        raise SonotrapError("--teacher and --pseudo-rounds cannot be combined yet; run them one after the other")
    if args.pseudo_rounds:
        return _run_rounds(args, targs, spec)
    if args.teacher:
        return _run_teacher(args, targs, spec)
    result = train(targs, spec, frontend_from_args(args))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 reports for all
        return 0
    test = result.metrics.get("test", {})
    val = result.metrics.get("val", {})
    print(f"best checkpoint: {result.best} (epoch {result.best_epoch} of {result.epochs_run})")
    print(f"val  macro-AP {val.get('macro_ap')}, macro ROC-AUC {val.get('macro_roc_auc')}")
    print(f"test macro-AP {test.get('macro_ap')}, macro ROC-AUC {test.get('macro_roc_auc')}")
    print(f"{result.windows_per_s:.1f} training windows/s, wall time {result.wall_s / 60:.1f} min")
    problems = result.run_dir / PROBLEMS_FILE
    if problems.is_file():
        print(f"{len(problems.read_text().splitlines())} bad input rows/files skipped; listed in {problems}")
    return 0


def _run_teacher(args: argparse.Namespace, targs, spec) -> int:
    from trainer.distill import DistillArgs, train_with_teacher

    dargs = DistillArgs(epochs=args.distill_epochs, batch_size=args.batch_size, lr=args.distill_lr,
                        minutes=args.distill_minutes, unlabeled=args.unlabeled,
                        teacher_threads=args.teacher_threads, mixes=args.distill_mixes,
                        speed=args.distill_speed, tilt=args.distill_tilt, init=args.distill_init)
    result, summary = train_with_teacher(targs, dargs, spec, frontend_from_args(args))
    test, val = result.metrics.get("test", {}), result.metrics.get("val", {})
    print(f"stage 1: best epoch {summary['best_epoch']} of {summary['epochs_run']}, "
          f"val 1-cosine {summary['best_val_loss']:.4f} ({summary['backbone']})")
    print(f"best checkpoint: {result.best} (epoch {result.best_epoch} of {result.epochs_run})")
    print(f"val  macro-AP {val.get('macro_ap')}, macro ROC-AUC {val.get('macro_roc_auc')}")
    print(f"test macro-AP {test.get('macro_ap')}, macro ROC-AUC {test.get('macro_roc_auc')}")
    return 0


def _run_rounds(args: argparse.Namespace, targs, spec) -> int:
    from trainer.pseudo_rounds import ROUNDS_FILE, train_rounds

    records = train_rounds(targs, spec, frontend_from_args(args), args.pseudo_rounds, args.pseudo_high,
                           args.pseudo_low, args.pseudo_epochs)
    for r in records:
        val, test = r.get("val") or {}, r.get("test") or {}
        added = r.get("pseudo")
        extra = f", pseudo labels +{added['added_present']} present / +{added['added_absent']} absent" if added else ""
        print(f"round {r['round']}: val macro-AP {val.get('macro_ap')}, test macro-AP {test.get('macro_ap')}, "
              f"test macro ROC-AUC {test.get('macro_roc_auc')}{extra} ({r['run_dir']}/best.pt)")
        if added and added.get("warning"):
            print(f"  warning: {added['warning']}")
    print(f"per-round report: {args.out}/{ROUNDS_FILE}")
    return 0
