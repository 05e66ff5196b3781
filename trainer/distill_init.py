"""Stage 1 started from a bundle: a shipped model's backbone distilled further (``--distill-init BUNDLE``).

Why: a bundle is what reaches users and the fleet; the FP32 checkpoint and the stage-1
projection head it was built from often do not. To distil a shipped model further (on more
unlabeled audio of a region, on speed-changed copies), stage 1 needs a student that trains
like one: a ResNet50 with working batch norm, and a projection head.

- Batch norm. The bundle's convolutions carry their batch norm folded in, read back as an
  identity (:mod:`trainer.onnx_backbone`). In training mode an identity batch norm would
  normalise every activation by its batch's statistics and change the network at the first
  step. So each one gets back the statistics of its own input on the fit windows (mean ``m``
  and variance ``v``, measured with the backbone in eval mode, layer by layer as they arrive),
  with ``gamma = sqrt(v + eps)`` and ``beta = beta_folded + m``: in eval mode the backbone
  computes exactly the bundle's function, and in training mode batch statistics near ``m``
  and ``v`` keep it close.
- Projection head. It is new; fitted first on the frozen backbone's features of the fit
  windows (the 1 - cosine loss), so the whole network's first steps do not follow a random
  head's gradients.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from edge.errors import SonotrapError
from trainer.linear_head import backbone_weights, features
from trainer.losses import cosine_loss

log = logging.getLogger("sonotrap.trainer")

CALIBRATION_WINDOWS = 1024  # fit windows that measure batch-norm statistics and fit the head
HEAD_EPOCHS = 30


def is_bundle(path: Path) -> bool:
    """A bundle directory, bundle archive or exported model file (not a stage-1 state)."""
    from edge.models.archive import is_archive

    return (path.is_dir() and (path / "manifest.json").is_file()) or path.suffix == ".onnx" or (
        path.is_file() and is_archive(path))


@torch.no_grad()
def _features(backbone: nn.Module, images: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.from_numpy(features(backbone, images.float().numpy(), batch)).float()


@torch.no_grad()
def restore_batch_norm(backbone: nn.Module, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Give each identity batch norm its input's statistics on ``images`` (module docstring).

    One pass in eval mode measures every layer's input at once: while the statistics are
    measured no batch norm changes what it computes, so each layer sees the bundle's function.
    Returns that pass's features of ``images``: in eval mode the restored backbone gives the same.
    """
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    if not all(m.running_mean is not None and bool((m.running_mean == 0).all()) and bool((m.weight == 1).all())
               for m in norms):
        raise SonotrapError("the backbone's batch norm is not folded; pass a bundle, or a run "
                            "directory for a stage-1 state")
    sums = {id(m): (torch.zeros(m.num_features, dtype=torch.float64),
                    torch.zeros(m.num_features, dtype=torch.float64)) for m in norms}
    count = {id(m): 0 for m in norms}

    def measure(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().double()
        s, sq = sums[id(module)]
        s += x.sum(dim=(0, 2, 3))
        sq += (x * x).sum(dim=(0, 2, 3))
        count[id(module)] += x.shape[0] * x.shape[2] * x.shape[3]

    hooks = [m.register_forward_pre_hook(measure) for m in norms]
    try:
        feats = _features(backbone, images, batch)
    finally:
        for h in hooks:
            h.remove()
    for m in norms:
        assert m.running_mean is not None and m.running_var is not None
        s, sq = sums[id(m)]
        n = count[id(m)]
        mean = s / n
        var = (sq / n - mean * mean).clamp_min(0.0)
        m.running_mean.copy_(mean.float())
        m.running_var.copy_(var.float())
        m.weight.copy_(torch.sqrt(var + m.eps).float())
        m.bias.add_(mean.float())
    return feats


def fit_projection(head: nn.Module, feats: torch.Tensor, targets: torch.Tensor, seed: int,
                   epochs: int = HEAD_EPOCHS, batch: int = 64, lr: float = 1e-3) -> float:
    """Train ``head`` alone on fixed features (1 - cosine to ``targets``); returns the last epoch's loss."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    head.train()
    loss_sum = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(feats), generator=gen)
        loss_sum = 0.0
        for i in range(0, len(order), batch):
            idx = order[i: i + batch]
            loss = cosine_loss(head(feats[idx]), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(idx)
    return loss_sum / max(len(feats), 1)


def student_from_bundle(backbone: nn.Module, head: nn.Module, path: Path, fit_x: torch.Tensor,
                        fit_t: torch.Tensor, seed: int, batch: int = 64) -> None:
    """Load ``path``'s backbone into a stage-1 student, ready to train.

    ``backbone``: the student's ResNet50 without fc; ``head``: its projection head; ``fit_x`` /
    ``fit_t``: stage 1's fit images and L2-normalised teacher embeddings.
    """
    state, _ = backbone_weights(path)
    missing = backbone.load_state_dict(state, strict=False)
    if missing.missing_keys:
        raise SonotrapError(f"{path} is not a ResNet50 bundle ({len(missing.missing_keys)} weights missing); "
                            "pass a bundle made by sonotrap")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(fit_x), generator=gen)[:CALIBRATION_WINDOWS]
    feats = restore_batch_norm(backbone, fit_x[idx], batch)
    loss = fit_projection(head, feats, fit_t[idx], seed, batch=batch)
    log.info("stage 1 from bundle %s: batch norm restored and projection head fitted on %d windows "
             "(1-cos %.4f)", path, len(idx), loss)
