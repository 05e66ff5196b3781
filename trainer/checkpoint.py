"""The one checkpoint format of ``sonotrap train``: what a ``.pt`` file holds, how it is written and read.

Every writer goes through :func:`save_checkpoint` (atomic: a crash mid-write leaves the
previous file) and every reader -- resume, evaluation, pseudo-label rounds, export,
quantization, bundling -- through :func:`load_checkpoint`, so no two commands read a
checkpoint by different rules.

Format ``sonotrap-checkpoint/1``: a dict saved with ``torch.save`` holding

- ``format``, ``model`` (state dict), ``labels``, ``label_names``, ``frontend``
  (:class:`FrontendConfig` dict), ``thresholds`` (label -> score, chosen on validation),
  ``metrics`` (split -> metrics), ``args`` (training settings), ``data`` (data root, split);
- for exact resume: ``epoch`` (epochs done), ``optimizer``, ``scheduler``, ``scaler``, ``rng``
  (python/numpy/torch[/cuda] generator states), ``history`` (one row per epoch), ``best``
  (score, epoch, bad_epochs), ``speed`` (samples, seconds, elapsed); ``best.pt`` leaves out
  the optimizer, scheduler, scaler and RNG states (only ``last.pt`` resumes);
- ``sonotrap evaluate`` adds ``target_precision``.

Only the first group is required to read a checkpoint (export and bundling need no more).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig
from edge.util.jsonio import json_safe
from trainer.model import build_model

CHECKPOINT_FORMAT = "sonotrap-checkpoint/1"
BEST, LAST = "best.pt", "last.pt"
REQUIRED = ("model", "labels", "frontend")
_DESCRIBED = {"model", "labels", "label_names", "frontend", "thresholds", "metrics", "args", "data", "format"}


@dataclass
class Checkpoint:
    """A checkpoint as read from ``path``; ``raw`` is the whole stored dict (resume reads its
    optimizer/RNG state from there, and :func:`update_checkpoint` writes it back)."""

    path: Path
    state_dict: dict[str, Any]
    labels: list[str]
    label_names: dict[str, str]
    frontend: FrontendConfig
    thresholds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # every other stored key (epoch, best, ...)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class TrainingProgress:
    """Where a training run stands after ``epoch`` epochs: all it needs, besides the model,
    optimizer, scheduler, scaler and RNG states, to continue exactly."""

    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    samples: int = 0  # training windows seen (all ranks), for the windows/s figure
    seconds: float = 0.0  # time spent in training batches
    elapsed: float = 0.0  # seconds of the time budget used, across resumes

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> TrainingProgress:
        raw = ckpt.raw
        best, speed = raw["best"], raw["speed"]
        return cls(int(raw["epoch"]), best["score"], best["epoch"], best["bad_epochs"],
                   list(raw.get("history", [])), speed["samples"], speed["seconds"],
                   float(speed.get("elapsed", 0.0)))


def resolve_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory: its ``best.pt``, else its ``last.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / BEST if (path / BEST).is_file() else path / LAST
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read ``best.pt``/``last.pt`` written by ``sonotrap train`` (or a run directory holding one)."""
    path = resolve_path(path)
    if not path.is_file():
        raise SonotrapError(f"checkpoint {path} does not exist; pass a run directory or its best.pt")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise SonotrapError(f"checkpoint {path} cannot be read ({err}); re-run training") from None
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise SonotrapError(
            f"checkpoint {path} is not a {CHECKPOINT_FORMAT} file (format {got!r}); "
            "pass a checkpoint from 'sonotrap train'"
        )
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise SonotrapError(f"checkpoint {path} lacks {missing}; re-run training with this sonotrap")
    labels = list(raw["labels"])
    names = dict(raw.get("label_names") or {})
    return Checkpoint(
        path=path,
        state_dict=raw["model"],
        labels=labels,
        label_names={c: names.get(c, c) for c in labels},
        frontend=FrontendConfig.from_dict(raw["frontend"]),
        thresholds={k: float(v) for k, v in (raw.get("thresholds") or {}).items()},
        metrics=dict(raw.get("metrics") or {}),
        args=dict(raw.get("args") or {}),
        data=dict(raw.get("data") or {}),
        extra={k: v for k, v in raw.items() if k not in _DESCRIBED},
        raw=raw,
    )


RESUME_ONLY = ("optimizer", "scheduler", "scaler", "rng", "ema")


def without_resume_state(state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint minus what only an exact resume needs: ``best.pt`` is for evaluation and
    export, and the optimizer's moments would triple its size (280 MB instead of 95 MB for ResNet50)."""
    return {k: v for k, v in state.items() if k not in RESUME_ONLY}


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write atomically: a temporary file next to ``path``, then a rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def update_checkpoint(ckpt: Checkpoint, **changes: Any) -> None:
    """Replace top-level entries of the checkpoint file (e.g. thresholds), keeping the rest."""
    ckpt.raw.update(changes)
    save_checkpoint(ckpt.raw, ckpt.path)


def model_from_checkpoint(ckpt: Checkpoint) -> torch.nn.Module:
    """The trained ResNet50 (logits), in eval mode, for inference only."""
    state = {k.removeprefix("module."): v for k, v in ckpt.state_dict.items()}
    model = build_model(len(ckpt.labels), "none")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise SonotrapError(
            f"checkpoint {ckpt.path} does not fit a ResNet50 with {len(ckpt.labels)} classes "
            f"({str(err).splitlines()[0][:120]}); pass a checkpoint from 'sonotrap train'"
        ) from None
    model.eval()
    model.requires_grad_(False)  # inference only; never touch torch's global grad mode
    return model


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(
    *, model: torch.nn.Module, labels: list[str], label_names: dict[str, str], frontend: FrontendConfig,
    val_metrics: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
    args: dict[str, Any], data: dict[str, Any], progress: TrainingProgress,
) -> dict[str, Any]:
    """The dict saved after each epoch (``last.pt``, and ``best.pt`` when it improved)."""
    return {
        "format": CHECKPOINT_FORMAT, "model": model.state_dict(), "labels": labels,
        "label_names": label_names, "frontend": frontend.to_dict(), "thresholds": {},
        "metrics": {"val": json_safe(val_metrics)}, "epoch": progress.epoch,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "rng": rng_state(), "args": args, "data": data, "history": progress.history,
        "best": {"score": progress.best_score, "epoch": progress.best_epoch, "bad_epochs": progress.bad_epochs},
        "speed": {"samples": progress.samples, "seconds": progress.seconds, "elapsed": progress.elapsed},
    }
