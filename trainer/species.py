"""Species tables: the human names behind label codes, for any data set.

Label codes stay the stable ids (``Erirub_song``); people want "European Robin (Erithacus
rubecula) song". A species table is a CSV ``code,scientific_name,common_name[,group]`` whose
``code`` is the label's prefix (``Erirub``) or the whole label (``Human``). ``sonotrap train
--species CSV`` turns it into the labels' display names and keeps the rows it used in the run
directory (``species.csv``), from which the bundle builder fills the label entries'
``scientific_name``, ``common_name`` and ``group``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from edge.errors import SonotrapError

SPECIES_FILE = "species.csv"  # in a run directory: the rows of the table the run's labels use
COLUMNS = ("code", "scientific_name", "common_name", "group")


@dataclass(frozen=True)
class Species:
    code: str  # label prefix, e.g. "Erirub"
    scientific_name: str
    common_name: str
    group: str = ""  # bird, insect, frog, ... (free text)


def read_species(path: str | Path) -> dict[str, Species]:
    """Read a species table; one clear line for a missing file, missing column or duplicate code."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise SonotrapError(f"species table {p} cannot be read ({err.strerror or err}); check --species") from None
    rows = list(csv.DictReader(text.splitlines()))
    header = set(rows[0]) if rows else set()
    missing = [c for c in COLUMNS[:3] if c not in header]
    if missing:
        raise SonotrapError(f"species table {p} lacks column(s) {', '.join(missing)}; "
                            f"expected a header {','.join(COLUMNS[:3])}[,group]")
    table: dict[str, Species] = {}
    for i, r in enumerate(rows, start=2):
        code = (r.get("code") or "").strip()
        if not code:
            raise SonotrapError(f"species table {p} line {i}: empty code; give the label prefix, e.g. Erirub")
        if code in table:
            raise SonotrapError(f"species table {p} line {i}: code {code} appears twice; keep one row per code")
        table[code] = Species(code, (r.get("scientific_name") or "").strip(), (r.get("common_name") or "").strip(),
                              (r.get("group") or "").strip())
    return table


def species_of(label: str, table: dict[str, Species]) -> Species | None:
    """The row for ``label``: the whole label first (``Human``), else its prefix (``Erirub``)."""
    return table.get(label) or table.get(label.split("_", 1)[0])


def display_name(label: str, table: dict[str, Species]) -> str | None:
    """``Erirub_song`` -> ``European Robin (Erithacus rubecula) song``; None without a row."""
    sp = species_of(label, table)
    if sp is None:
        return None
    rest = label[len(sp.code):].strip("_").replace("_", " ") if label.startswith(sp.code) else ""
    if sp.common_name and sp.scientific_name and sp.scientific_name not in sp.common_name:
        base = f"{sp.common_name} ({sp.scientific_name})"
    else:
        base = sp.common_name or sp.scientific_name or label
    return f"{base} {rest}".strip()


def species_names(labels: list[str], table: dict[str, Species]) -> dict[str, str]:
    """Display names for the labels the table knows (the others keep their derived names)."""
    return {lab: name for lab in labels if (name := display_name(lab, table)) is not None}


def write_species(path: str | Path, labels: list[str], table: dict[str, Species]) -> None:
    """Keep the rows ``labels`` use (in a run directory), so the bundle can carry them."""
    used = {sp.code: sp for lab in labels if (sp := species_of(lab, table)) is not None}
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        wr = csv.writer(fh)
        wr.writerow(COLUMNS)
        for sp in sorted(used.values(), key=lambda s: s.code):
            wr.writerow((sp.code, sp.scientific_name, sp.common_name, sp.group))


def label_fields(label: str, table: dict[str, Species]) -> dict[str, str]:
    """The extra fields of a bundle label entry (empty when the table does not know the label)."""
    sp = species_of(label, table)
    if sp is None:
        return {}
    return {"scientific_name": sp.scientific_name, "common_name": sp.common_name, "group": sp.group}
