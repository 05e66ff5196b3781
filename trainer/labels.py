"""Label selection: merge mapping, include/exclude lists, minimum examples; human names.

Applied to a :class:`trainer.annotations.Source` before windows are made, so a merged or
dropped label never reaches the model. Calls of dropped labels stay in the data as
"something else is calling here": they do not make a window positive for any kept class.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from edge.errors import SonotrapError
from trainer.annotations import Source


@dataclass
class LabelSelection:
    """What to keep. ``merge`` maps a source label to the label it becomes."""

    min_examples: int = 1
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    merge: dict[str, str] = field(default_factory=dict)


def read_mapping(path: str | Path) -> dict[str, str]:
    """Two-column CSV ``from,to`` (header optional), e.g. ``Erirub_call,Erirub``."""
    path = Path(path)
    if not path.is_file():
        raise SonotrapError(f"mapping file {path} does not exist; pass a CSV with rows from,to")
    mapping: dict[str, str] = {}
    with path.open(encoding="utf-8-sig", newline="") as fh:
        for i, row in enumerate(csv.reader(fh), start=1):
            row = [c.strip() for c in row]
            if not row or not any(row) or row[0].startswith("#"):
                continue
            if len(row) < 2 or not row[0] or not row[1]:
                raise SonotrapError(f"{path.name} row {i}: expected 'from,to', got {row}; fix the row")
            if i == 1 and row[0].lower() in ("from", "label", "code", "source"):
                continue
            mapping[row[0]] = row[1]
    return mapping


def select_labels(source: Source, sel: LabelSelection) -> tuple[Source, list[str], dict[str, int]]:
    """Apply ``sel``; return the new source, the kept labels (sorted) and calls per kept label."""
    anns = [replace(a, label=sel.merge.get(a.label, a.label)) for a in source.annotations]
    counts = Counter(a.label for a in anns if a.present is True)
    known = set(counts) | {a.label for a in anns}
    for name in sel.include + sel.exclude:
        if name not in known:
            raise SonotrapError(
                f"label {name!r} in --include/--exclude does not occur in the data (after merging); "
                "check its spelling"
            )
    kept = [
        lab for lab in sorted(known)
        if counts.get(lab, 0) >= sel.min_examples
        and (not sel.include or lab in sel.include)
        and lab not in sel.exclude
    ]
    if not kept:
        raise SonotrapError(
            f"no label is left after selection (min examples {sel.min_examples}, "
            f"include {sel.include}, exclude {sel.exclude}); relax the selection"
        )
    out = Source(source.root, list(source.recordings), anns, list(source.problems))
    return out, kept, {lab: counts.get(lab, 0) for lab in kept}


def readable_name(code: str) -> str:
    """``Erirub_song`` -> ``Erirub song``; other codes get underscores replaced by spaces."""
    return code.replace("_", " ").strip() or code


def label_names(labels: list[str], names_file: str | Path | None = None) -> dict[str, str]:
    """Human names for ``labels``: from a ``code,name`` CSV when given, else derived from the code."""
    names = {lab: readable_name(lab) for lab in labels}
    if names_file is not None:
        given = read_mapping(names_file)
        names.update({k: v for k, v in given.items() if k in names})
    return names
