#!/usr/bin/env python3
"""Weak-label demonstration: fully annotated data -> a validation-style export.

``make-table``: read the windows of a fully annotated run directory (``sonotrap train`` on
nips4bplus) and write the generic validation form ``file,start_s,end_s,label,present`` in
which each window keeps exactly ONE known class, as a template-detection reviewer would
leave it:

- a window with calls -> one row ``(call piece, label, 1)`` for one of its present classes
  (the class with the fewest kept windows so far, ties broken by a seeded draw, so every
  class keeps at least one example); the row is the anchoring call, so ``sonotrap train``
  centres its window exactly where the full-label run centred it;
- a window without calls -> one row ``(window, label, 0)`` for a seeded random class absent
  from the whole recording (so the "absent" statement stays true for any overlapping
  window);
- with ``--present-fraction F`` < 1 only that share of call windows keeps a present class;
  the others keep a class absent from the recording, ``(window, label, 0)``, like template
  hits a reviewer marked false (a review export has those for every class).

Every other class of the window is unknown. Training on the table with ``--split-file``
of the full run keeps the same recordings in train/val/test.

``evaluate``: score a checkpoint on the FULL-label test windows of a run directory
(every class known) and print/write macro-AP and ROC-AUC over the labels both models share.

Usage: see docs/training.md ("Weak labels").
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.util.jsonio import json_safe  # noqa: E402
from trainer.rundata import load_run_data  # noqa: E402
from trainer.split import SPLITS  # noqa: E402
from trainer.windows import Window  # noqa: E402


def weak_rows(
    run_dir: str | Path, seed: int = 0, present_fraction: float = 1.0,
) -> list[tuple[str, float, float, str, int]]:
    """One ``(file, start_s, end_s, label, present)`` row per window of every split.

    ``present_fraction`` < 1: that share of call windows keeps a present class; the others keep
    a class absent from the recording, as a reviewer's "false" verdict on a template hit.
    """
    run = load_run_data(run_dir)
    rng = np.random.default_rng(seed)
    by_file = run.annotations_by_file()
    labels = run.labels
    present_in_file = {f: {a.label for a in anns if a.present} for f, anns in by_file.items()}
    windows: list[Window] = [w for s in SPLITS for w in run.windows(s)]
    order = rng.permutation(len(windows))
    kept: Counter[str] = Counter()
    rows = []
    for i in order:
        w = windows[int(i)]
        absent = [lab for lab in labels if lab not in present_in_file.get(w.file, set())]
        if w.positives and absent and rng.random() >= present_fraction:
            label = absent[int(rng.integers(len(absent)))]  # a validated false detection
            rows.append((w.file, w.start_s, min(w.end_s, run.recordings[w.file].duration_s), label, 0))
        elif w.positives:
            # Classes whose call contains the anchoring piece (true detections of the template).
            anchors = sorted({
                a.label for a in by_file.get(w.file, ())
                if a.present and a.label in w.positives
                and a.start_s <= w.call_start_s + 1e-6 and a.end_s >= w.call_end_s - 1e-6
            }) if w.is_call else []
            choices = anchors or sorted(w.positives)
            fewest = min(kept[c] for c in choices)
            tied = [c for c in choices if kept[c] == fewest]
            label = tied[int(rng.integers(len(tied)))]
            kept[label] += 1
            if anchors:
                rows.append((w.file, w.call_start_s, w.call_end_s, label, 1))
            else:  # a tile that happens to hold calls: the whole window is the detection
                rows.append((w.file, w.start_s, min(w.end_s, run.recordings[w.file].duration_s), label, 1))
        else:
            label = absent[int(rng.integers(len(absent)))]
            end = min(w.end_s, run.recordings[w.file].duration_s)  # short files: window is padded
            rows.append((w.file, w.start_s, end, label, 0))
    rows.sort(key=lambda r: (r[0], r[1], r[3]))
    return rows


def write_rows(path: str | Path, rows) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        wr = csv.writer(fh)
        wr.writerow(("file", "start_s", "end_s", "label", "present"))
        for f, a, b, lab, p in rows:
            wr.writerow((f, f"{a:.6f}", f"{b:.6f}", lab, p))


def evaluate_on(checkpoint: str, run_dir: str, split: str = "test", labels: list[str] | None = None) -> dict:
    """Metrics of ``checkpoint`` on ``run_dir``'s ``split`` windows with that run's (full) labels."""
    import torch

    from trainer.checkpoint import load_checkpoint, model_from_checkpoint
    from trainer.dataset import WindowDataset
    from trainer.engine import predict
    from trainer.metrics import evaluate_scores

    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    run = load_run_data(run_dir)
    ds = WindowDataset(run, run.windows(split))
    probs = predict(model, ds, 32, torch.device("cpu"))
    model_labels = list(ckpt.labels)
    shared = [lab for lab in (labels or run.labels) if lab in model_labels and lab in run.labels]
    cols_model = [model_labels.index(lab) for lab in shared]
    cols_run = [run.labels.index(lab) for lab in shared]
    m = evaluate_scores(probs[:, cols_model], ds.targets[:, cols_run], ds.known[:, cols_run], shared)
    m["labels_evaluated"] = len(shared)
    return m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-table", help="full-label run dir -> validation-style CSV")
    mk.add_argument("--run", required=True, help="run directory of the full-label training")
    mk.add_argument("--out", required=True, help="CSV to write (file,start_s,end_s,label,present)")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--present-fraction", type=float, default=1.0,
                    help="share of call windows that keep a present class (default 1); the rest keep "
                         "an absent class, like template hits a reviewer marked false")
    ev = sub.add_parser("evaluate", help="checkpoint(s) on a run dir's full-label split")
    ev.add_argument("--run", required=True, help="run directory whose windows/labels are the reference")
    ev.add_argument("--checkpoint", action="append", required=True, help="best.pt (repeatable)")
    ev.add_argument("--split", default="test")
    ev.add_argument("--out", help="write a JSON with the metrics here")
    args = p.parse_args(argv)
    if args.cmd == "make-table":
        rows = weak_rows(args.run, args.seed, args.present_fraction)
        write_rows(args.out, rows)
        pos = sum(r[4] for r in rows)
        per_class = Counter(r[3] for r in rows if r[4])
        print(f"wrote {len(rows)} rows ({pos} present, {len(rows) - pos} absent; "
              f"{len(per_class)} classes with a present row) to {args.out}")
        return 0
    # Evaluate every checkpoint on the labels ALL of them know, so the macro averages match.
    import torch

    label_sets = [set(torch.load(c, map_location="cpu", weights_only=False)["labels"]) for c in args.checkpoint]
    run = load_run_data(args.run)
    common = [lab for lab in run.labels if all(lab in s for s in label_sets)]
    out = {}
    for c in args.checkpoint:
        m = evaluate_on(c, args.run, args.split, common)
        out[c] = {k: m[k] for k in ("macro_ap", "macro_roc_auc", "micro_ap", "classes_scored",
                                    "labels_evaluated", "num_windows", "known_fraction")}
        out[c]["per_class_ap"] = {k: v["ap"] for k, v in m["per_class"].items()}
        print(f"{c}: {args.split} macro-AP {m['macro_ap']:.4f}, macro ROC-AUC {m['macro_roc_auc']:.4f}, "
              f"micro-AP {m['micro_ap']:.4f} over {m['classes_scored']} scored classes "
              f"({len(common)} common labels, {m['num_windows']} windows)")
    if args.out:
        Path(args.out).write_text(json.dumps(json_safe(out), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

