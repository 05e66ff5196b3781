"""Masked multi-label losses: unknown label entries contribute nothing.

The loss is the sum over *known* (window, class) entries divided by the number of known
entries -- not by N*K -- so a validation-style batch with one known class per window has
the same scale as a fully annotated one. Under DDP the caller passes the global
known count (divided by the world size), which makes the averaged gradient exactly that
of the masked mean over all ranks' entries.

``unknown_weight`` w > 0 ("weak assume negative", Cole et al. 2021, *Multi-label learning
from single positive labels*) instead counts each unknown entry as a negative of weight w,
normalised by ``known + w * unknown``: with one known class per window the plain mask leaves
the model nothing that says "not this species", so it learns to score everything high.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def masked_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    focal_gamma: float = 0.0,
    normalizer: torch.Tensor | float | None = None,
    unknown_weight: float = 0.0,
) -> torch.Tensor:
    """Mean BCE-with-logits (optionally focal) over known entries (and weighted unknowns)."""
    logits = logits.float()
    targets = torch.where(known, targets.float(), torch.zeros((), device=logits.device))
    weight = entry_weights(known, unknown_weight).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    if focal_gamma > 0:
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = loss * (1 - p_t).pow(focal_gamma)
    total = torch.where(weight > 0, loss * weight, torch.zeros_like(loss)).sum()
    n = weight.sum() if normalizer is None else normalizer
    if isinstance(n, torch.Tensor):
        return total / n.clamp(min=1.0)
    return total / max(float(n), 1.0)


def entry_weights(known: torch.Tensor, unknown_weight: float = 0.0) -> torch.Tensor:
    """Each (window, class) entry's weight in the loss: 1 known, ``unknown_weight`` unknown."""
    if not 0.0 <= unknown_weight <= 1.0:
        raise ValueError(f"unknown_weight {unknown_weight} must be in [0, 1]")
    return torch.where(known, 1.0, unknown_weight)


def positive_weights(targets: np.ndarray, known: np.ndarray, max_weight: float = 10.0) -> np.ndarray:
    """Per-class ``negatives / positives`` over known entries, clipped to [1, max_weight]."""
    pos = (targets * known).sum(axis=0)
    neg = ((1 - targets) * known).sum(axis=0)
    w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return np.clip(w, 1.0, max_weight).astype(np.float32)


def sample_weights(targets: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Per-window sampling weights giving every class (and 'no call') equal expected draws.

    A window weighs ``max over its positive classes of 1 / class count``; windows with no
    positive share the weight of one extra class.
    """
    pos = (targets * known).sum(axis=0)
    inv = np.where(pos > 0, 1.0 / np.maximum(pos, 1), 0.0)
    # float64 before normalising: numpy's weighted choice wants the sum within ~1e-8 of 1.
    w = (targets * known * inv[None, :]).max(axis=1).astype(np.float64)
    empty = w == 0
    if empty.any():
        w[empty] = 1.0 / empty.sum()
    return w / w.sum()


def cosine_loss(pred: torch.Tensor, target_unit: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos(pred, target)``; ``target_unit`` is already L2-normalised (distillation)."""
    return (1 - (F.normalize(pred.float(), dim=1) * target_unit).sum(dim=1)).mean()
