"""``sonotrap tune-top``: the backbone's last block taught by a BirdNET probe's labels on unlabeled audio.

Why: a linear head on the frozen distilled backbone (``sonotrap linear-head``) can only
re-weight features the backbone already has. Letting the last residual block (``layer4``, about
60 % of the network's weights and under a fifth of its compute) move towards the labels
fixes that, but with 7-16 labelled recordings per call type fine-tuning on the labels alone
just memorises them (on nips4bplus validation: macro-AP 0.59, as the frozen head). What works
is many more examples with useful targets: a probe on BirdNET's embeddings (one logistic
regression per label, as the peer baseline), fitted on the TRAIN windows, scores every
unlabeled window, and the block learns those soft scores (binary cross entropy through a
temporary ``fc``) together with the train windows' own labels (``labelled_weight``; with the
teacher's scores alone the gain is about a quarter). The validation windows are never trained
on: their macro-AP after each epoch chooses the epoch, as the trainer does.

The block has learned the train windows' labels, so a head cross-fitted afterwards over train +
validation (``linear-head --folds``) scores the train recordings of its held-out folds better
than it would new recordings: such out-of-fold figures (and operating points set on them) are
optimistic, and the validation split, or the test split, is the yardstick for this backbone.

Only ``layer4`` trains; ``conv1`` to ``layer3`` stay frozen, so their outputs are computed
once and cached in memory (float16), and an epoch costs ``layer4`` forward and backward only:
a few minutes on a laptop CPU instead of hours. Batch norms stay in inference mode (a
backbone read back from a bundle has them folded anyway). Augmentation is a SpecAugment-like
mask of one time column and one frequency row of the 8x8 ``layer3`` map per window, and
dropout before ``fc``.

Writes ``OUT/backbone.pt`` (a torchvision ResNet50 state dict without ``fc``, the format of
``distill/backbone.pt``) and ``OUT/summary.json`` (epochs, validation figures, the teacher and
its licence), which ``sonotrap linear-head --backbone OUT/backbone.pt`` takes as its backbone;
the summary travels into the bundle's provenance. The architecture is unchanged, so export,
INT8 and the compute per audio-second are too. The bundle does not need BirdNET.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.errors import SonotrapError
from trainer.checkpoint import BEST, load_checkpoint
from trainer.metrics import evaluate_scores
from trainer.rundata import image_chunks, load_split_arrays

log = logging.getLogger("sonotrap.trainer")


@dataclass
class TuneArgs:
    epochs: int = 8
    lr: float = 1e-4  # layer4's peak rate; the temporary fc learns 10x faster
    batch: int = 64
    weight_decay: float = 0.05
    dropout: float = 0.3
    labelled_weight: float = 1.0  # the labelled train windows' own loss, next to the teacher-labelled ones
    probe_c: float = 1.0
    seed: int = 0


def _part(net: nn.Module, name: str) -> nn.Module:
    part = getattr(net, name)
    assert isinstance(part, nn.Module), name
    return part


def frozen_stem(net: nn.Module) -> nn.Module:
    """``conv1`` to ``layer3`` of a torchvision ResNet50: the part that does not train."""
    return nn.Sequential(*(_part(net, n) for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")))


@torch.no_grad()
def stem_outputs(stem: nn.Module, images: np.ndarray, batch: int = 64) -> torch.Tensor:
    """``layer3`` maps of ``images`` (N, 1024, H/16, W/16), float16 to halve the memory."""
    stem.eval()
    return torch.cat([stem(torch.from_numpy(np.ascontiguousarray(images[i: i + batch]))).half()
                      for i in range(0, len(images), batch)])


def mask_maps(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Zero one random time column and one random frequency row of each map (a coarse SpecAugment)."""
    n, _, h, w = x.shape
    rows = torch.arange(n)
    x = x.clone()
    x[rows, :, :, torch.randint(0, w, (n,), generator=gen)] = 0
    x[rows, :, torch.randint(0, h, (n,), generator=gen), :] = 0
    return x


def _freeze_batch_norms(block: nn.Module) -> None:
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            m.requires_grad_(False)


def train_layer4(net: nn.Module, maps: torch.Tensor, targets: np.ndarray, known: np.ndarray, weights: np.ndarray,
                 val_maps: torch.Tensor, val_targets: np.ndarray, val_known: np.ndarray, labels: list[str],
                 args: TuneArgs) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """Train ``net.layer4`` (and a temporary fc) on ``layer3`` maps; returns the best epoch's block.

    ``targets`` may be soft (a teacher's probabilities); ``known`` masks entries, ``weights``
    weighs rows. Each label's positives are weighted by its negatives-to-positives ratio (at
    most 50), as the balanced regressions of the linear head. The epoch with the best
    validation macro-AP wins.
    """
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    block = _part(net, "layer4")
    _freeze_batch_norms(block)
    fc = nn.Linear(2048, len(labels))
    model = nn.Sequential(block, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(args.dropout), fc)
    t = torch.from_numpy(np.asarray(targets, np.float32))
    k = torch.from_numpy(np.asarray(known, np.float32))
    w = torch.from_numpy(np.asarray(weights, np.float32))[:, None] * k
    pos, neg = (t * k).sum(0), ((1 - t) * k).sum(0)
    pos_weight = (neg / pos.clamp(min=1e-3)).clamp(1.0, 50.0)
    opt = torch.optim.AdamW([{"params": [p for p in block.parameters() if p.requires_grad], "lr": args.lr},
                             {"params": fc.parameters(), "lr": args.lr * 10}], weight_decay=args.weight_decay)
    per_epoch = max(1, len(maps) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, [args.lr, args.lr * 10], total_steps=args.epochs * per_epoch,
                                                pct_start=0.1)

    def val_ap() -> float:
        model.eval()
        with torch.no_grad():
            probs = torch.cat([torch.sigmoid(model(val_maps[i: i + 128].float()))
                               for i in range(0, len(val_maps), 128)]).numpy()
        model.train()
        _freeze_batch_norms(block)
        return float(evaluate_scores(probs, val_targets, val_known, labels)["macro_ap"])

    best_state = {n: v.clone() for n, v in block.state_dict().items()}
    best, history, t0 = -1.0, [], time.monotonic()
    model.train()
    _freeze_batch_norms(block)
    for epoch in range(args.epochs):
        order = torch.randperm(len(maps), generator=gen)
        total = 0.0
        for i in range(per_epoch):
            idx = order[i * args.batch: (i + 1) * args.batch]
            logits = model(mask_maps(maps[idx].float(), gen))
            loss = nn.functional.binary_cross_entropy_with_logits(logits, t[idx], pos_weight=pos_weight,
                                                                  reduction="none")
            loss = (loss * w[idx]).sum() / w[idx].sum().clamp(min=1e-6)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        ap = val_ap()
        history.append({"epoch": epoch + 1, "loss": total / per_epoch, "val_macro_ap": ap,
                        "seconds": time.monotonic() - t0})
        log.info("tune-top epoch %d/%d: loss %.4f, validation macro-AP %.4f", epoch + 1, args.epochs,
                 total / per_epoch, ap)
        if ap > best:
            best, best_state = ap, {n: v.clone() for n, v in block.state_dict().items()}
    return best_state, history


def tune_top(run_dir: str | Path, backbone_path: str | Path, unlabeled: str | Path, out: str | Path | None = None,
             args: TuneArgs | None = None, teacher_threads: int = 1, teacher_model=None) -> tuple[Path, dict[str, Any]]:
    """Write ``OUT/backbone.pt`` and ``OUT/summary.json`` (default ``RUN_DIR/tuned``); returns the path and summary."""
    from trainer.birdnet import TEACHER_INFO
    from trainer.linear_head import LABELS_LEARNED, load_backbone, teacher_probe
    from trainer.teacher_cache import unlabeled_windows

    args = args or TuneArgs()
    run_dir, backbone_path, unlabeled = Path(run_dir), Path(backbone_path), Path(unlabeled)
    out = Path(out) if out else run_dir / "tuned"
    if args.epochs < 1:
        raise SonotrapError(f"--epochs {args.epochs}: give at least 1")
    for p, hint in ((run_dir / BEST, "train the run first"), (backbone_path, "pass a stage-1 backbone or a bundle")):
        if not p.exists():
            raise SonotrapError(f"{p} does not exist; {hint}")
    ckpt = load_checkpoint(run_dir / BEST)
    u_windows = unlabeled_windows(unlabeled, ckpt.frontend.window_s)
    if not u_windows:
        raise SonotrapError(f"{unlabeled / 'files.csv'} lists no recordings; tune-top learns from unlabeled "
                            "recordings: list them (file,duration_s,sample_rate)")
    net, source = load_backbone(backbone_path)
    data = {s: load_split_arrays(run_dir, s) for s in ("train", "val")}
    n_train = len(data["train"].targets)
    teacher = teacher_probe(run_dir, unlabeled, u_windows, teacher_threads, teacher_model, c=args.probe_c)
    # the probe sees the TRAIN windows' labels only: validation stays held out to choose the epoch
    soft = teacher.scores(np.arange(n_train), data["train"].targets, data["train"].known, args.seed)
    stem = frozen_stem(net)
    u_maps = torch.cat([stem_outputs(stem, images) for images in image_chunks(unlabeled, u_windows, ckpt.frontend)])
    maps = torch.cat([stem_outputs(stem, data["train"].images), u_maps])
    targets = np.concatenate([data["train"].targets, soft])
    known = np.concatenate([data["train"].known, np.ones(soft.shape, bool)])
    weights = np.r_[np.full(n_train, args.labelled_weight), np.ones(len(soft))]
    best_state, history = train_layer4(net, maps, targets, known, weights, stem_outputs(stem, data["val"].images),
                                       data["val"].targets, data["val"].known, ckpt.labels, args)
    _part(net, "layer4").load_state_dict(best_state)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({n: v.contiguous() for n, v in net.state_dict().items() if not n.startswith("fc.")}, out / "backbone.pt")
    best = max(history, key=lambda h: h["val_macro_ap"])
    summary = {"method": "tune-top: layer4 trained on the unlabeled windows' BirdNET-probe scores and the train "
                         "windows' labels (conv1-layer3 frozen); epoch chosen on the validation windows' macro-AP",
               LABELS_LEARNED: "train",  # its own labels, and through the probe's scores in any case
               "source_backbone": str(backbone_path), "source": source, "args": asdict(args),
               "unlabeled": str(unlabeled), "unlabeled_windows": len(u_windows), "train_windows": n_train,
               "best_epoch": best["epoch"], "val_macro_ap": best["val_macro_ap"], "history": history,
               "teacher": {**TEACHER_INFO, "probe_c": args.probe_c, "probe_fitted_on": "train split",
                           "outputs_used": "1024-d embedding: a logistic-regression probe on it scores the unlabeled "
                                           "windows the last block learns from (training only)"}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return out / "backbone.pt", summary

