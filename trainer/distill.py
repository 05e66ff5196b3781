"""``sonotrap train --teacher birdnet``: distil BirdNET's embedding into the ResNet50, then fine-tune.

Why it exists: the labelled set has 7-16 recordings per call type, too few for a ResNet50
from scratch, while BirdNET's embedding separates these calls well (a linear probe on it
beats our model). Teaching the ResNet50 to predict that embedding needs no labels, so the
unlabeled recordings of the same region count too; the fine-tuned model then runs without
BirdNET (the teacher's CC BY-NC-SA weights never enter a bundle; the manifest names it).

Stage 1 (this module, ``RUN_DIR/distill/``): the ResNet50 (our frontend's 128x128 images, the
same computation as the edge) plus a small projection head (2048 -> 1024 -> 1024, thrown
away afterwards) learns to predict BirdNET's L2-normalised embedding of the same window
(loss ``1 - cosine``), on the labelled TRAINING windows and the unlabeled windows; the
validation windows' loss picks the best epoch (``distill/backbone.pt``, a torchvision
ResNet50 state dict). Images are computed once (no time shift: the teacher saw that exact
audio) and augmented with SpecAugment-style masks. ``distill/last.pt`` is written every epoch
and ``--resume`` continues it exactly; a stage 1 that stopped on its time budget is continued
by ``--resume`` (with a larger ``--distill-minutes``) as long as stage 2 has not started.

Stage 2 is the ordinary trainer (:func:`trainer.train.train`) started from that backbone.
``--max-minutes`` covers both stages: stage 1 (with the teacher cache) gets
``--distill-minutes`` (default half), stage 2 what is left.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.errors import SonotrapError
from trainer.birdnet import EMBEDDING_DIM, l2_normalise
from trainer.checkpoint import LAST, rng_state, save_checkpoint, set_rng_state
from trainer.distill_init import is_bundle, student_from_bundle
from trainer.engine import amp_dtype_for
from trainer.losses import cosine_loss
from trainer.model import build_model
from trainer.rundata import DATASET_FILE, AudioCache, RunData, load_run_data, mixed_image, window_image
from trainer.schedule import lr_lambda
from trainer.teacher_cache import MIXED, SPEED, TILTED, UNLABELED, TeacherWindow, ensure_cache, source_roots
from trainer.train import TrainArgs, train

log = logging.getLogger("sonotrap.trainer")

DISTILL_DIR = "distill"
STATE_FORMAT = "sonotrap-distill/1"
BACKBONE = "backbone.pt"
SUMMARY = "summary.json"
TEACHERS = ("birdnet",)


@dataclass
class DistillArgs:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 0.5
    min_lr_ratio: float = 0.01
    minutes: float | None = None  # stage-1 budget, teacher cache included
    unlabeled: str | None = None  # folder with files.csv of unlabeled recordings
    teacher_threads: int = 1
    time_masks: int = 2
    freq_masks: int = 2
    mask_frac: float = 0.08
    mixes: int = 0  # mixed windows (two recordings summed) added to the fit set, teacher on the mix
    speed: int = 0  # speed-changed copies of each unlabeled recording added to the fit set, teacher on each
    tilt: int = 0  # spectrally tilted copies of each unlabeled recording added to the fit set, teacher on each
    init: str | None = None  # a stage-1 state (distill/last.pt: backbone and head) or a bundle to start from


class Student(nn.Module):
    """ResNet50 features (2048) -> projection head -> a 1024-d vector like BirdNET's embedding."""

    def __init__(self, weights: str = "none") -> None:
        super().__init__()
        self.backbone = build_model(1, weights)
        self.backbone.fc = nn.Identity()
        self.head = nn.Sequential(nn.Linear(2048, 1024), nn.ReLU(inplace=True), nn.Linear(1024, EMBEDDING_DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def window_images(run: RunData, windows: list[TeacherWindow], roots: dict[str, Path]) -> torch.Tensor:
    """Unaugmented frontend images (float16, to halve the memory) of teacher windows, mixes too."""
    cache = AudioCache(64 * 2**20)
    cfg = run.frontend
    out = torch.zeros((len(windows), *cfg.image_shape), dtype=torch.float16)
    for i, w in enumerate(windows):
        if w.partner is None:
            img = window_image(cache, roots[w.source] / w.file, w.start_s, cfg.window_s, cfg, w.rate, w.tilt)
        else:
            p = w.partner
            img = mixed_image(cache, [(roots[w.source] / w.file, w.start_s, 1.0),
                                      (roots[p.source] / p.file, p.start_s, w.partner_gain)], cfg.window_s, cfg)
        out[i] = torch.from_numpy(img)
    return out


def mask_batch(x: torch.Tensor, gen: torch.Generator, args: DistillArgs, fill: torch.Tensor) -> torch.Tensor:
    """SpecAugment-style time and frequency masks, one draw per image from ``gen``."""
    n, _, h, w = x.shape
    for size, count, axis in ((w, args.time_masks, 3), (h, args.freq_masks, 2)):
        top = max(1, int(args.mask_frac * size))
        for _ in range(count):
            widths = torch.randint(0, top + 1, (n,), generator=gen)
            starts = (torch.rand(n, generator=gen) * (size - widths + 1)).long()
            pos = torch.arange(size)
            m = (pos[None] >= starts[:, None]) & (pos[None] < (starts + widths)[:, None])  # (n, size)
            m = m[:, None, None, :] if axis == 3 else m[:, None, :, None]
            x = torch.where(m, fill.view(1, -1, 1, 1).to(x.dtype), x)
    return x


@torch.no_grad()
def val_loss(model: Student, images: torch.Tensor, targets: torch.Tensor, batch: int) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(images), batch):
        x = images[i: i + batch].float().contiguous(memory_format=torch.channels_last)
        total += float(cosine_loss(model(x), targets[i: i + batch])) * len(x)
    return total / max(len(images), 1)


def distill(targs: TrainArgs, dargs: DistillArgs, run: RunData, t_start: float, teacher=None) -> dict[str, Any]:
    """Stage 1; returns its summary (``distill/summary.json``), reusing it when already done.

    ``teacher``: the model behind the teacher cache (default BirdNET; tests pass a stand-in).
    """
    folder = run.run_dir / DISTILL_DIR
    folder.mkdir(exist_ok=True)
    summary_path, last_path = folder / SUMMARY, folder / LAST
    if last_path.is_file() and not targs.resume:
        raise SonotrapError(f"{folder} already holds a distillation run; pass --resume or a new --out")
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if not (targs.resume and summary.get("stop_reason") == "time budget"
                and summary["epochs_run"] < dargs.epochs and not (run.run_dir / LAST).is_file()):
            return summary
        log.info("stage 1 stopped on its time budget; --resume continues it (stage 2 has not started)")
    state = None
    if last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        if state.get("format") != STATE_FORMAT:
            raise SonotrapError(f"{last_path} is not a {STATE_FORMAT} file; pass a new --out")
    if targs.threads:
        torch.set_num_threads(targs.threads)
    elapsed_before = float(state["elapsed"]) if state else 0.0

    def used() -> float:
        return elapsed_before + time.monotonic() - t_start

    cache, groups = ensure_cache(run, dargs.unlabeled, dargs.teacher_threads, targs.progress, teacher,
                                 dargs.mixes, targs.seed, dargs.speed, dargs.tilt)
    roots = source_roots(run, dargs.unlabeled)
    mixes, speed, tilted = groups.get(MIXED, []), groups.get(SPEED, []), groups.get(TILTED, [])
    fit_w = groups["train"] + groups.get(UNLABELED, []) + mixes + speed + tilted
    val_w = groups["val"]
    log.info("stage 1: %d windows to fit (%d unlabeled, %d mixed, %d speed-changed, %d tilted), "
             "%d validation windows", len(fit_w), len(groups.get(UNLABELED, [])), len(mixes), len(speed),
             len(tilted), len(val_w))
    fit_x, val_x = window_images(run, fit_w, roots), window_images(run, val_w, roots)
    fit_t = torch.from_numpy(l2_normalise(cache.embeddings[cache.rows(fit_w)]))
    val_t = torch.from_numpy(l2_normalise(cache.embeddings[cache.rows(val_w)]))
    fill = fit_x.float().amin(dim=(0, 2, 3))  # masks take the quietest value per channel

    torch.manual_seed(targs.seed)
    model = Student("none" if state or dargs.init else targs.weights).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=dargs.lr, weight_decay=dargs.weight_decay)
    steps_per_epoch = max(1, len(fit_w) // dargs.batch_size)
    budget_s = dargs.minutes * 60 if dargs.minutes else math.inf
    time_fraction = (lambda: used() / (0.95 * budget_s)) if math.isfinite(budget_s) else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        steps_per_epoch * dargs.epochs, int(dargs.warmup_epochs * steps_per_epoch), dargs.min_lr_ratio,
        time_fraction))
    amp_dtype = amp_dtype_for(torch.device("cpu")) if targs.amp else None
    start_epoch, best, best_epoch, history = 0, math.inf, 0, []
    if dargs.init and not state:
        init = Path(dargs.init)
        if is_bundle(init):  # a shipped model: batch norm restored, a new projection head fitted first
            student_from_bundle(model.backbone, model.head, init, fit_x, fit_t, targs.seed, dargs.batch_size * 2)
        else:
            model.load_state_dict(_stage1_model(init))
        log.info("stage 1: starting from %s", dargs.init)
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch, best, best_epoch, history = state["epoch"], state["best"], state["best_epoch"], state["history"]
        log.info("stage 1: resuming after epoch %d (best val loss %.4f at epoch %d)", start_epoch, best, best_epoch)

    durations: list[float] = []
    stop_reason = "epochs"
    for epoch in range(start_epoch, dargs.epochs):
        if used() + (float(np.mean(durations[-2:])) if durations else 0.0) > budget_s:
            stop_reason = "time budget"
            break
        t_epoch = time.monotonic()
        gen = torch.Generator().manual_seed(targs.seed * 100003 + epoch)
        order = torch.randperm(len(fit_w), generator=gen)
        model.train()
        running, seen = 0.0, 0
        for b in range(steps_per_epoch):
            idx = order[b * dargs.batch_size: (b + 1) * dargs.batch_size]
            x = mask_batch(fit_x[idx].float(), gen, dargs, fill).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                pred = model(x)
            loss = cosine_loss(pred, fit_t[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
            if targs.progress and b % 20 == 0:
                print(f"stage 1 epoch {epoch + 1} batch {b}/{steps_per_epoch}: loss {running / seen:.4f}",
                      flush=True)
            if used() > budget_s:
                stop_reason = "time budget"
                break
        train_s = time.monotonic() - t_epoch
        v = val_loss(model, val_x, val_t, dargs.batch_size * 2)
        improved = v < best
        if improved:
            best, best_epoch = v, epoch + 1
            backbone = {k: t.clone() for k, t in model.backbone.state_dict().items()}
            save_checkpoint(backbone, folder / BACKBONE)
        row = {"epoch": epoch + 1, "train_loss": running / max(seen, 1), "val_loss": v,
               "windows_per_s": seen / max(train_s, 1e-9), "epoch_s": time.monotonic() - t_epoch,
               "lr": scheduler.get_last_lr()[0]}
        history.append(row)
        save_checkpoint({"format": STATE_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "rng": rng_state(), "epoch": epoch + 1,
                      "best": best, "best_epoch": best_epoch, "history": history, "elapsed": used(),
                      "args": dataclasses.asdict(dargs)}, last_path)
        with (folder / "history.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        log.info("stage 1 epoch %d: train 1-cos %.4f, val 1-cos %.4f, %.1f windows/s%s", epoch + 1,
                 row["train_loss"], v, row["windows_per_s"], " *best*" if improved else "")
        if targs.progress:
            print(f"stage 1 epoch {epoch + 1}: train 1-cos {row['train_loss']:.4f}, val 1-cos {v:.4f}, "
                  f"{row['windows_per_s']:.1f} windows/s{' *best*' if improved else ''}", flush=True)
        durations.append(time.monotonic() - t_epoch)
        if stop_reason == "time budget":
            break
    if best_epoch == 0:
        raise SonotrapError("stage 1 ended before its first epoch; give --distill-minutes more time")
    summary = {"teacher": "birdnet", "best_epoch": best_epoch, "best_val_loss": best,
               "epochs_run": len(history), "stop_reason": stop_reason, "elapsed_s": used(),
               "fit_windows": len(fit_w), "unlabeled_windows": len(groups.get(UNLABELED, [])),
               "mixed_windows": len(mixes), "speed_windows": len(speed), "tilted_windows": len(tilted),
               "init": dargs.init,
               "backbone": str(folder / BACKBONE)}
    summary_path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def _stage1_model(path: Path) -> dict[str, torch.Tensor]:
    """The student (backbone and projection head) saved in another run's stage-1 state."""
    if path.is_dir():
        path = path / DISTILL_DIR / LAST
    if not path.is_file():
        raise SonotrapError(f"{path} does not exist; pass --distill-init RUN_DIR, its distill/{LAST} or a bundle")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise SonotrapError(f"{path} is not a stage-1 state ({STATE_FORMAT}); pass a run's distill/{LAST}")
    return state["model"]


def train_with_teacher(targs: TrainArgs, dargs: DistillArgs, spec=None, frontend=None, teacher=None):
    """Both stages (module docstring); ``--resume`` continues whichever stage was interrupted."""
    from trainer.prepare import prepare_run

    if targs.teacher not in TEACHERS:
        raise SonotrapError(f"--teacher {targs.teacher!r} is not one of {', '.join(TEACHERS)}")
    t_start = time.monotonic()
    run_dir = Path(targs.out)
    if (run_dir / LAST).is_file():  # stage 2 already started: the ordinary trainer resumes it
        if not targs.resume:
            raise SonotrapError(f"{run_dir} already holds a training run ({LAST}); pass --resume or a new --out")
        summary = json.loads((run_dir / DISTILL_DIR / SUMMARY).read_text(encoding="utf-8"))
        return _stage2(targs, summary), summary
    if spec is not None and not targs.resume:
        prepare_run(spec, frontend, run_dir)
    elif not (run_dir / DATASET_FILE).is_file():
        raise SonotrapError(f"{run_dir} has no {DATASET_FILE}; pass the training data (e.g. --data DIR)")
    run = load_run_data(run_dir)
    if dargs.minutes is None and targs.max_minutes:
        dargs = dataclasses.replace(dargs, minutes=targs.max_minutes / 2)
    summary = distill(targs, dargs, run, t_start, teacher)
    return _stage2(dataclasses.replace(targs, resume=False), summary), summary


def _stage2(targs: TrainArgs, summary: dict[str, Any]):
    left = None
    if targs.max_minutes:
        left = targs.max_minutes - summary["elapsed_s"] / 60
        if left <= 0:
            raise SonotrapError(f"stage 1 used all of --max-minutes {targs.max_minutes}; give more time")
    args = dataclasses.replace(targs, weights=summary["backbone"], max_minutes=left)
    return train(args, None)
