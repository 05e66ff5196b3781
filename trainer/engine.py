"""One training epoch and one evaluation pass: the loops every trainer command shares.

As in torchvision's reference scripts, :func:`train_one_epoch` runs the batches of one epoch
(mixed precision, masked loss, per-step learning-rate schedule, progress bar) and
:func:`evaluate` is :func:`predict` followed by :func:`trainer.metrics.evaluate_scores`.
Training validates with them every epoch and picks its final thresholds with
:func:`validation_thresholds`; ``sonotrap evaluate`` does the same on a saved checkpoint;
pseudo-labelling scores training windows with :func:`predict`; the INT8 check in
:mod:`trainer.quantize` scores onnxruntime's outputs with the same metrics. So every figure
the trainer reports is measured one way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from trainer import distributed as D
from trainer.dataset import WindowDataset
from trainer.losses import entry_weights, masked_bce
from trainer.metrics import Threshold, choose_thresholds, evaluate_scores
from trainer.rundata import RunData


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    inner = getattr(model, "module", model)
    return inner if isinstance(inner, torch.nn.Module) else model


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


class EpochItems(Dataset):
    """Dataset adapter whose keys are ``(epoch, index)``, so persistent workers know the epoch."""

    def __init__(self, ds: WindowDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        self.ds.set_epoch(epoch)
        return self.ds[i]


def make_loader(ds: Dataset, keys: Sequence, batch_size: int, workers: int, drop_last: bool = False) -> DataLoader:
    return DataLoader(
        ds, batch_size=batch_size, sampler=keys, num_workers=workers, drop_last=drop_last,
        worker_init_fn=_worker_init if workers > 0 else None, persistent_workers=False,
        pin_memory=False,
    )


def progress_interval() -> float:
    """Seconds between progress-bar updates: lively on a terminal, sparse in a log file."""
    return 0.2 if sys.stderr.isatty() else 30.0


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


# --------------------------------------------------------------------------- evaluation


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
                                    mininterval=progress_interval(), file=sys.stderr):
        logits = model(images.to(device, memory_format=torch.channels_last))
        out[idx.numpy()] = torch.sigmoid(logits.float()).cpu().numpy()
    return out


@dataclass
class Evaluation:
    """A model's scores on one set of windows, their labels, and the metrics they give."""

    probs: np.ndarray  # (N, K)
    targets: np.ndarray  # (N, K)
    known: np.ndarray  # (N, K) bool
    metrics: dict[str, Any]


def evaluate(
    model: torch.nn.Module, ds: WindowDataset, batch_size: int, device: torch.device, workers: int = 0,
    progress: bool = False, desc: str = "evaluate", thresholds: dict[str, float] | None = None,
) -> Evaluation:
    """:func:`predict` on ``ds``, then masked AP / ROC-AUC / F1 (F1 at ``thresholds``, default 0.5)."""
    probs = predict(model, ds, batch_size, device, workers, progress, desc)
    return Evaluation(probs, ds.targets, ds.known,
                      evaluate_scores(probs, ds.targets, ds.known, ds.run.labels, thresholds))


def validation_thresholds(
    model: torch.nn.Module, run: RunData, batch_size: int, device: torch.device, workers: int = 0,
    progress: bool = False, target_precision: float = 0.9,
) -> tuple[dict[str, Threshold], Evaluation | None]:
    """Per-class thresholds chosen on the run's validation split, and that split's evaluation
    at them; ``({}, None)`` when the run has no validation windows."""
    windows = run.windows("val")
    if not windows:
        return {}, None
    ds = WindowDataset(run, windows)
    probs = predict(model, ds, batch_size, device, workers, progress, "val")
    th = choose_thresholds(probs, ds.targets, ds.known, run.labels, target_precision)
    metrics = evaluate_scores(probs, ds.targets, ds.known, run.labels, {k: v.threshold for k, v in th.items()})
    return th, Evaluation(probs, ds.targets, ds.known, metrics)


# --------------------------------------------------------------------------- training


@dataclass
class MaskedLoss:
    """The training loss: masked BCE or focal loss (:func:`trainer.losses.masked_bce`),
    normalised by the weighted number of labelled entries across all ranks."""

    pos_weight: torch.Tensor
    gamma: float = 0.0  # 0: BCE; > 0: focal
    unknown_weight: float = 0.0
    info: D.DistInfo = field(default_factory=D.DistInfo)

    def normalizer(self, known: torch.Tensor) -> torch.Tensor:
        """Weighted entry count of this batch over all ranks, divided by the world size (a collective)."""
        return D.all_sum(self.info, entry_weights(known, self.unknown_weight).sum().float()) / self.info.world_size

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor,
                 normalizer: torch.Tensor) -> torch.Tensor:
        return masked_bce(logits, targets, known, self.pos_weight, self.gamma, normalizer=normalizer,
                          unknown_weight=self.unknown_weight)

    def of_scores(self, probs: np.ndarray, targets: np.ndarray, known: np.ndarray) -> float:
        """Validation loss from sigmoid scores, over known entries only."""
        with torch.no_grad():
            logits = torch.logit(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6))
            return float(masked_bce(logits, torch.from_numpy(targets), torch.from_numpy(known),
                                    self.pos_weight.cpu(), self.gamma))


@dataclass
class EpochResult:
    loss: float  # mean training loss of this rank's batches
    samples: int  # windows this rank trained on
    seconds: float  # time spent in the batches
    out_of_time: bool  # stopped mid-epoch by the time budget


def train_one_epoch(
    model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, criterion: MaskedLoss,
    device: torch.device, amp_dtype: torch.dtype | None, desc: str, show: bool = True,
    out_of_time: Callable[[], bool] | None = None, after_step: Callable[[], None] | None = None,
) -> EpochResult:
    """One pass over ``loader``: forward (autocast when ``amp_dtype``), loss, step, LR step.

    ``out_of_time()`` is asked after every batch; True ends the epoch early. ``after_step()``
    runs after each optimizer step (weight averaging).
    """
    model.train()
    running, seen, stopped = 0.0, 0, False
    bar = tqdm(loader, desc=desc, disable=not show, mininterval=progress_interval(), file=sys.stderr)
    t_batches = time.monotonic()
    for images, targets, known, _ in bar:
        images = images.to(device, memory_format=torch.channels_last)
        targets, known = targets.to(device), known.to(device)
        norm = criterion.normalizer(known)
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            logits = model(images)
        loss = criterion(logits, targets, known, norm)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if after_step is not None:
            after_step()
        running += float(loss.detach()) * len(images)
        seen += len(images)
        bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if out_of_time is not None and out_of_time():
            stopped = True
            break
    seconds = time.monotonic() - t_batches
    bar.close()
    return EpochResult(running / max(seen, 1), seen, seconds, stopped)
