"""The training procedure: ResNet50, masked BCE/focal, AdamW + warm-up/cosine, best-by-validation.

:func:`train` runs everything for ``sonotrap train`` (single process or one rank under
torchrun): prepare the run directory (rank 0) or resume it, build datasets, run epochs
(:func:`trainer.engine.train_one_epoch`), validate each epoch, keep ``last.pt`` (exact resume)
and ``best.pt`` (best validation score), stop early or on the time budget, then choose
per-class thresholds on validation and score the held-out test split with them
(:func:`trainer.evaluate.finalize`). The loops live in :mod:`trainer.engine`, the file format
in :mod:`trainer.checkpoint`; this module decides what runs when.

Exact resume: the sample order and every augmentation are functions of (seed, epoch,
index), and the checkpoint holds model, optimizer, scheduler, scaler and RNG states, so
``--resume`` continues as if never interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig
from edge.util.jsonio import json_safe
from trainer import distributed as D
from trainer.averaging import WeightAverage, restore_weights
from trainer.checkpoint import (
    BEST,
    LAST,
    Checkpoint,
    TrainingProgress,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    training_state,
    without_resume_state,
)
from trainer.dataset import AugmentConfig, WindowDataset
from trainer.engine import (
    EpochItems,
    EpochResult,
    MaskedLoss,
    amp_dtype_for,
    evaluate,
    make_loader,
    train_one_epoch,
    unwrap,
)
from trainer.evaluate import finalize
from trainer.losses import positive_weights, sample_weights
from trainer.model import backbone_parameters, build_model
from trainer.prepare import DataSpec, prepare_run
from trainer.pseudo import load_pseudo
from trainer.rundata import DATASET_FILE, SPLIT_FILE, RunData, load_run_data
from trainer.schedule import Budget, lr_lambda

log = logging.getLogger("sonotrap.trainer")

PROBLEMS_FILE = "input_problems.txt"  # one line per skipped input row/file
SUMMARY_FILE = "train_summary.json"
SELECT_BY = ("macro_ap", "macro_roc_auc", "loss")


@dataclass
class TrainArgs:
    out: str
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    weights: str = "imagenet"
    teacher: str | None = None  # distilled from this teacher first (trainer.distill); recorded for the manifest
    freeze_epochs: int = 0
    loss: str = "bce"  # bce | focal
    focal_gamma: float = 2.0
    balance: str = "pos-weight"  # pos-weight | sampler | none
    max_pos_weight: float = 10.0
    patience: int = 8
    select_by: str = "macro_ap"  # validation metric for best.pt / early stopping: see SELECT_BY
    unknown_weight: float = 0.0  # weak labels: unknown entries count as negatives of this weight
    ema: float = 0.0  # decay of a moving average of the weights (0: off); trainer.averaging
    max_minutes: float | None = None
    stop_after: int | None = None  # stop after this many epochs in this session (resume later)
    seed: int = 0
    workers: int = 2
    threads: int | None = None
    amp: bool = True
    device: str = "auto"
    resume: bool = False
    target_precision: float = 0.9
    progress: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainResult:
    run_dir: Path
    best: Path
    epochs_run: int
    best_epoch: int
    metrics: dict[str, Any]
    windows_per_s: float
    wall_s: float


def selection_score(metrics: dict[str, Any], select_by: str = "macro_ap") -> float:
    """Higher is better: the chosen validation metric, or minus the loss when it is undefined.

    Macro-AP is the default. With weak labels (one known class per window, mostly positives)
    masked AP is close to each class's positive rate whatever the model does; there the
    masked ROC-AUC or the loss tells epochs apart.
    """
    value = math.nan if select_by == "loss" else metrics.get(select_by, math.nan)
    return -metrics["loss"] if value is None or math.isnan(value) else value


def validate(model: torch.nn.Module, ds: WindowDataset, args: TrainArgs, device: torch.device,
             criterion: MaskedLoss) -> dict[str, Any]:
    """Validation metrics of this epoch's model, with the loss over known entries."""
    ev = evaluate(unwrap(model), ds, args.batch_size, device, args.workers, args.progress, "val")
    ev.metrics["loss"] = criterion.of_scores(ev.probs, ev.targets, ev.known)
    return ev.metrics


def train(args: TrainArgs, spec: DataSpec | None = None, frontend: FrontendConfig | None = None) -> TrainResult:
    """Run a full training (see module docstring). ``spec`` is not needed when resuming."""
    t_start = time.monotonic()
    info = D.setup(args.device)
    try:
        return _train(args, spec, frontend, info, t_start)
    finally:
        D.teardown(info)


def check_args(args: TrainArgs) -> None:
    if args.loss not in ("bce", "focal") or args.balance not in ("pos-weight", "sampler", "none"):
        raise SonotrapError("--loss must be bce|focal and --balance pos-weight|sampler|none")
    if not 0.0 <= args.unknown_weight <= 1.0:
        raise SonotrapError(f"--unknown-weight {args.unknown_weight} must be in [0, 1] (0: unknown labels ignored)")
    if args.select_by not in SELECT_BY:
        raise SonotrapError(f"--select-by {args.select_by!r} is not one of {', '.join(SELECT_BY)}")
    if not 0.0 <= args.ema < 1.0:
        raise SonotrapError(f"--ema {args.ema} must be in [0, 1) (e.g. 0.995; 0 turns weight averaging off)")


def _prepare(args: TrainArgs, spec: DataSpec | None, frontend: FrontendConfig | None,
             info: D.DistInfo) -> tuple[RunData, Checkpoint | None]:
    """The run's data, and its ``last.pt`` when resuming; prepares the run directory (rank 0)."""
    run_dir = Path(args.out)
    last = run_dir / LAST
    if args.resume:
        if not last.is_file():
            raise SonotrapError(f"--resume: {last} does not exist; train without --resume first")
        return load_run_data(run_dir), load_checkpoint(last)
    if last.is_file():
        raise SonotrapError(
            f"{run_dir} already holds a training run ({LAST}); pass --resume to continue it or a new --out"
        )
    if spec is None:
        if (run_dir / DATASET_FILE).is_file():  # prepared beforehand (a pseudo-label round)
            return load_run_data(run_dir), None
        raise SonotrapError("no training data given; pass --data, --annotations, --raven or --folders")
    if info.is_main:
        prepared = prepare_run(spec, frontend or FrontendConfig(), run_dir)
        if prepared.problems:
            (run_dir / PROBLEMS_FILE).write_text("\n".join(prepared.problems) + "\n", encoding="utf-8")
            log.warning("%d bad input rows/files skipped (listed in %s)", len(prepared.problems),
                        run_dir / PROBLEMS_FILE)
    D.barrier(info)
    return load_run_data(run_dir), None


def resumed_args(args: TrainArgs, saved_args: dict[str, Any], run_dir: Path) -> TrainArgs:
    """The resumed run keeps its own settings, except the time, progress and length knobs."""
    fields = {f.name for f in dataclasses.fields(TrainArgs)}
    saved = {k: v for k, v in saved_args.items() if k in fields}  # not e.g. world_size
    keep = {"max_minutes": args.max_minutes, "stop_after": args.stop_after, "progress": args.progress,
            "workers": args.workers, "threads": args.threads, "resume": True, "epochs": args.epochs,
            "patience": args.patience}
    aug = AugmentConfig(**{**saved["augment"], "mix_snr_db": tuple(saved["augment"]["mix_snr_db"])})
    return TrainArgs(**{**saved, **keep, "augment": aug, "out": str(run_dir)})


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class _Session:
    """Everything one training session works with; its methods are the steps of :func:`_train`."""

    args: TrainArgs
    info: D.DistInfo
    run: RunData
    train_ds: WindowDataset
    val_ds: WindowDataset
    model: torch.nn.Module
    criterion: MaskedLoss
    weights: np.ndarray | None  # per-sample draw weights (--balance sampler)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    budget: Budget
    progress: TrainingProgress
    drop_last: bool
    data_info: dict[str, Any]  # the checkpoint's "data": root, split file, window counts
    ema: WeightAverage | None = None  # --ema: validated, checkpointed and exported instead

    def eval_model(self) -> torch.nn.Module:
        return self.ema.model if self.ema is not None else unwrap(self.model)

    def run_epoch(self, epoch: int) -> EpochResult:
        args, info = self.args, self.info
        frozen = epoch < args.freeze_epochs
        for p in backbone_parameters(unwrap(self.model)):
            p.requires_grad_(not frozen)
        keys = [(epoch, i) for i in D.epoch_indices(len(self.train_ds), epoch, args.seed, self.weights,
                                                    info.rank, info.world_size)]
        loader = make_loader(EpochItems(self.train_ds), keys, args.batch_size, args.workers, self.drop_last)
        return train_one_epoch(
            self.model, loader, self.optimizer, self.scheduler, self.scaler, self.criterion, info.device,
            self.amp_dtype, f"epoch {epoch + 1}/{args.epochs}" + (" (frozen)" if frozen else ""),
            show=args.progress and info.is_main, out_of_time=None if info.enabled else self.budget.exhausted,
            after_step=partial(self.ema.update, unwrap(self.model)) if self.ema is not None else None,
        )

    def end_epoch(self, epoch: int, result: EpochResult, t_epoch: float) -> bool:
        """Rank 0: validate, record, checkpoint; True when early stopping says stop."""
        args, p = self.args, self.progress
        has_val = len(self.val_ds) > 0
        metrics = validate(self.eval_model(), self.val_ds, args, self.info.device, self.criterion) if has_val \
            else {"loss": math.nan}
        score = selection_score(metrics, args.select_by) if has_val else -result.loss
        improved = score > p.best_score
        if improved:
            p.best_score, p.best_epoch, p.bad_epochs = score, epoch + 1, 0
        else:
            p.bad_epochs += 1
        world = self.info.world_size
        row = {"epoch": epoch + 1, "train_loss": result.loss, "val_loss": metrics["loss"],
               "val_macro_ap": metrics.get("macro_ap"), "val_macro_roc_auc": metrics.get("macro_roc_auc"),
               "windows_per_s": result.samples * world / max(result.seconds, 1e-9),
               "epoch_s": time.monotonic() - t_epoch, "lr": self.scheduler.get_last_lr()[0]}
        p.history.append(json_safe(row))
        p.epoch, p.elapsed = epoch + 1, self.budget.used()
        run_dir = self.run.run_dir
        state = self.state(metrics)
        save_checkpoint(state, run_dir / LAST)
        if improved:
            save_checkpoint(without_resume_state(state), run_dir / BEST)
        with (run_dir / "history.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(json_safe(row)) + "\n")
        msg = (f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
               f"val macro-AP {row['val_macro_ap']}, ROC-AUC {row['val_macro_roc_auc']}, "
               f"{row['windows_per_s']:.1f} windows/s{' *best*' if improved else ''}")
        log.info(msg)
        if args.progress:
            tqdm.write(msg, file=sys.stderr)
        return p.bad_epochs >= args.patience

    def state(self, val_metrics: dict[str, Any]) -> dict[str, Any]:
        run, args = self.run, self.args
        state = training_state(
            model=self.eval_model(), labels=run.labels, label_names=run.label_names, frontend=run.frontend,
            val_metrics=val_metrics, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            args={**asdict(args), "world_size": self.info.world_size}, data=self.data_info, progress=self.progress,
        )
        if self.ema is not None:
            state["ema"] = self.ema.state(unwrap(self.model))
        return state


def _session(args: TrainArgs, run: RunData, ckpt: Checkpoint | None, info: D.DistInfo, t_start: float) -> _Session:
    """Datasets, model, loss, optimizer, schedule and scaler; restored from ``ckpt`` when resuming."""
    _seed_everything(args.seed)
    labels, dev = run.labels, info.device
    train_w = run.windows("train")
    train_ds = WindowDataset(run, train_w, train=True, augment=args.augment, seed=args.seed,
                             cache_bytes=1024 * 2**20, pseudo=load_pseudo(run.run_dir, train_w, labels))
    val_ds = WindowDataset(run, run.windows("val"))
    model = build_model(len(labels), "none" if ckpt is not None else args.weights).to(dev)
    model = model.to(memory_format=torch.channels_last)  # 1.5x faster convolutions on CPU (oneDNN)
    ema = WeightAverage(model, args.ema) if args.ema else None
    restore_weights(model, ema, ckpt)  # when resuming
    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=args.freeze_epochs > 0,
        )
    pos_weight = torch.ones(len(labels))
    weights = None
    if args.balance == "pos-weight":
        pos_weight = torch.from_numpy(positive_weights(train_ds.targets, train_ds.known, args.max_pos_weight))
    elif args.balance == "sampler":
        weights = sample_weights(train_ds.targets, train_ds.known)
    criterion = MaskedLoss(pos_weight.to(dev), args.focal_gamma if args.loss == "focal" else 0.0,
                           args.unknown_weight, info)

    optimizer = torch.optim.AdamW(unwrap(model).parameters(), lr=args.lr, weight_decay=args.weight_decay)
    per_rank = -(-len(train_w) // info.world_size)
    drop_last = per_rank > args.batch_size
    steps_per_epoch = per_rank // args.batch_size if drop_last else 1
    progress = TrainingProgress.from_checkpoint(ckpt) if ckpt is not None else TrainingProgress()
    budget = Budget(args.max_minutes * 60 if args.max_minutes else math.inf, progress.elapsed, t_start)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        steps_per_epoch * args.epochs, int(args.warmup_epochs * steps_per_epoch), args.min_lr_ratio,
        budget.fraction()))
    amp_dtype = amp_dtype_for(dev) if args.amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt.raw["optimizer"])
        scheduler.load_state_dict(ckpt.raw["scheduler"])
        scaler.load_state_dict(ckpt.raw["scaler"])
        set_rng_state(ckpt.raw["rng"])
        log.info("resuming %s after epoch %d (best %.4f at epoch %d)", run.run_dir, progress.epoch,
                 progress.best_score, progress.best_epoch)
    data_info = {"root": str(run.root), "split_file": str(run.run_dir / SPLIT_FILE),
                 "num_windows": {"train": len(train_w), "val": len(val_ds), "test": len(run.windows("test"))}}
    return _Session(args, info, run, train_ds, val_ds, model, criterion, weights, optimizer, scheduler, scaler,
                    amp_dtype, budget, progress, drop_last, data_info, ema)


def _train(args: TrainArgs, spec: DataSpec | None, frontend: FrontendConfig | None, info: D.DistInfo,
           t_start: float) -> TrainResult:
    if args.threads:
        torch.set_num_threads(args.threads)
    check_args(args)
    run, ckpt = _prepare(args, spec, frontend, info)
    if ckpt is not None:
        args = resumed_args(args, ckpt.raw["args"], run.run_dir)
    s = _session(args, run, ckpt, info, t_start)
    start_epoch = epoch = s.progress.epoch
    epoch_durations: list[float] = []
    stop_reason = "epochs"
    for epoch in range(start_epoch, args.epochs):
        est = float(np.mean(epoch_durations[-3:])) if epoch_durations else 0.0
        if s.budget.used() + est > s.budget.seconds:
            stop_reason = "time budget"
            break
        t_epoch = time.monotonic()
        result = s.run_epoch(epoch)
        if result.out_of_time:
            stop_reason = "time budget"
        s.progress.samples += result.samples * info.world_size
        s.progress.seconds += result.seconds
        stop = False
        if info.is_main and s.end_epoch(epoch, result, t_epoch):
            stop, stop_reason = True, f"early stopping (no improvement for {args.patience} epochs)"
        stop, stop_reason = D.broadcast(info, (stop, stop_reason))
        epoch_durations.append(time.monotonic() - t_epoch)
        if not stop and args.stop_after is not None and epoch + 1 - start_epoch >= args.stop_after:
            stop, stop_reason = True, f"--stop-after {args.stop_after}"
        if stop or stop_reason == "time budget":
            epoch += 1
            break
    else:
        epoch = args.epochs
    D.barrier(info)
    final: dict[str, Any] = {}
    if info.is_main:
        final = _finish(s, epoch, stop_reason, t_start)
    D.barrier(info)
    p = s.progress
    return TrainResult(run.run_dir, run.run_dir / BEST, epoch, p.best_epoch, final,
                       p.samples / max(p.seconds, 1e-9), time.monotonic() - t_start)


def _finish(s: _Session, epochs_run: int, stop_reason: str, t_start: float) -> dict[str, Any]:
    """Rank 0: thresholds and val/test metrics into best.pt, then ``train_summary.json``."""
    args, p, run_dir = s.args, s.progress, s.run.run_dir
    log.info("training stopped after epoch %d: %s; best epoch %d", epochs_run, stop_reason, p.best_epoch)
    final = finalize(run_dir / BEST, s.run, s.info.device, args.batch_size, args.workers,
                     args.target_precision, args.progress)
    problems = run_dir / PROBLEMS_FILE
    summary = {"stop_reason": stop_reason, "epochs_run": epochs_run, "best_epoch": p.best_epoch,
               "input_problems_skipped": len(problems.read_text().splitlines()) if problems.is_file() else 0,
               "train_windows_per_s": p.samples / max(p.seconds, 1e-9),
               "train_seconds": p.seconds, "wall_s": time.monotonic() - t_start,
               "val": {k: final["val"].get(k) for k in ("macro_ap", "macro_roc_auc", "macro_f1")},
               "test": {k: final.get("test", {}).get(k) for k in ("macro_ap", "macro_roc_auc", "macro_f1")}}
    (run_dir / SUMMARY_FILE).write_text(json.dumps(json_safe(summary), indent=1) + "\n")
    log.info("summary: %s", json.dumps(json_safe(summary)))
    return final
