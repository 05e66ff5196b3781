"""Batch analysis output on disk: one result file per recording, merged into the tables.

Archives take days and clusters kill jobs, so nothing is held back for the end: each
recording's result (its detection rows, duration, recording scores) is committed as
``<out>/results/<name>.json`` the moment it is done, written to a temporary file and renamed,
so a killed run leaves whole results or none and loses only the recordings in flight. A re-run
skips recordings that have a result; shards of one data set write into one folder without
touching each other's files. :func:`merge` turns the result files into ``detections.csv`` and
the recording-score CSV, identical whatever the number of shards, workers or restarts,
because it orders rows by recording name, not by finishing time. Results remember the model
and detector settings they came from; mixing two is refused rather than merged.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.analysis.analyze import CSV_HEADER
from edge.analysis.recording_scores import open_recording_scores, write_recording_scores
from edge.config import Config
from edge.errors import SonotrapError
from edge.models.bundle import ModelBundle

RESULTS = "results"
PLANS = "plans"
FORMAT = 1


def settings_key(bundle: ModelBundle, cfg: Config) -> dict[str, Any]:
    """What makes two results comparable: the exact model and the detection settings."""
    key = {"labels": list(bundle.labels), "model": bundle.name, "version": bundle.version,
           "model_sha256": bundle.manifest.model_sha256, "hop_s": cfg.model.hop_s, "detector": asdict(cfg.detector)}
    return json.loads(json.dumps(key))  # as it reads back from a result file (tuples become lists)


def result_path(out: Path, name: str) -> Path:
    return out / RESULTS / (name + ".json")


def raven_path(out: Path, name: str) -> Path:
    return out / (name + ".selections.txt")


def write_atomic(path: Path, text: str) -> None:
    """Whole file or no file, also after a power cut (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class Result:
    name: str
    settings: dict[str, Any]
    duration_s: float = 0.0
    hops: int = 0
    rows: list[list[str]] = field(default_factory=list)  # analyze.event_rows
    scores: dict[str, list[float | None]] = field(default_factory=dict)  # aggregation -> per label
    error: str | None = None

    def save(self, out: Path) -> None:
        write_atomic(result_path(out, self.name), json.dumps({"format": FORMAT, **asdict(self)}) + "\n")


def load_result(out: Path, name: str) -> Result | None:
    """The committed result of ``name``; None when there is none (or it is unreadable: redo it)."""
    return _read(result_path(out, name))


def _read(path: Path) -> Result | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.pop("format", None) != FORMAT:
            return None
        return Result(**data)
    except (OSError, ValueError, TypeError):
        return None


def check_settings(result: Result, settings: dict[str, Any], out: Path) -> None:
    if result.settings != settings:
        raise SonotrapError(
            f"{out} holds results of {result.settings.get('model')} {result.settings.get('version')} "
            f"with other settings (e.g. {result_path(out, result.name)}); analyse into a new --out folder "
            "or delete its results/ to start over"
        )


def write_plan(out: Path, shard: tuple[int, int], names: Sequence[str]) -> None:
    """The recordings a shard is responsible for, so that a merge can tell what is missing."""
    k, n = shard
    write_atomic(out / PLANS / f"{k}-of-{n}.txt", "".join(f"{name}\n" for name in names))


@dataclass
class MergeSummary:
    recordings: int
    failed: list[Result]
    missing: list[str]
    detections: int
    audio_s: float


def merge(out: Path, scores_path: Path | None = None, agg: str = "max") -> MergeSummary:
    """``<out>/detections.csv`` (and the recording-score CSV) from every result under ``<out>``."""
    root = out / RESULTS
    results = []
    if root.is_dir():
        for path in sorted(root.rglob("*.json")):  # not the .tmp files of results being written
            res = _read(path)
            if res is None:
                raise SonotrapError(f"{path} is not a sonotrap result; remove it and re-run that recording")
            results.append(res)
    results.sort(key=lambda r: r.name)
    if not results:
        raise SonotrapError(f"no results in {out}; run `sonotrap analyze PATH... -o {out}` first")
    for res in results[1:]:
        check_settings(res, results[0].settings, out)
    planned: set[str] = set()
    if (out / PLANS).is_dir():
        for plan in (out / PLANS).glob("*.txt"):
            planned.update(line for line in plan.read_text(encoding="utf-8").splitlines() if line)
    done = [r for r in results if r.error is None]
    missing = sorted(planned - {r.name for r in results})
    lines = [CSV_HEADER] + [[r.name, *row] for r in done for row in r.rows]
    write_atomic(out / "detections.csv", _csv(lines))
    if scores_path is not None:
        with open_recording_scores(scores_path) as fh:
            write_recording_scores(fh, results[0].settings["labels"], [(r.name, np.array(r.scores.get(agg, []), dtype=float))
                                                for r in done])
    return MergeSummary(recordings=len(done), failed=[r for r in results if r.error is not None],
                        missing=missing, detections=sum(len(r.rows) for r in done),
                        audio_s=sum(r.duration_s for r in done))


def _csv(rows: Sequence[Sequence[Any]]) -> str:
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    return buf.getvalue()
