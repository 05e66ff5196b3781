"""The training loop: ResNet50, masked BCE/focal, AdamW + warm-up/cosine, best-by-val-macro-AP.

One function, :func:`train`, runs everything for ``sonotrap train`` (single process or one
rank under torchrun): prepare the run directory (rank 0), build datasets, train with
progress bars, validate each epoch, keep ``last.pt`` (exact resume) and ``best.pt`` (best
validation macro-AP), stop early or on the time budget, then choose per-class thresholds
on validation and score the held-out test split with them.

Exact resume: the sample order and every augmentation are functions of (seed, epoch,
index), and the checkpoint holds model, optimizer, scheduler, scaler and RNG states, so
``--resume`` continues as if never interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig
from trainer import distributed as D
from trainer.data import DATASET_FILE, SPLIT_FILE, RunData, load_run_data
from trainer.dataset import AugmentConfig, WindowDataset
from trainer.losses import entry_weights, masked_bce, positive_weights, sample_weights
from trainer.metrics import choose_thresholds, evaluate_scores, threshold_dicts
from trainer.model import backbone_parameters, build_model
from trainer.prepare import DataSpec, prepare_run
from trainer.pseudo import load_pseudo

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "sonotrap-checkpoint/1"
BEST, LAST = "best.pt", "last.pt"
PROBLEMS_FILE = "input_problems.txt"  # one line per skipped input row/file


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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _clean(obj):
    """NaN -> None, recursively, so metrics are valid JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


class EpochItems:
    """Dataset adapter whose keys are ``(epoch, index)``, so persistent workers know the epoch."""

    def __init__(self, ds: WindowDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key):
        epoch, i = key
        self.ds.set_epoch(epoch)
        return self.ds[i]


def make_loader(ds, keys, batch_size: int, workers: int, drop_last: bool = False) -> DataLoader:
    return DataLoader(
        ds, batch_size=batch_size, sampler=keys, num_workers=workers, drop_last=drop_last,
        worker_init_fn=_worker_init if workers > 0 else None, persistent_workers=False,
        pin_memory=False,
    )


@torch.no_grad()
def predict(
    model: torch.nn.Module, ds: WindowDataset, batch_size: int, device: torch.device, workers: int = 0,
    progress: bool = False, desc: str = "predict",
) -> np.ndarray:
    """Sigmoid scores ``(N, K)`` for every window of ``ds`` (no augmentation)."""
    model.eval()
    out = np.zeros((len(ds), len(ds.run.labels)), dtype=np.float32)
    loader = make_loader(ds, list(range(len(ds))), batch_size, workers)
    for images, _t, _k, idx in tqdm(loader, desc=desc, disable=not progress, leave=False,
                                    mininterval=_mininterval(), file=sys.stderr):
        logits = model(images.to(device, memory_format=torch.channels_last))
        out[idx.numpy()] = torch.sigmoid(logits.float()).cpu().numpy()
    return out


def amp_dtype_for(device: torch.device) -> torch.dtype | None:
    """Mixed-precision type: fp16 on CUDA, bf16 on CPUs that do bf16 natively, else None.

    On a 2-core AVX512-BF16 CPU bf16 autocast trains ResNet50 ~1.8x faster than fp32 (weights,
    optimizer and loss stay fp32); evaluation and export always run in fp32.
    """
    if device.type == "cuda":
        return torch.float16
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    except (AttributeError, RuntimeError):
        return None


def _mininterval() -> float:
    return 0.2 if sys.stderr.isatty() else 30.0


def lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float, time_fraction=None):
    """Linear warm-up to 1, then cosine down to ``min_ratio``.

    With a time budget, ``time_fraction()`` (share of the budget used) advances the cosine
    when it is ahead of the step count, so a budget-limited run still anneals fully.
    """
    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if time_fraction is not None:
            t = max(t, time_fraction())
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f


def _validate(model, ds, args, info, pos_weight) -> dict[str, Any]:
    probs = predict(_unwrap(model), ds, args.batch_size, info.device, args.workers, args.progress, "val")
    metrics = evaluate_scores(probs, ds.targets, ds.known, ds.run.labels)
    with torch.no_grad():
        logits = torch.logit(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6))
        metrics["loss"] = float(masked_bce(
            logits, torch.from_numpy(ds.targets), torch.from_numpy(ds.known), pos_weight.cpu(),
            args.focal_gamma if args.loss == "focal" else 0.0))
    return metrics


SELECT_BY = ("macro_ap", "macro_roc_auc", "loss")


def _score(metrics: dict[str, Any], select_by: str = "macro_ap") -> float:
    """Higher is better: the chosen validation metric, or minus the loss when it is undefined.

    Macro-AP is the default. With weak labels (one known class per window, mostly positives)
    masked AP is close to each class's positive rate whatever the model does; there the
    masked ROC-AUC or the loss tells epochs apart.
    """
    value = math.nan if select_by == "loss" else metrics.get(select_by, math.nan)
    return -metrics["loss"] if value is None or math.isnan(value) else value


def train(args: TrainArgs, spec: DataSpec | None = None, frontend: FrontendConfig | None = None) -> TrainResult:
    """Run a full training (see module docstring). ``spec`` is not needed when resuming."""
    t_start = time.monotonic()
    info = D.setup(args.device)
    try:
        return _train(args, spec, frontend, info, t_start)
    finally:
        D.teardown(info)


def _prepare(args: TrainArgs, spec, frontend, info) -> tuple[RunData, dict | None]:
    run_dir = Path(args.out)
    last = run_dir / LAST
    ckpt = None
    if args.resume:
        if not last.is_file():
            raise SonotrapError(f"--resume: {last} does not exist; train without --resume first")
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise SonotrapError(f"{last} is not a {CHECKPOINT_FORMAT} checkpoint; pass a sonotrap run")
        return load_run_data(run_dir), ckpt
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


def _train(args: TrainArgs, spec, frontend, info: D.DistInfo, t_start: float) -> TrainResult:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.loss not in ("bce", "focal") or args.balance not in ("pos-weight", "sampler", "none"):
        raise SonotrapError("--loss must be bce|focal and --balance pos-weight|sampler|none")
    if not 0.0 <= args.unknown_weight <= 1.0:
        raise SonotrapError(f"--unknown-weight {args.unknown_weight} must be in [0, 1] (0: unknown labels ignored)")
    if args.select_by not in SELECT_BY:
        raise SonotrapError(f"--select-by {args.select_by!r} is not one of {', '.join(SELECT_BY)}")
    run, ckpt = _prepare(args, spec, frontend, info)
    run_dir = run.run_dir
    if ckpt is not None:  # the resumed run keeps its own settings, except time/progress knobs
        fields = {f.name for f in dataclasses.fields(TrainArgs)}
        saved = {k: v for k, v in ckpt["args"].items() if k in fields}  # not e.g. world_size
        keep = {"max_minutes": args.max_minutes, "stop_after": args.stop_after, "progress": args.progress,
                "workers": args.workers, "threads": args.threads, "resume": True, "epochs": args.epochs,
                "patience": args.patience}
        aug = AugmentConfig(**{**saved["augment"], "mix_snr_db": tuple(saved["augment"]["mix_snr_db"])})
        args = TrainArgs(**{**saved, **keep, "augment": aug, "out": str(run_dir)})
    _seed_everything(args.seed)
    labels = run.labels
    train_w, val_w, test_w = run.windows("train"), run.windows("val"), run.windows("test")
    train_ds = WindowDataset(run, train_w, train=True, augment=args.augment, seed=args.seed,
                             cache_bytes=1024 * 2**20, pseudo=load_pseudo(run_dir, train_w, labels))
    val_ds = WindowDataset(run, val_w)
    dev = info.device
    model = build_model(len(labels), "none" if ckpt is not None else args.weights).to(dev)
    model = model.to(memory_format=torch.channels_last)  # 1.5x faster convolutions on CPU (oneDNN)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
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
    pos_weight = pos_weight.to(dev)
    gamma = args.focal_gamma if args.loss == "focal" else 0.0

    optimizer = torch.optim.AdamW(_unwrap(model).parameters(), lr=args.lr, weight_decay=args.weight_decay)
    per_rank = -(-len(train_w) // info.world_size)
    drop_last = per_rank > args.batch_size
    steps_per_epoch = per_rank // args.batch_size if drop_last else 1
    budget_s = args.max_minutes * 60 if args.max_minutes else math.inf
    elapsed_before = float(ckpt["speed"].get("elapsed", 0.0)) if ckpt is not None else 0.0

    def used() -> float:  # seconds of the time budget used, across resumes
        return elapsed_before + time.monotonic() - t_start

    # The last ~6% of the budget is kept for validation/finalising; the cosine ends before it.
    time_fraction = (lambda: used() / (0.94 * budget_s)) if math.isfinite(budget_s) else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        steps_per_epoch * args.epochs, int(args.warmup_epochs * steps_per_epoch), args.min_lr_ratio,
        time_fraction))
    amp_dtype = amp_dtype_for(dev) if args.amp else None
    use_amp = amp_dtype is not None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_epoch, best_score, best_epoch, bad_epochs, history = 0, -math.inf, -1, 0, []
    train_samples, train_seconds = 0, 0.0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        start_epoch = int(ckpt["epoch"])
        best_score, best_epoch, bad_epochs = ckpt["best"]["score"], ckpt["best"]["epoch"], ckpt["best"]["bad_epochs"]
        history = list(ckpt.get("history", []))
        train_samples, train_seconds = ckpt["speed"]["samples"], ckpt["speed"]["seconds"]
        log.info("resuming %s after epoch %d (best %.4f at epoch %d)", run_dir, start_epoch, best_score, best_epoch)

    data_info = {"root": str(run.root), "split_file": str(run_dir / SPLIT_FILE),
                 "num_windows": {"train": len(train_w), "val": len(val_w), "test": len(test_w)}}
    all_args = {**asdict(args), "world_size": info.world_size}

    def checkpoint(epoch: int, metrics: dict) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "model": _unwrap(model).state_dict(), "labels": labels,
            "label_names": run.label_names, "frontend": run.frontend.to_dict(), "thresholds": {},
            "metrics": {"val": _clean(metrics)}, "epoch": epoch, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(),
            "args": all_args, "data": data_info, "history": history,
            "best": {"score": best_score, "epoch": best_epoch, "bad_epochs": bad_epochs},
            "speed": {"samples": train_samples, "seconds": train_seconds, "elapsed": used()},
        }

    epoch_durations: list[float] = []
    show = args.progress and info.is_main
    train_items = EpochItems(train_ds)
    epoch = start_epoch
    stop_reason = "epochs"
    for epoch in range(start_epoch, args.epochs):
        est = float(np.mean(epoch_durations[-3:])) if epoch_durations else 0.0
        if used() + est > budget_s:
            stop_reason = "time budget"
            break
        t_epoch = time.monotonic()
        frozen = epoch < args.freeze_epochs
        for p in backbone_parameters(_unwrap(model)):
            p.requires_grad_(not frozen)
        keys = [(epoch, i) for i in D.epoch_indices(len(train_w), epoch, args.seed, weights,
                                                    info.rank, info.world_size)]
        loader = make_loader(train_items, keys, args.batch_size, args.workers, drop_last)
        model.train()
        running, seen = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}" + (" (frozen)" if frozen else ""),
                   disable=not show, mininterval=_mininterval(), file=sys.stderr)
        t_batches = time.monotonic()
        for images, targets, known, _ in bar:
            images = images.to(dev, memory_format=torch.channels_last)
            targets, known = targets.to(dev), known.to(dev)
            norm = D.all_sum(info, entry_weights(known, args.unknown_weight).sum().float()) / info.world_size
            with torch.autocast(device_type=dev.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
                logits = model(images)
            loss = masked_bce(logits, targets, known, pos_weight, gamma, normalizer=norm,
                              unknown_weight=args.unknown_weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            running += float(loss.detach()) * len(images)
            seen += len(images)
            bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if not info.enabled and used() > budget_s:
                stop_reason = "time budget"
                break
        batch_s = time.monotonic() - t_batches
        train_samples += seen * info.world_size
        train_seconds += batch_s
        bar.close()
        stop = False
        if info.is_main:
            metrics = _validate(model, val_ds, args, info, pos_weight) if val_w else {"loss": math.nan}
            score = _score(metrics, args.select_by) if val_w else -running / max(seen, 1)
            improved = score > best_score
            if improved:
                best_score, best_epoch, bad_epochs = score, epoch + 1, 0
            else:
                bad_epochs += 1
            row = {"epoch": epoch + 1, "train_loss": running / max(seen, 1), "val_loss": metrics["loss"],
                   "val_macro_ap": metrics.get("macro_ap"), "val_macro_roc_auc": metrics.get("macro_roc_auc"),
                   "windows_per_s": seen * info.world_size / max(batch_s, 1e-9),
                   "epoch_s": time.monotonic() - t_epoch, "lr": scheduler.get_last_lr()[0]}
            history.append(_clean(row))
            state = checkpoint(epoch + 1, metrics)
            _atomic_save(state, run_dir / LAST)
            if improved:
                _atomic_save(state, run_dir / BEST)
            with (run_dir / "history.jsonl").open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(_clean(row)) + "\n")
            msg = (f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
                   f"val macro-AP {row['val_macro_ap']}, ROC-AUC {row['val_macro_roc_auc']}, "
                   f"{row['windows_per_s']:.1f} windows/s{' *best*' if improved else ''}")
            log.info(msg)
            if show:
                tqdm.write(msg, file=sys.stderr)
            stop = bad_epochs >= args.patience
            if stop:
                stop_reason = f"early stopping (no improvement for {args.patience} epochs)"
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
        log.info("training stopped after epoch %d: %s; best epoch %d", epoch, stop_reason, best_epoch)
        final = finalize(run_dir / BEST, run, info.device, args.batch_size, args.workers,
                         args.target_precision, args.progress)
        problems = run_dir / PROBLEMS_FILE
        summary = {"stop_reason": stop_reason, "epochs_run": epoch, "best_epoch": best_epoch,
                   "input_problems_skipped": len(problems.read_text().splitlines()) if problems.is_file() else 0,
                   "train_windows_per_s": train_samples / max(train_seconds, 1e-9),
                   "train_seconds": train_seconds, "wall_s": time.monotonic() - t_start,
                   "val": {k: final["val"].get(k) for k in ("macro_ap", "macro_roc_auc", "macro_f1")},
                   "test": {k: final.get("test", {}).get(k) for k in ("macro_ap", "macro_roc_auc", "macro_f1")}}
        (run_dir / "train_summary.json").write_text(json.dumps(_clean(summary), indent=1) + "\n")
        log.info("summary: %s", json.dumps(_clean(summary)))
    D.barrier(info)
    return TrainResult(run_dir, run_dir / BEST, epoch, best_epoch, final,
                       train_samples / max(train_seconds, 1e-9), time.monotonic() - t_start)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / BEST
    if not path.is_file():
        raise SonotrapError(f"checkpoint {path} does not exist; pass RUN_DIR/best.pt of a training run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise SonotrapError(f"checkpoint {path} cannot be read ({err}); pass a sonotrap checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SonotrapError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint; pass RUN_DIR/best.pt")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> torch.nn.Module:
    model = build_model(len(ckpt["labels"]), "none")
    model.load_state_dict(ckpt["model"])
    return model.eval()


def finalize(
    best_path: Path, run: RunData, device: torch.device, batch_size: int = 32, workers: int = 0,
    target_precision: float = 0.9, progress: bool = False,
) -> dict[str, Any]:
    """Thresholds from validation, val/test metrics with them; written into the checkpoint."""
    ckpt = load_checkpoint(best_path)
    model = model_from_checkpoint(ckpt).to(device)
    out: dict[str, Any] = {}
    val_w = run.windows("val")
    thresholds: dict[str, float] = {}
    if val_w:
        ds = WindowDataset(run, val_w)
        probs = predict(model, ds, batch_size, device, workers, progress, "val")
        th = choose_thresholds(probs, ds.targets, ds.known, run.labels, target_precision)
        thresholds = {k: v.threshold for k, v in th.items()}
        out["val"] = evaluate_scores(probs, ds.targets, ds.known, run.labels, thresholds)
        out["val"]["thresholds"] = threshold_dicts(th)
        out["val"]["target_precision"] = target_precision
    test_w = run.windows("test")
    if test_w:
        ds = WindowDataset(run, test_w)
        probs = predict(model, ds, batch_size, device, workers, progress, "test")
        out["test"] = evaluate_scores(probs, ds.targets, ds.known, run.labels, thresholds or None)
    ckpt["thresholds"] = thresholds
    ckpt["metrics"] = _clean({**ckpt.get("metrics", {}), **out})
    _atomic_save(ckpt, best_path)
    return out
