"""Pseudo-labelling rounds (Zhong et al. 2020): train, label the unknown entries, train again.

Round 0 is an ordinary ``sonotrap train`` run in ``OUT``; round ``r`` lives in
``OUT/round-r`` (same windows and split, plus ``pseudo_labels.npz``), starts from round
``r-1``'s best weights (head included) and writes its own checkpoints and summary. ``OUT/pseudo_rounds.json``
collects every round's pseudo-label counts and val/test metrics. The labels themselves
(which entries, the sanity check, the file) are :mod:`trainer.pseudo`; this module only
sequences training runs, so it sits above :mod:`trainer.train` in the import graph.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from edge.errors import SonotrapError
from trainer.checkpoint import BEST, LAST, load_checkpoint, model_from_checkpoint
from trainer.dataset import WindowDataset
from trainer.engine import predict
from trainer.pseudo import PSEUDO_FILE, check_bounds, implausible, pseudo_label, save_pseudo
from trainer.rundata import copy_run_data, load_run_data
from trainer.train import SUMMARY_FILE, train

log = logging.getLogger("sonotrap.trainer")

ROUNDS_FILE = "pseudo_rounds.json"
INIT_FILE = "init_weights.pt"  # the previous round's best weights: this round's starting point


def round_dir(out: Path, r: int) -> Path:
    return out if r == 0 else out / f"round-{r}"


def train_rounds(args, spec, frontend, rounds: int, high: float = 0.9, low: float = 0.1,
                 round_epochs: int | None = None) -> list[dict[str, Any]]:
    """Round 0 = ``train(args, spec, frontend)``; then ``rounds`` pseudo-label rounds (see module doc).

    With ``args.resume`` finished rounds are skipped and an interrupted one continues.
    Returns (and writes to ``OUT/pseudo_rounds.json``) one record per round.
    """
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
                prev_ckpt = load_checkpoint(prev)
                probs = predict(model_from_checkpoint(prev_ckpt).to(device), ds, args.batch_size,
                                device, args.workers, args.progress, f"round {r}: pseudo-labels")
                labels = pseudo_label(probs, ds.targets, ds.known, high, low)
                copy_run_data(out, d)
                save_pseudo(d, labels, train_w, run.labels)
                # A plain state dict, so the round loads it with torch.load(weights_only=True).
                torch.save(prev_ckpt.state_dict, d / INIT_FILE)
                counts: dict[str, Any] = dict(labels.counts())
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
