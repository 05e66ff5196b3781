"""Ingest -> label selection -> windows -> split, written into a run directory (no torch).

After this the run directory alone (plus the audio) defines the training data; training,
evaluation, export and calibration all read it back with :mod:`trainer.rundata`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig
from trainer.annotations import Source, read_data_dir, read_folders, read_raven, read_table
from trainer.labels import LabelSelection, label_names, read_mapping, select_labels
from trainer.rundata import SPLIT_FILE, RunData, load_run_data, windows_file, write_run_data
from trainer.species import SPECIES_FILE, read_species, species_names, write_species
from trainer.split import SPLITS, read_split, split_recordings, write_split
from trainer.windows import WindowConfig, make_windows, write_windows

log = logging.getLogger("sonotrap.trainer")


@dataclass
class DataSpec:
    """Where the data comes from and how it becomes windows (the CLI's data flags)."""

    data: str | None = None
    annotations: str | None = None
    files: str | None = None
    raven: str | None = None
    folders: str | None = None
    root: str | None = None
    strict: bool = False
    selection: LabelSelection = field(default_factory=LabelSelection)
    names_file: str | None = None
    species_file: str | None = None  # code,scientific_name,common_name[,group] (trainer.species)
    window: WindowConfig = field(default_factory=WindowConfig)
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_file: str | None = None
    seed: int = 0
    validations: list[str] = field(default_factory=list)  # validation exports (weak labels)


def read_source(spec: DataSpec) -> Source:
    given = [x for x in (spec.data, spec.annotations, spec.raven, spec.folders, spec.validations) if x]
    if len(given) != 1:
        raise SonotrapError("pass exactly one of --data DIR, --annotations CSV, --raven DIR, --folders DIR, "
                            "--validation CSV")
    if spec.validations:
        from trainer.validation_export import read_validation_exports

        return read_validation_exports(spec.validations, spec.root, spec.strict)
    if spec.data:
        return read_data_dir(spec.data, spec.strict)
    if spec.annotations:
        return read_table(spec.annotations, spec.files, spec.root, spec.strict)
    if spec.raven:
        return read_raven(spec.raven, spec.strict)
    assert spec.folders  # exactly one source is given (checked above)
    return read_folders(spec.folders, spec.strict)


@dataclass
class Prepared:
    run: RunData
    problems: list[str]
    counts: dict[str, int]
    num_windows: dict[str, int]


def prepare_run(spec: DataSpec, frontend: FrontendConfig, run_dir: str | Path) -> Prepared:
    """Write dataset.json, annotations.csv, split.json and windows_<split>.csv into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    source = read_source(spec)
    if not source.recordings:
        raise SonotrapError("no readable recording was found; check the paths in the annotations")
    source, labels, counts = select_labels(source, spec.selection)
    names = label_names(labels)
    if spec.species_file:  # species names first; a --names file still wins for the labels it names
        table = read_species(spec.species_file)
        names.update(species_names(labels, table))
        write_species(run_dir / SPECIES_FILE, labels, table)
    if spec.names_file:
        names.update({k: v for k, v in read_mapping(spec.names_file).items() if k in names})
    window = WindowConfig(**{**spec.window.__dict__, "window_s": frontend.window_s})
    if spec.split_file:
        split = read_split(spec.split_file)
        unknown = sorted({f for s in SPLITS for f in split[s]} - {r.file for r in source.recordings})
        if unknown:
            raise SonotrapError(f"split file {spec.split_file} names {len(unknown)} recordings not in the "
                                f"data (e.g. {unknown[0]}); pass the split of this data set")
    else:
        split = split_recordings(source.recordings, source.annotations, labels, spec.fractions, spec.seed)
    write_split(run_dir / SPLIT_FILE, split, spec.seed, spec.fractions)
    by_split = {f: s for s in SPLITS for f in split[s]}
    num: dict[str, int] = {}
    for s in SPLITS:
        recs = [r for r in source.recordings if by_split.get(r.file) == s]
        wins = make_windows(recs, source.annotations, labels, window)
        write_windows(run_dir / windows_file(s), wins)
        num[s] = len(wins)
    write_run_data(run_dir, source.root, labels, names, frontend, window, source.recordings, source.annotations)
    if num["train"] == 0:
        raise SonotrapError("the training split has no windows; add recordings or change --split")
    log.info("%d labels, windows %s, %d input problems skipped", len(labels), num, len(source.problems))
    return Prepared(load_run_data(run_dir), list(source.problems), counts, num)
