"""Train/val/test split by recording (never by window), stratified by label, seeded.

Greedy iterative stratification: recordings are visited rarest-label first (ties broken by
a seeded shuffle) and each goes to the split that most lacks that label relative to its
target fraction. Recordings without calls are spread by the same fractions. The result is
written to ``split.json`` so every later command sees the same recordings.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from edge.errors import SonotrapError
from trainer.annotations import Annotation, Recording

SPLITS = ("train", "val", "test")
SPLIT_FORMAT = "sonotrap-split/1"


def split_recordings(
    recordings: list[Recording], annotations: list[Annotation], labels: list[str],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0,
) -> dict[str, list[str]]:
    """``{"train": [files], "val": [...], "test": [...]}``, deterministic for a seed."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise SonotrapError(f"split fractions {fractions} must be three non-negative numbers summing to 1")
    rng = np.random.default_rng(seed)
    keep = set(labels)
    rec_labels: dict[str, set[str]] = defaultdict(set)
    for a in annotations:
        if a.label in keep and a.present:
            rec_labels[a.file].add(a.label)
    files = [r.file for r in recordings]
    order = list(rng.permutation(len(files)))
    files = [files[i] for i in order]
    totals = Counter(lab for f in files for lab in rec_labels[f])
    frac = np.asarray(fractions, dtype=float)
    want = {lab: frac * n for lab, n in totals.items()}
    have = {lab: np.zeros(3) for lab in totals}
    counts = np.zeros(3)
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    labelled = [f for f in files if rec_labels[f]]
    labelled.sort(key=lambda f: min(totals[lab] for lab in rec_labels[f]))  # stable: keeps shuffle
    for f in labelled:
        rarest = min(rec_labels[f], key=lambda lab: (totals[lab], lab))
        deficit = want[rarest] - have[rarest]
        # Most-lacking split for the rarest label; ties -> most-lacking split overall.
        overall = frac * (counts.sum() + 1) - counts
        choice = max(
            (i for i in range(3) if frac[i] > 0), key=lambda i: (np.round(deficit[i], 6), overall[i])
        )
        out[SPLITS[choice]].append(f)
        counts[choice] += 1
        for lab in rec_labels[f]:
            have[lab][choice] += 1
    for f in (f for f in files if not rec_labels[f]):
        overall = frac * (counts.sum() + 1) - counts
        choice = max((i for i in range(3) if frac[i] > 0), key=lambda i: overall[i])
        out[SPLITS[choice]].append(f)
        counts[choice] += 1
    return {s: sorted(v) for s, v in out.items()}


def write_split(path: str | Path, split: dict[str, list[str]], seed: int, fractions) -> None:
    data = {"format": SPLIT_FORMAT, "seed": seed, "fractions": list(fractions),
            **{s: split[s] for s in SPLITS}}
    Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def read_split(path: str | Path) -> dict[str, list[str]]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SonotrapError(f"split file {path} cannot be read ({err}); pass a split.json from a run") from None
    missing = [s for s in SPLITS if s not in data]
    if missing:
        raise SonotrapError(f"split file {path} lacks {missing}; pass a split.json written by sonotrap train")
    return {s: list(data[s]) for s in SPLITS}
