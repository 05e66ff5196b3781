"""Pseudo-labelling rounds (Zhong et al. 2020): confident scores fill unknown label entries.

Validation-style data (issue 6) leaves most (window, class) entries unknown. After a round
of training the model scores every training window; an UNKNOWN entry scored ``>= high``
becomes present and one scored ``<= low`` absent, for the next round's training only.
Known entries never change, and every round decides afresh from the original labels with
the newest model, so one round's mistake is not locked in. Validation and test windows keep
their original labels, so the rounds' metrics compare like with like.

Round 0 is an ordinary ``sonotrap train`` run in ``OUT``; round ``r`` lives in
``OUT/round-r`` (same windows and split, plus ``pseudo_labels.npz``), starts from round
``r-1``'s best weights (head included) and writes its own checkpoints and summary. ``OUT/pseudo_rounds.json``
collects every round's pseudo-label counts and val/test metrics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import SonotrapError
from trainer.rundata import ANNOTATIONS_FILE, DATASET_FILE, SPLIT_FILE, windows_file
from trainer.split import SPLITS
from trainer.windows import Window

log = logging.getLogger(__name__)

PSEUDO_FILE = "pseudo_labels.npz"
ROUNDS_FILE = "pseudo_rounds.json"
SUMMARY_FILE = "train_summary.json"
INIT_FILE = "init_weights.pt"  # the previous round's best weights: this round's starting point


@dataclass
class PseudoLabels:
    """The entries a round assigned: ``known`` marks them, ``targets`` holds their 0/1."""

    targets: np.ndarray  # (N, K) float32
    known: np.ndarray  # (N, K) bool, True only where a pseudo label was assigned
    unknown_before: int
    added_present: int
    added_absent: int

    def counts(self) -> dict[str, int]:
        return {"unknown_before": self.unknown_before, "added_present": self.added_present,
                "added_absent": self.added_absent}


def implausible(labels: PseudoLabels, targets: np.ndarray, known: np.ndarray, factor: float = 3.0) -> str | None:
    """Why these pseudo labels look degenerate, or None.

    A model trained almost only on positives (review exports without rejected hits) scores
    nearly every class high; its pseudo labels then declare dozens of species present in every
    window and the next round learns that. Caught by comparing present labels per window:
    validated + pseudo against validated alone.
    """
    n = max(len(targets), 1)
    validated = float((np.asarray(targets) * np.asarray(known)).sum()) / n
    after = validated + labels.added_present / n
    if labels.added_present and after > factor * max(validated, 1.0):
        return (f"pseudo labels put {after:.1f} present labels in each window where the validated labels "
                f"have {validated:.1f}: the model scores most classes high (too few validated-absent "
                "examples?); raise --pseudo-high or add rejected detections to the export")
    return None


def pseudo_label(
    probs: np.ndarray, targets: np.ndarray, known: np.ndarray, high: float = 0.9, low: float = 0.1,
) -> PseudoLabels:
    """Unknown entries with ``probs >= high`` -> present, ``<= low`` -> absent; the rest stay unknown."""
    check_bounds(high, low)
    probs = np.asarray(probs, dtype=np.float64)
    unknown = ~np.asarray(known, dtype=bool)
    if probs.shape != unknown.shape or np.asarray(targets).shape != unknown.shape:
        raise SonotrapError(f"scores {probs.shape} and labels {unknown.shape} differ in shape")
    present = unknown & (probs >= high)
    absent = unknown & (probs <= low)
    return PseudoLabels(present.astype(np.float32), present | absent, int(unknown.sum()),
                        int(present.sum()), int(absent.sum()))


def check_bounds(high: float, low: float) -> None:
    if not 0.0 <= low < high <= 1.0:
        raise SonotrapError(f"pseudo-label bounds low={low}, high={high} must satisfy 0 <= low < high <= 1; "
                            "pass e.g. --pseudo-low 0.1 --pseudo-high 0.9")


def merge(targets: np.ndarray, known: np.ndarray, p_targets: np.ndarray, p_known: np.ndarray):
    """Labels with pseudo entries filled into the unknown ones (known entries win)."""
    fill = p_known & ~known
    return np.where(fill, p_targets, targets).astype(np.float32), known | fill


def _keys(windows: list[Window]) -> np.ndarray:
    return np.array([f"{w.file}|{w.start_s:.6f}" for w in windows])


def save_pseudo(run_dir: Path, labels: PseudoLabels, windows: list[Window], label_names: list[str]) -> Path:
    path = Path(run_dir) / PSEUDO_FILE
    np.savez_compressed(path, targets=labels.targets, known=labels.known, windows=_keys(windows),
                        labels=np.array(label_names))
    return path


def load_pseudo(run_dir: Path, windows: list[Window], label_names: list[str]):
    """``(targets, known)`` of ``run_dir``'s pseudo labels, or None when the run has none."""
    path = Path(run_dir) / PSEUDO_FILE
    if not path.is_file():
        return None
    with np.load(path) as z:
        if list(z["labels"]) != list(label_names) or not np.array_equal(z["windows"], _keys(windows)):
            raise SonotrapError(f"{path} was made for other windows or labels than {run_dir}; "
                                "delete it and rerun the pseudo-label round")
        return z["targets"].astype(np.float32), z["known"].astype(bool)


def _copy_run_data(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in (DATASET_FILE, ANNOTATIONS_FILE, SPLIT_FILE, *(windows_file(s) for s in SPLITS)):
        shutil.copy2(src / name, dst / name)


def round_dir(out: Path, r: int) -> Path:
    return out if r == 0 else out / f"round-{r}"


def train_rounds(args, spec, frontend, rounds: int, high: float = 0.9, low: float = 0.1,
                 round_epochs: int | None = None) -> list[dict[str, Any]]:
    """Round 0 = ``train(args, spec, frontend)``; then ``rounds`` pseudo-label rounds (see module doc).

    With ``args.resume`` finished rounds are skipped and an interrupted one continues.
    Returns (and writes to ``OUT/pseudo_rounds.json``) one record per round.
    """
    import os

    import torch

    from trainer.dataset import WindowDataset
    from trainer.rundata import load_run_data
    from trainer.train import BEST, LAST, load_checkpoint, model_from_checkpoint, predict, train

    check_bounds(high, low)
    if rounds > 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SonotrapError("pseudo-label rounds run in one process; train round 0 with torchrun, "
                            "then run the rounds without it")
    out = Path(args.out)
    records: list[dict[str, Any]] = []
    for r in range(rounds + 1):
        d = round_dir(out, r)
        record: dict[str, Any] = {"round": r, "run_dir": str(d)}
        if r > 0:
            run = load_run_data(out)
            train_w = run.windows("train")
            prev = round_dir(out, r - 1) / BEST
            device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
            ds = WindowDataset(run, train_w)
            if not (d / PSEUDO_FILE).is_file():
                probs = predict(model_from_checkpoint(load_checkpoint(prev)).to(device), ds, args.batch_size,
                                device, args.workers, args.progress, f"round {r}: pseudo-labels")
                labels = pseudo_label(probs, ds.targets, ds.known, high, low)
                _copy_run_data(out, d)
                save_pseudo(d, labels, train_w, run.labels)
                # A plain state dict, so the round loads it with torch.load(weights_only=True).
                torch.save(load_checkpoint(prev)["model"], d / INIT_FILE)
                counts = labels.counts()
                counts["warning"] = implausible(labels, ds.targets, ds.known)
                (d / "pseudo_counts.json").write_text(json.dumps(counts) + "\n")
            record["pseudo"] = json.loads((d / "pseudo_counts.json").read_text())
            log.info("round %d: %s", r, record["pseudo"])
            if record["pseudo"].get("warning"):
                log.warning("round %d: %s", r, record["pseudo"]["warning"])
        if not (d / SUMMARY_FILE).is_file():
            if r == 0:
                train(args, spec, frontend)
            else:
                resume = args.resume and (d / LAST).is_file()
                train(dataclasses.replace(args, out=str(d), resume=resume, weights=str(d / INIT_FILE),
                                          epochs=round_epochs or args.epochs), None, None)
        summary = json.loads((d / SUMMARY_FILE).read_text())
        record.update({k: summary.get(k) for k in ("val", "test", "epochs_run", "best_epoch")})
        records.append(record)
        (out / ROUNDS_FILE).write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return records
