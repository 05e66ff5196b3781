"""The classifier: torchvision ResNet50 with a new multi-label head.

Initialisation (``weights``):
- ``"imagenet"``: torchvision's weights API (``ResNet50_Weights.IMAGENET1K_V2``), which uses
  torch's cache (``$TORCH_HOME``) or downloads; fails with a clear error offline.
- a file path: a state dict (or checkpoint with ``model``/``state_dict``) of a torchvision
  ResNet50, e.g. the ImageNet file copied onto an offline machine.
- ``"none"``: random init.
The head is replaced by ``Linear(2048, n_classes)`` producing logits; sigmoid is applied in
the loss (training) and baked into the exported ONNX graph (serving).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50

from edge.errors import SonotrapError

IMAGENET_WEIGHTS = ResNet50_Weights.IMAGENET1K_V2


def build_model(num_classes: int, weights: str = "imagenet") -> nn.Module:
    """ResNet50 with ``num_classes`` logits, initialised as ``weights`` says."""
    if num_classes < 1:
        raise SonotrapError("the model needs at least one class; check the label selection")
    if weights == "none":
        model = resnet50(weights=None)
    elif weights == "imagenet":
        try:
            model = resnet50(weights=IMAGENET_WEIGHTS)
        except Exception as err:  # network errors, missing cache, corrupt file
            raise SonotrapError(
                f"ImageNet weights for ResNet50 cannot be loaded ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:120] if str(err) else ''}); put "
                f"{IMAGENET_WEIGHTS.url.rsplit('/', 1)[-1]} in $TORCH_HOME/hub/checkpoints, "
                "pass --weights FILE, or --weights none for random init"
            ) from None
    else:
        model = resnet50(weights=None)
        state, head = _read_backbone(Path(weights))
        model.load_state_dict(state)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    if weights not in ("none", "imagenet") and head["fc.weight"].shape == model.fc.weight.shape:
        # A sonotrap checkpoint of the same classes (e.g. the previous pseudo-label round): keep its head.
        model.fc.load_state_dict({"weight": head["fc.weight"], "bias": head["fc.bias"]})
    return model


def _read_backbone(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(ResNet50 state dict with torchvision's own head, the file's head or that same head)."""
    if not path.is_file():
        raise SonotrapError(
            f"weights file {path} does not exist; pass an existing ResNet50 state dict, "
            "'imagenet' or 'none'"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SonotrapError(f"weights file {path} cannot be read ({err}); re-download it") from None
    if isinstance(state, dict):
        for key in ("model", "state_dict", "model_state"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise SonotrapError(
            f"weights file {path} holds a {type(state).__name__}, not a ResNet50 state dict; pass the right file"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    # A fine-tuned sonotrap checkpoint has a different head size: load the backbone alone.
    head = {k: v for k, v in state.items() if k in ("fc.weight", "fc.bias")}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    reference = resnet50(weights=None).state_dict()
    missing = [k for k in reference if not k.startswith("fc.") and k not in state]
    if missing:
        raise SonotrapError(
            f"weights file {path} is not a torchvision ResNet50 state dict "
            f"({len(missing)} keys missing, e.g. {missing[0]}); pass the right file"
        )
    state["fc.weight"] = reference["fc.weight"]
    state["fc.bias"] = reference["fc.bias"]
    if len(head) != 2:
        head = {"fc.weight": state["fc.weight"], "fc.bias": state["fc.bias"]}
    return state, head


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Everything but the head (frozen during the first epochs when asked)."""
    return [p for name, p in model.named_parameters() if not name.startswith("fc.")]
