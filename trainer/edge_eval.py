"""Score a bundle exactly as the daemon runs it, and set its operating points on validation.

``sonotrap evaluate --bundle`` must report what a user of the field recorder would see, so
recordings go through the edge's own pipeline (file source, hop schedule, frontend, ONNX
runtime) via :func:`edge.analysis.analyze.analyze_file`; the hop scores are kept and the
daemon's :class:`~edge.inference.detector.Detector` is replayed over them, which lets the
same scores be judged at other thresholds without re-running the model. The recordings of a
split come from the data set's standard split by recording (:mod:`trainer.split`, seed and
fractions as ``sonotrap train`` uses by default) unless a ``split.json`` is given.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import Config, DetectorConfig
from edge.contracts import ModelRuntime
from edge.errors import SonotrapError
from edge.inference.detector import Detector, enabled_labels, resolve_thresholds
from trainer import operating_points, user_metrics
from trainer.annotations import Annotation, read_data_dir
from trainer.labels import LabelSelection, select_labels
from trainer.split import read_split, split_recordings
from trainer.windows import WindowConfig, window_targets

log = logging.getLogger("sonotrap.trainer")


@dataclass
class RecordingScores:
    """Every hop of one recording: window times (s from its start) and the model's scores."""

    file: str
    duration_s: float
    hops: np.ndarray  # (H,) hop indices
    t_start: np.ndarray  # (H,)
    t_end: np.ndarray  # (H,)
    scores: np.ndarray  # (H, K)
    gated: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (H,) hops that skipped the model


@dataclass
class SplitData:
    """The recordings of one split, their annotated calls and durations."""

    root: Path
    files: list[str]
    calls: list[Annotation]  # present calls of the model's labels in these files
    durations: dict[str, float] = field(default_factory=dict)


def load_split(data_root: str | Path, labels: list[str], split: str, split_file: str | Path | None = None,
               seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> SplitData:
    """A split of a data folder (``files.csv`` + ``annotations.csv``), recreated deterministically."""
    source = read_data_dir(data_root)
    source, _, _ = select_labels(source, LabelSelection())
    if split_file is not None:
        chosen = read_split(split_file)[split]
    else:
        chosen = split_recordings(source.recordings, source.annotations, labels, fractions, seed)[split]
    keep, wanted = set(chosen), set(labels)
    recs = {r.file: r for r in source.recordings if r.file in keep}
    missing = sorted(keep - set(recs))
    if missing:
        raise SonotrapError(f"the {split} split names {len(missing)} recordings missing from {data_root} "
                            f"(e.g. {missing[0]}); pass the data folder the split was made from")
    calls = [a for a in source.annotations if a.file in keep and a.label in wanted and a.present]
    return SplitData(Path(source.root), sorted(recs), calls, {f: r.duration_s for f, r in recs.items()})


def score_recordings(bundle, data: SplitData, cfg: Config | None = None, threads: int = 1,
                     progress: bool = False, runtime: ModelRuntime | None = None) -> list[RecordingScores]:
    """Run the edge pipeline over every recording of ``data``; hop scores per recording.

    ``runtime`` replaces the bundle's ONNX classifier (its frontend and gate still apply).
    """
    from edge.analysis.analyze import analyze_file
    from edge.inference.runtime import Classifier

    cfg = cfg or Config()
    classifier = runtime if runtime is not None else Classifier(bundle, threads)
    out = []
    for i, file in enumerate(data.files):
        hops: list = []
        res = analyze_file(data.root / file, classifier, cfg, batch=16, on_hop=hops.append)
        if res.error:
            raise SonotrapError(f"{file}: {res.error}")
        out.append(RecordingScores(
            file, res.duration_s, np.array([h.hop for h in hops], int),
            np.array([h.t_start for h in hops], float), np.array([h.t_end for h in hops], float),
            np.stack([h.scores for h in hops]) if hops else np.zeros((0, len(bundle.labels)), np.float32),
            np.array([h.gated for h in hops], bool),
        ))
        if progress and (i + 1) % 20 == 0:
            log.info("scored %d/%d recordings", i + 1, len(data.files))
    return out


def replay(recs: list[RecordingScores], labels: list[str], thresholds: dict[str, float],
           cfg: DetectorConfig, enabled: set[str] | None) -> list[user_metrics.Span]:
    """The events the daemon's detector publishes for these hop scores, as spans."""
    spans = []
    for r in recs:
        det = Detector(labels=labels, names={}, thresholds=thresholds, cfg=cfg, enabled=enabled,
                       new_id=lambda: "")
        events = []
        for k, t0, t1, s in zip(r.hops, r.t_start, r.t_end, r.scores, strict=True):
            events += det.update(int(k), float(t0), float(t1), s)
        events += det.flush()
        spans += [user_metrics.Span(r.file, e.label, max(0.0, e.start), e.end, e.peak_score)
                  for e in events if e.state == "ended"]
    return spans


def hop_truth(recs: list[RecordingScores], calls: list[Annotation], labels: list[str],
              min_overlap: float = WindowConfig.min_overlap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(targets, known, recording index) per hop window, labelled as training windows are.

    A call overlapping a window by less than ``min_overlap`` (of the call or the window) makes
    that label unknown there: neither a miss nor a false alarm.
    """
    by_file: dict[str, list[Annotation]] = defaultdict(list)
    for a in calls:
        by_file[a.file].append(a)
    targets, known, groups = [], [], []
    for g, r in enumerate(recs):
        anns = by_file.get(r.file, [])
        idx = {lab: i for i, lab in enumerate(labels)}
        for t0, t1 in zip(r.t_start, r.t_end, strict=True):
            y, _ = window_targets(anns, t0, t1, labels, True, min_overlap)
            k = np.ones(len(labels), bool)
            for a in anns:  # partial overlaps: unknown
                if a.start_s < t1 and t0 < a.end_s and not y[idx[a.label]]:
                    k[idx[a.label]] = False
            targets.append(y)
            known.append(k)
            groups.append(g)
    n = len(labels)
    return (np.array(targets, np.float32).reshape(-1, n), np.array(known, bool).reshape(-1, n),
            np.array(groups, int))


def measure(recs: list[RecordingScores], data: SplitData, labels: list[str], thresholds: dict[str, float],
            cfg: DetectorConfig, enabled: set[str] | None) -> dict[str, Any]:
    """The user's view (events, presence, windows, false alarms/hour) at these settings."""
    dets = replay(recs, labels, thresholds, cfg, enabled)
    calls = [user_metrics.Span(a.file, a.label, a.start_s, a.end_s) for a in data.calls]
    y, known, _ = hop_truth(recs, data.calls, labels)
    probs = np.concatenate([r.scores for r in recs]) if recs else np.zeros((0, len(labels)))
    active = np.array([enabled is None or lab in enabled for lab in labels])
    window = user_metrics.window_scores(probs, y, known, np.array([thresholds[lab] for lab in labels]), active)
    view = user_metrics.user_view(dets, calls, {r.file: r.duration_s for r in recs}, window)
    view["enabled_labels"] = int(active.sum())
    return view


def bundle_settings(bundle, cfg: DetectorConfig) -> tuple[dict[str, float], set[str]]:
    """Thresholds and enabled labels exactly as the daemon resolves them from bundle + config."""
    return (resolve_thresholds(bundle.labels, bundle.manifest.thresholds, cfg),
            enabled_labels(bundle.manifest.labels, cfg))


def choose_operating_points(recs: list[RecordingScores], data: SplitData, labels: list[str],
                            target_precision: float = 0.9, **kwargs) -> dict[str, operating_points.OperatingPoint]:
    """Per-label thresholds and enabled flags from validation hop scores (by-recording bootstrap)."""
    y, known, groups = hop_truth(recs, data.calls, labels)
    probs = np.concatenate([r.scores for r in recs])
    return operating_points.estimate_all(probs, y, groups, labels, target_precision, known=known, **kwargs)


def apply_operating_points(manifest, points: dict[str, operating_points.OperatingPoint],
                           target_precision: float, how: str) -> None:
    """Write thresholds and enabled flags into ``manifest`` (its model file is untouched)."""
    for lab in manifest.labels:
        p = points[lab.code]
        manifest.thresholds[lab.code] = p.threshold
        lab.enabled = p.enabled
        lab.expected_precision = None if p.expected_precision is None else round(p.expected_precision, 4)
        lab.expected_recall = None if p.expected_recall is None else round(p.expected_recall, 4)
        lab.disabled_reason = p.reason
    manifest.metrics["operating_points"] = {
        "target_precision": target_precision, "method": how,
        "enabled": sum(p.enabled for p in points.values()), "labels": len(points),
    }


def split_from_run(run, split: str) -> SplitData:
    """A split of a training run directory (its own ``split.json``, recordings and annotations)."""
    from trainer.rundata import SPLIT_FILE

    files = set(read_split(run.run_dir / SPLIT_FILE)[split])
    wanted = set(run.labels)
    calls = [a for a in run.annotations if a.file in files and a.label in wanted and a.present]
    return SplitData(run.root, sorted(files), calls, {f: run.recordings[f].duration_s for f in files})


def pooled(*splits: SplitData) -> SplitData:
    """Several splits of one data folder as one (e.g. train + validation for cross-fitting)."""
    files = sorted({f for d in splits for f in d.files})
    return SplitData(splits[0].root, files, [a for d in splits for a in d.calls],
                     {f: t for d in splits for f, t in d.durations.items()})


def user_view_report(bundle, split: str, data: SplitData, cfg: Config | None = None,
                     threads: int = 1, progress: bool = False) -> dict[str, Any]:
    """What the daemon would publish with ``bundle`` as it is, scored on ``data``."""
    cfg = cfg or Config()
    recs = score_recordings(bundle, data, cfg, threads, progress)
    thresholds, enabled = bundle_settings(bundle, cfg.detector)
    view = measure(recs, data, bundle.labels, thresholds, cfg.detector, enabled)
    return {"split": split, "hop_s": cfg.model.hop_s, "headline": user_metrics.headline(view), **view}


def set_operating_points(bundle_dir: str | Path, val: SplitData, target_precision: float = 0.9,
                         cfg: Config | None = None, threads: int = 1,
                         report: tuple[str, SplitData] | None = None,
                         scored: list[RecordingScores] | None = None, how: str | None = None,
                         ) -> tuple[dict[str, operating_points.OperatingPoint], dict[str, Any] | None]:
    """Re-estimate a bundle's thresholds and enabled flags on validation; rewrite its manifest.

    ``report`` = (split name, data): also store the user's view on that split at the new
    settings in the manifest metrics (reporting only: nothing is chosen on it). The model
    file is untouched, so its sha256 stays valid; a signature is voided (the manifest
    changes) and must be renewed with ``sonotrap bundle sign``.

    ``scored``: hop scores of ``val``'s recordings computed elsewhere (out-of-fold scores of a
    cross-fitted head, :mod:`trainer.crossfit`), used instead of running the bundle; ``how``
    then says where they come from.
    """
    from edge.models.bundle import load_bundle, write_bundle

    cfg = cfg or Config()
    bundle = load_bundle(bundle_dir)
    if scored is None and cross_fitted(bundle.manifest):
        raise SonotrapError(f"{bundle_dir}: its head was fitted on the validation recordings (cross-fitted), so "
                            "validation cannot judge it; set its operating points from the checkpoint instead: "
                            "sonotrap quantize CHECKPOINT -o BUNDLE --target-precision P")
    recs = scored if scored is not None else score_recordings(bundle, val, cfg, threads)
    points = choose_operating_points(recs, val, bundle.labels, target_precision)
    manifest = bundle.manifest
    apply_operating_points(manifest, points, target_precision, how or HOW)
    view = None
    if report is not None:
        name, data = report
        recs = recs if data is val else score_recordings(bundle, data, cfg, threads)
        thresholds, enabled = bundle_settings(bundle, DetectorConfig())
        view = measure(recs, data, bundle.labels, thresholds, DetectorConfig(), enabled)
        view = {"split": name, "hop_s": cfg.model.hop_s, "headline": user_metrics.headline(view), **view}
        manifest.metrics["user_view"] = {"split": name, "hop_s": cfg.model.hop_s,
                                         "detector": "defaults", **view["headline"]}
    write_bundle(bundle.path, bundle.model_path, manifest)
    load_bundle(bundle.path)  # still passes every check a device runs
    return points, view


CROSS_FITTED = "out-of-fold"  # how trainer.crossfit's method description starts


def cross_fitted(manifest) -> bool:
    """The bundle's head was fitted on the validation windows too (its operating points are
    out-of-fold, :mod:`trainer.crossfit`): validation cannot judge it."""
    return str(manifest.metrics.get("operating_points", {}).get("method", "")).startswith(CROSS_FITTED)
HOW = "validation hop windows, by-recording bootstrap precision lower bound (see docs/training.md)"
