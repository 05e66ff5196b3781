"""``--ema``: an exponential moving average of the weights, kept next to the weights being trained.

Why: with a few thousand weakly labelled windows the weights after any one step are noisy; an
average over the last few hundred steps usually scores better on new recordings. The average
is what validation scores and what ``best.pt``/``last.pt`` store as ``"model"``, so evaluation,
export and quantization use it unchanged; the trained weights travel in ``last.pt``'s
``"ema"`` entry (dropped from ``best.pt``), so ``--resume`` continues both exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """The moving average (BatchNorm statistics included) of a model's weights."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def model(self) -> torch.nn.Module:
        return self.average.module

    def update(self, trained: torch.nn.Module) -> None:
        """After each optimizer step (the first update copies the weights)."""
        self.average.update_parameters(trained)

    def state(self, trained: torch.nn.Module) -> dict[str, Any]:
        """``last.pt``'s ``"ema"`` entry: what a resume needs besides the average itself."""
        return {"decay": self.decay, "trained": trained.state_dict(), "n_averaged": int(self.average.n_averaged)}


def restore_weights(model: torch.nn.Module, average: WeightAverage | None, ckpt) -> None:
    """Load a checkpoint's weights (if any) into the trained model and the average, when both have one."""
    if ckpt is None:
        return
    saved = ckpt.raw.get("ema")
    if average is None or saved is None:
        model.load_state_dict(ckpt.state_dict)
        return
    model.load_state_dict(saved["trained"])
    average.model.load_state_dict(ckpt.state_dict)
    average.average.n_averaged.fill_(int(saved["n_averaged"]))
