"""Validation exports (weak labels) -> the trainer's ``Recording`` + ``Annotation`` records.

Most field teams label by reviewing a template detector's hits one species at a time, so a
detection row says "class X is (not) here" and nothing about any other class. Two forms:

- Arbimon pattern-matching export: ``species, songtype, x1, x2`` (seconds), ``y1, y2`` (Hz),
  ``validated`` and the recording (``recording``/``file`` name, or a ``uri``/``url`` whose
  last path part is the file name). ``validated`` is 1/0, ``present``/``not present`` or
  ``(not validated)``; unvalidated hits carry no label and are skipped (counted).
  The label is ``<species>_<songtype>`` (spaces -> ``_``), or ``<species>`` alone with
  ``songtype=False``; merge further with ``--merge``.
- the generic form ``file,start_s,end_s,label,present`` (present 1, 0 or empty) -- read by
  :func:`trainer.annotations.read_table` with ``complete=False``.

Every recording is incomplete (``Recording.complete = False``): the windowing in
:mod:`trainer.windows` then centres one window on each detection (clipped to the recording),
exactly as for calls, with only the validated class(es) known. Frequency bounds (y1/y2) are
kept out of the model: the frontend sees the whole band.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from edge.errors import SonotrapError
from trainer.annotations import (
    AUDIO_SUFFIXES,
    Annotation,
    Problems,
    Recording,
    Source,
    audio_info,
    check_annotation,
    read_csv,
    read_table,
)

log = logging.getLogger("sonotrap.trainer")

ARBIMON_COLUMNS = ("species", "x1", "x2", "validated")
GENERIC_COLUMNS = ("file", "start_s", "end_s", "label", "present")
_FILE_COLUMNS = ("file", "recording", "uri", "url")
_TRUE = ("1", "true", "yes", "present", "y")
_FALSE = ("0", "false", "no", "not present", "absent", "n")
_UNVALIDATED = ("", "(not validated)", "not validated", "null", "none", "na", "nan", "-1")


def parse_validated(value: str) -> bool | None:
    """1/present -> True, 0/not present -> False, empty/(not validated) -> None."""
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    if v in _UNVALIDATED:
        return None
    raise ValueError(f"validated={value!r} is not 1, 0, present, not present or empty")


def export_format(path: str | Path) -> str:
    """``"arbimon"`` or ``"generic"`` from the header; anything else is a one-line error."""
    columns, _ = read_csv(Path(path))
    lower = [c.lower() for c in columns]
    if all(c in lower for c in ARBIMON_COLUMNS) and any(c in lower for c in _FILE_COLUMNS):
        return "arbimon"
    if all(c in lower for c in GENERIC_COLUMNS):
        return "generic"
    raise SonotrapError(
        f"validation export {path} has columns {columns}; expected the Arbimon pattern-matching export "
        "(species,songtype,x1,x2,y1,y2,validated,recording|uri) or file,start_s,end_s,label,present"
    )


def _label(species: str, songtype: str, with_songtype: bool) -> str:
    species = "_".join(species.split())
    songtype = "_".join(songtype.split())
    return f"{species}_{songtype}" if with_songtype and songtype else species


def _audio_index(root: Path) -> dict[str, list[Path]]:
    """Audio files below ``root`` by lower-case file name (exports name files, not paths)."""
    index: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES:
            index.setdefault(p.name.lower(), []).append(p)
    return index


def _resolve(row: dict[str, str], root: Path, index: dict[str, list[Path]]) -> tuple[str, Path | None]:
    """(name used in messages, audio path or None) for one export row."""
    for col in _FILE_COLUMNS:
        value = row.get(col, "")
        if not value:
            continue
        direct = root / value
        if col in ("file", "recording") and direct.is_file():
            return value, direct
        name = value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].split("?")[0]
        hits = index.get(name.lower(), [])
        if len(hits) == 1:
            return value, hits[0]
        if len(hits) > 1:
            raise SonotrapError(
                f"recording {name!r} matches {len(hits)} files below {root} (e.g. {hits[0]} and {hits[1]}); "
                "add a 'file' column with the path relative to --root"
            )
    named = next((row[c] for c in _FILE_COLUMNS if row.get(c)), "")
    return named, None


def read_arbimon(
    path: str | Path, root: str | Path, strict: bool = False, with_songtype: bool = True,
) -> Source:
    """An Arbimon pattern-matching export; audio is looked up by file name below ``root``."""
    path, root = Path(path), Path(root)
    if not root.is_dir():
        raise SonotrapError(f"audio root {root} does not exist; pass --root DIR holding the recordings")
    problems = Problems(strict)
    columns, rows = read_csv(path)
    lower = {c.lower(): c for c in columns}
    rows = [{k.lower(): v for k, v in r.items()} for r in rows]
    index = _audio_index(root)
    recordings: dict[str, Recording] = {}
    missing: set[str] = set()
    annotations: list[Annotation] = []
    unvalidated = 0
    for i, r in enumerate(rows, start=2):
        where = f"{path.name} row {i}"
        try:
            present = parse_validated(r.get("validated", ""))
        except ValueError as err:
            problems(f"{where}: {err}; fix the row")
            continue
        if present is None:
            unvalidated += 1
            continue
        name, audio = _resolve(r, root, index)
        if audio is None:
            if name not in missing:
                missing.add(name)
                problems(f"{where}: recording {name or '(empty)'} is not below {root}; "
                         "download it there or fix --root")
            continue
        rel = str(audio.relative_to(root))
        if rel in missing:
            continue
        if rel not in recordings:
            got = audio_info(audio, problems)
            if got is None:
                missing.add(rel)
                continue
            recordings[rel] = Recording(rel, got[0], got[1], complete=False)
        species = r.get("species", "")
        if not species:
            problems(f"{where}: empty species; fill it in")
            continue
        try:
            start, end = float(r["x1"]), float(r["x2"])
        except ValueError:
            problems(f"{where}: x1/x2 {r['x1']!r}/{r['x2']!r} are not seconds; fix the row")
            continue
        label = _label(species, r.get("songtype", ""), with_songtype and "songtype" in lower)
        ann = check_annotation(Annotation(rel, start, end, label, present), recordings[rel].duration_s,
                               where, problems)
        if ann is not None:
            annotations.append(ann)
    log.info("read %d validated detections (%d skipped as not validated) in %d recordings from %s",
             len(annotations), unvalidated, len(recordings), path)
    return Source(root, list(recordings.values()), annotations, problems.lines)


def read_validation_export(
    path: str | Path, root: str | Path | None = None, strict: bool = False, with_songtype: bool = True,
) -> Source:
    """Either form (detected from the header); ``root`` defaults to the export's folder."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    if export_format(path) == "arbimon":
        return read_arbimon(path, root, strict, with_songtype)
    return read_table(path, None, root, strict, complete=False)


def read_validation_exports(
    paths: Sequence[str | Path], root: str | Path | None = None, strict: bool = False,
    with_songtype: bool = True,
) -> Source:
    """Several exports (e.g. one per template) over the same recordings, merged into one source."""
    if not paths:
        raise SonotrapError("no validation export given; pass --validation CSV")
    sources = [read_validation_export(p, root, strict, with_songtype) for p in paths]
    recordings: dict[str, Recording] = {}
    annotations: list[Annotation] = []
    problems: list[str] = []
    for s in sources:
        for rec in s.recordings:
            recordings.setdefault(rec.file, rec)
        annotations += s.annotations
        problems += s.problems
    if len({str(s.root.resolve()) for s in sources}) > 1:
        raise SonotrapError("validation exports resolve to different audio roots; pass --root DIR for all")
    return Source(sources[0].root, list(recordings.values()), annotations, problems)
