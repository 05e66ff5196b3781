"""Annotation readers: every supported input becomes ``Recording`` + ``Annotation`` records.

Supported sources (all produce the same records, so windows/splits/training never care):
- annotation tables ``file,start_s,end_s,label[,present]`` plus an optional files list
  ``file[,duration_s,sample_rate]`` (files without a call are known negatives);
- Raven selection tables (``Begin Time (s)``, ``End Time (s)``, ``Species``/``Annotation``),
  one table per recording;
- folder-per-class clips (``DIR/<label>/*.wav``; a folder named ``negative``/``background``/
  ``noise`` holds negatives).

Three-state labels: ``Annotation.present`` is True (a call of ``label`` is there),
False (validated absent) or None (unknown). ``Recording.complete`` says every class was
annotated in the recording, so any class without a call there is a known negative.

Bad input (missing/unreadable/truncated audio, annotation outside the file, end before start, unknown
columns) is reported as one line naming file and row; ``strict`` raises, otherwise the row or
file is skipped and counted in ``Source.problems``. No torch here.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from edge.errors import SonotrapError

log = logging.getLogger("sonotrap.trainer")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3", ".opus", ".w64", ".caf")
NEGATIVE_FOLDERS = ("negative", "negatives", "background", "noise", "_negative", "_background")
# Tolerance for annotations ending just after the file end (rounding in annotation tools).
_END_TOLERANCE_S = 0.05


@dataclass(frozen=True)
class Recording:
    """One audio file. ``file`` is the key used everywhere (relative to ``Source.root``)."""

    file: str
    duration_s: float
    sample_rate: int
    complete: bool = True


@dataclass(frozen=True)
class Annotation:
    """One call (or validated absence) of ``label`` in ``file`` between ``start_s`` and ``end_s``."""

    file: str
    start_s: float
    end_s: float
    label: str
    present: bool | None = True


@dataclass
class Source:
    """A loaded dataset: recordings, annotations and the problems met while reading them."""

    root: Path
    recordings: list[Recording]
    annotations: list[Annotation]
    problems: list[str] = field(default_factory=list)

    def path(self, file: str) -> Path:
        p = Path(file)
        return p if p.is_absolute() else self.root / p

    @property
    def labels(self) -> list[str]:
        return sorted({a.label for a in self.annotations})


class Problems:
    """Collects bad-input lines; in strict mode the first one stops with a SonotrapError."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        if self.strict:
            raise SonotrapError(line + " (run without --strict to skip such rows)")
        log.warning("skipped: %s", line)
        self.lines.append(line)


def audio_info(path: Path, problems: Problems) -> tuple[float, int] | None:
    """(duration_s, sample_rate) of a readable audio file, or None after reporting why not."""
    if not path.is_file():
        problems(f"audio file {path} does not exist; fix the path in the annotations or add the file")
        return None
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises RuntimeError/LibsndfileError/TypeError
        problems(f"audio file {path} cannot be read ({str(err).splitlines()[0][:100]}); "
                 "convert it to WAV/FLAC or remove it")
        return None
    if info.frames <= 0 or info.samplerate <= 0:
        problems(f"audio file {path} is empty; remove it from the file list")
        return None
    damage = _damage(path, info)
    if damage is not None:
        problems(f"audio file {path} is truncated or damaged ({damage}); re-export or remove it")
        return None
    return info.frames / info.samplerate, int(info.samplerate)


# Frames decoded at the end of each file to catch truncation (a seek + short read, not a full decode).
_TAIL_FRAMES = 4096
# libsndfile's WAV report when the data chunk promises more bytes than the file holds (it then
# silently shortens the file); sizes >= 2**31 - 1 are streaming placeholders, not truncation.
_WAV_DATA_SHORT = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _damage(path: Path, info) -> str | None:
    """Why ``path`` is truncated/undecodable at its end, or None when its last frames decode."""
    m = _WAV_DATA_SHORT.search(info.extra_info or "")
    if m and int(m.group(2)) < int(m.group(1)) < 0x7FFFFFFF:
        return f"header promises {m.group(1)} bytes of audio, the file holds {m.group(2)}"
    try:
        with sf.SoundFile(str(path)) as f:
            want = min(_TAIL_FRAMES, f.frames)
            f.seek(f.frames - want)
            got = len(f.read(want, dtype="float32", always_2d=True))
    except Exception as err:  # LibsndfileError "lost sync", "psf_fseek() failed", ...
        return f"decoding its last frames failed: {str(err).splitlines()[0][:100]}"
    if got < want:
        return f"header promises {info.frames} frames, only {info.frames - want + got} could be read"
    return None


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV (tab-separated for .txt/.tsv), cells stripped; clear errors."""
    if not path.is_file():
        raise SonotrapError(f"table {path} does not exist; pass an existing CSV file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise SonotrapError(f"table {path} cannot be read ({err}); save it as UTF-8 CSV") from None
    dialect = csv.excel_tab if path.suffix.lower() in (".txt", ".tsv") else csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    columns = [c.strip() for c in (reader.fieldnames or [])]
    rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    return columns, rows


def _require(columns: list[str], needed: Iterable[str], path: Path, hint: str) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise SonotrapError(
            f"table {path} has no column(s) {missing} (found {columns}); {hint}"
        )


def _parse_present(value: str) -> bool | None:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "y", "present"):
        return True
    if v in ("0", "false", "no", "n", "absent"):
        return False
    if v in ("", "unknown", "?", "na", "nan", "none"):
        return None
    raise ValueError(f"present={value!r} is not 1, 0 or empty")


def check_annotation(
    ann: Annotation, duration_s: float, where: str, problems: Problems
) -> Annotation | None:
    """Validate one annotation against its recording; clip tiny overshoots at the end."""
    if not ann.end_s > ann.start_s:
        problems(f"{where}: end {ann.end_s} s is not after start {ann.start_s} s; fix the row")
        return None
    if ann.start_s < 0 or ann.start_s >= duration_s or ann.end_s > duration_s + _END_TOLERANCE_S:
        problems(
            f"{where}: call {ann.start_s}-{ann.end_s} s lies outside {ann.file} "
            f"(0-{duration_s:.3f} s); fix the times or the file name"
        )
        return None
    if ann.end_s > duration_s:
        ann = Annotation(ann.file, ann.start_s, duration_s, ann.label, ann.present)
    return ann


def read_table(
    annotations_csv: str | Path,
    files_csv: str | Path | None = None,
    root: str | Path | None = None,
    strict: bool = False,
    complete: bool | None = None,
) -> Source:
    """``file,start_s,end_s,label[,present]`` + optional files list; paths relative to ``root``.

    ``root`` defaults to the annotation table's folder. Every file in the files list (or, without
    one, every annotated file) is a complete recording (every class annotated), unless
    ``complete`` is False or (by default) the table has a ``present`` column: validation-style
    data where classes without a row in a window are unknown.
    """
    annotations_csv = Path(annotations_csv)
    root = Path(root) if root is not None else annotations_csv.parent
    problems = Problems(strict)
    columns, rows = read_csv(annotations_csv)
    _require(columns, ("file", "start_s", "end_s", "label"), annotations_csv,
             "use the header file,start_s,end_s,label[,present]")
    has_present = "present" in columns

    files: dict[str, tuple[float, int] | None] = {}
    if files_csv is not None:
        files_csv = Path(files_csv)
        fcols, frows = read_csv(files_csv)
        _require(fcols, ("file",), files_csv, "use the header file[,duration_s,sample_rate]")
        for f in frows:
            if f["file"]:
                files[f["file"]] = None
    for r in rows:
        files.setdefault(r.get("file", ""), None)
    files.pop("", None)

    info: dict[str, tuple[float, int]] = {}
    for name in files:
        got = audio_info(root / name if not Path(name).is_absolute() else Path(name), problems)
        if got is not None:
            info[name] = got

    annotations: list[Annotation] = []
    for i, r in enumerate(rows, start=2):  # row 1 is the header
        where = f"{annotations_csv.name} row {i}"
        name = r["file"]
        if not name:
            problems(f"{where}: empty file name; fill in the file column")
            continue
        if name not in info:
            continue  # already reported once for the file
        try:
            start, end = float(r["start_s"]), float(r["end_s"])
            present = _parse_present(r.get("present", "1")) if has_present else True
        except ValueError as err:
            problems(f"{where}: {err}; times must be seconds, present 1/0/empty")
            continue
        label = r["label"]
        if not label:
            problems(f"{where}: empty label; fill in the label column")
            continue
        ann = check_annotation(Annotation(name, start, end, label, present), info[name][0], where, problems)
        if ann is not None:
            annotations.append(ann)
    if complete is None:
        # A 'present' column means validation-style data: only validated classes are known.
        complete = not has_present
    recordings = [Recording(name, d, sr, complete=complete) for name, (d, sr) in info.items()]
    src = Source(root, recordings, annotations, problems.lines)
    log.info("read %d recordings, %d annotations from %s (%d problems)",
             len(recordings), len(annotations), annotations_csv, len(problems.lines))
    return src


def read_data_dir(data_dir: str | Path, strict: bool = False) -> Source:
    """A folder holding ``annotations.csv`` (+ ``files.csv``), e.g. ``../shared/data/nips4bplus``."""
    data_dir = Path(data_dir)
    ann = data_dir / "annotations.csv"
    if not ann.is_file():
        raise SonotrapError(
            f"{data_dir} has no annotations.csv; pass --annotations CSV, --raven DIR or --folders DIR"
        )
    files = data_dir / "files.csv"
    return read_table(ann, files if files.is_file() else None, data_dir, strict)


RAVEN_BEGIN = "Begin Time (s)"
RAVEN_END = "End Time (s)"
RAVEN_LABEL_COLUMNS = ("Species", "Annotation", "species", "annotation", "Label", "label")


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def _raven_audio_for(table: Path, audio_by_stem: dict[str, Path]) -> Path | None:
    """Raven names tables ``<recording>.Table.1.selections.txt``; match the longest stem prefix."""
    name = table.name
    best = None
    for stem, path in audio_by_stem.items():
        if (name.startswith(stem + ".") or name == stem + ".txt") and (best is None or len(stem) > len(best[0])):
            best = (stem, path)
    return best[1] if best else None


def read_raven(folder: str | Path, strict: bool = False) -> Source:
    """Raven selection tables next to (or below) their recordings; audio without a table = negative."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SonotrapError(f"Raven folder {folder} does not exist; pass the folder with tables and audio")
    problems = Problems(strict)
    audio = _audio_files(folder)
    audio_by_stem = {p.stem: p for p in audio}
    tables = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not tables:
        raise SonotrapError(f"{folder} has no Raven selection tables (*.txt); export them from Raven")
    recordings: dict[str, Recording] = {}
    annotations: list[Annotation] = []
    for p in audio:
        got = audio_info(p, problems)
        if got is not None:
            rel = str(p.relative_to(folder))
            recordings[rel] = Recording(rel, got[0], got[1], True)
    for table in tables:
        wav = _raven_audio_for(table, audio_by_stem)
        if wav is None:
            problems(f"Raven table {table.name} matches no audio file in {folder}; "
                     "name it <recording>.Table.1.selections.txt")
            continue
        rel = str(wav.relative_to(folder))
        if rel not in recordings:
            continue
        columns, rows = read_csv(table)
        label_col = next((c for c in RAVEN_LABEL_COLUMNS if c in columns), None)
        missing = [c for c in (RAVEN_BEGIN, RAVEN_END) if c not in columns]
        if missing or label_col is None:
            # One bad table skips that recording (counted), like a bad row; strict stops.
            problems(f"{table.name} row 1: no column(s) {missing or list(RAVEN_LABEL_COLUMNS)[:2]} "
                     f"(found {columns}); export the selection table from Raven with a Species "
                     "or Annotation column")
            recordings.pop(rel)
            continue
        view_col = "View" if "View" in columns else None
        for i, r in enumerate(rows, start=2):
            if view_col and r[view_col] and not r[view_col].lower().startswith("spectrogram"):
                continue  # Raven writes each selection once per view; keep one
            where = f"{table.name} row {i}"
            try:
                start, end = float(r[RAVEN_BEGIN]), float(r[RAVEN_END])
            except ValueError:
                problems(f"{where}: times {r[RAVEN_BEGIN]!r}/{r[RAVEN_END]!r} are not numbers; fix the row")
                continue
            label = r[label_col]
            if not label:
                problems(f"{where}: empty {label_col}; fill it in")
                continue
            ann = check_annotation(Annotation(rel, start, end, label), recordings[rel].duration_s, where, problems)
            if ann is not None:
                annotations.append(ann)
    return Source(folder, list(recordings.values()), annotations, problems.lines)


def read_folders(folder: str | Path, strict: bool = False) -> Source:
    """``DIR/<label>/*.wav``: each clip is one call of its folder's label over its whole length."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SonotrapError(f"clip folder {folder} does not exist; pass DIR with one sub-folder per class")
    problems = Problems(strict)
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise SonotrapError(f"{folder} has no sub-folders; put clips in DIR/<label>/")
    recordings: list[Recording] = []
    annotations: list[Annotation] = []
    for class_dir in classes:
        negative = class_dir.name.lower() in NEGATIVE_FOLDERS
        for p in _audio_files(class_dir):
            got = audio_info(p, problems)
            if got is None:
                continue
            rel = str(p.relative_to(folder))
            recordings.append(Recording(rel, got[0], got[1], True))
            if not negative:
                annotations.append(Annotation(rel, 0.0, got[0], class_dir.name))
    if not recordings:
        raise SonotrapError(f"{folder} holds no readable audio clips; add WAV/FLAC files to DIR/<label>/")
    return Source(folder, recordings, annotations, problems.lines)
