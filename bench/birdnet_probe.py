#!/usr/bin/env python3
"""The peer baseline: BirdNET embeddings + one logistic regression per label, next to our models.

What users compare a detector with is BirdNET v2.4's 1024-d embedding plus a linear probe
trained on their own labelled windows. This script trains that probe on the TRAIN windows of
a sonotrap run directory, picks per-label thresholds on its VALIDATION windows (the lowest
threshold reaching ``--target-precision``; labels that cannot reach it are disabled) and
scores the TEST windows. Our models (INT8 bundles through the edge's frontend and runtime,
and/or FP32 checkpoints) are scored on exactly the same windows with the same metrics:

- window macro-AP and macro ROC-AUC (known entries only, as the trainer reports them);
- recording macro ROC-AUC: per recording and label, the max score over its windows against
  "the recording has that label";
- pooled window precision/recall at the thresholds: all (window, enabled label) decisions
  pooled; recall counts every positive, also those of disabled labels.

Bundles are scored twice: with the thresholds in their manifest (what users get today) and
with the same validation rule as the probe (``val-p0.9``). BirdNET's outputs come from the
run's teacher cache (computed on first use; needs the optional extra ``sonotrap[birdnet]``).

``--user-view`` adds what a user of the daemon sees, for the probe and every bundle on the same
val/test recordings: each recording goes through the edge pipeline at the daemon's hops, BirdNET
runs on exactly those hop windows (cached in the run too), and the daemon's detector is replayed
over each model's hop scores. Operating points come from validation hops by the bundles' own
rule (by-recording bootstrap, ``val-hops-p0.9``); bundles are also scored with their manifest.
Reported: event precision/recall, recording presence precision/recall, false detections per
hour on call-free recordings, labels enabled.

    python bench/birdnet_probe.py --run RUN_DIR --bundle demo=models/demo [--user-view] \
        [--checkpoint distilled=RUN_DIR/best.pt] --json probe.json --markdown probe.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.util.jsonio import json_safe  # noqa: E402
from trainer.linear_head import fit_head  # noqa: E402
from trainer.metrics import choose_threshold, evaluate_scores, paired_bootstrap_macro_ap, sigmoid  # noqa: E402
from trainer.rundata import AudioCache, RunData, load_run_data, window_image  # noqa: E402
from trainer.teacher_cache import ensure_cache  # noqa: E402
from trainer.windows import to_arrays  # noqa: E402

log = logging.getLogger("sonotrap.bench.probe")


# ---- metrics (shared by every model) -------------------------------------------------------

def val_thresholds(probs, targets, known, labels, target_precision: float) -> dict[str, dict]:
    """Per label: threshold for ``target_precision`` on validation, or disabled (with why)."""
    out = {}
    for k, lab in enumerate(labels):
        m = known[:, k]
        th = choose_threshold(targets[m, k] > 0.5, probs[m, k], target_precision)
        enabled = th.method == "target_precision"
        out[lab] = {"threshold": th.threshold, "enabled": enabled, "val_precision": th.precision,
                    "val_recall": th.recall, "why": "" if enabled else th.method}
    return out


def pooled_pr(probs, targets, known, labels, thresholds: dict[str, dict]) -> dict[str, float]:
    tp = fp = 0
    pos = int(((targets > 0.5) & known).sum())
    for k, lab in enumerate(labels):
        t = thresholds.get(lab)
        if not t or not t["enabled"]:
            continue
        m = known[:, k]
        pred = probs[m, k] >= t["threshold"]
        y = targets[m, k] > 0.5
        tp += int((pred & y).sum())
        fp += int((pred & ~y).sum())
    return {"precision": tp / (tp + fp) if tp + fp else math.nan, "recall": tp / pos if pos else math.nan,
            "detections": tp + fp, "enabled_labels": sum(bool(t["enabled"]) for t in thresholds.values())}


def recording_scores(probs, targets, known, files: list[str]):
    """Max over each recording's windows (scores and labels); an entry is known if any window's is."""
    names = sorted(set(files))
    index = {f: i for i, f in enumerate(names)}
    rec_p = np.full((len(names), probs.shape[1]), -np.inf)
    rec_t = np.zeros((len(names), probs.shape[1]))
    rec_k = np.zeros((len(names), probs.shape[1]), dtype=bool)
    for row, f in enumerate(files):
        i = index[f]
        rec_p[i] = np.maximum(rec_p[i], probs[row])
        rec_t[i] = np.maximum(rec_t[i], targets[row] * known[row])
        rec_k[i] |= known[row]
    return rec_p, rec_t, rec_k


def score(probs, targets, known, labels, files, thresholds) -> dict:
    w = evaluate_scores(probs, targets, known, labels)
    r = evaluate_scores(*recording_scores(probs, targets, known, files), labels)
    out = {"window_macro_ap": w["macro_ap"], "window_macro_roc_auc": w["macro_roc_auc"],
           "recording_macro_roc_auc": r["macro_roc_auc"], "recording_macro_ap": r["macro_ap"],
           "classes_scored": w["classes_scored"]}
    out.update({f"pooled_{k}": v for k, v in pooled_pr(probs, targets, known, labels, thresholds).items()})
    return out


# ---- the models --------------------------------------------------------------------------

class Probe:
    """One logistic regression per label on standardised BirdNET embeddings (the peer's model)."""

    def __init__(self, x_train: np.ndarray, targets: np.ndarray, known: np.ndarray, c: float, seed: int) -> None:
        # The same regressions as ``sonotrap linear-head`` fits on the student's features: a label
        # with nothing to learn never fires (and ends up disabled).
        self.weights, self.bias = fit_head(x_train, targets, known, c, seed)

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        return sigmoid(np.asarray(embeddings, np.float64) @ self.weights.T + self.bias).astype(np.float32)


def probe_scores(cache, groups, targets: dict, known: dict, c: float, seed: int) -> tuple[Probe, dict]:
    """The probe trained on the TRAIN windows, and its scores of the val and test windows."""
    probe = Probe(cache.embeddings[cache.rows(groups["train"])], targets["train"], known["train"], c, seed)
    return probe, {s: probe.predict(cache.embeddings[cache.rows(groups[s])]) for s in ("val", "test")}


def split_images(run: RunData, split: str, frontend) -> np.ndarray:
    cache = AudioCache()
    ws = run.windows(split)
    images = np.zeros((len(ws), *frontend.image_shape), dtype=np.float32)
    for i, w in enumerate(ws):
        images[i] = window_image(cache, run.path(w.file), w.start_s, w.end_s - w.start_s, frontend)
    return images


def bundle_scores(run: RunData, path: str, threads: int) -> tuple[dict, dict[str, float], bool]:
    """Scores of an INT8 bundle through the edge's frontend and runtime, in the run's label order.

    Also its thresholds, and whether its head was cross-fitted (then validation is in-sample).
    """
    from edge.inference.runtime import Classifier
    from edge.models.bundle import load_bundle
    from trainer.edge_eval import cross_fitted

    bundle = load_bundle(path)
    clf = Classifier(bundle, threads=threads)
    cols = [bundle.labels.index(lab) if lab in bundle.labels else -1 for lab in run.labels]
    out = {}
    for s in ("val", "test"):
        images = split_images(run, s, bundle.frontend)
        probs = np.concatenate([clf.predict(images[i: i + 32]) for i in range(0, len(images), 32)])
        out[s] = np.where(np.array(cols) >= 0, probs[:, np.maximum(cols, 0)], 0.0).astype(np.float32)
    return out, bundle.thresholds, cross_fitted(bundle.manifest)


def checkpoint_scores(run: RunData, path: str, threads: int) -> dict:
    """FP32 scores of a sonotrap training checkpoint (PyTorch), in the run's label order."""
    import torch

    from trainer.checkpoint import load_checkpoint, model_from_checkpoint

    torch.set_num_threads(threads)
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt)
    cols = [ckpt.labels.index(lab) if lab in ckpt.labels else -1 for lab in run.labels]
    out = {}
    for s in ("val", "test"):
        images = split_images(run, s, run.frontend)
        with torch.no_grad():
            probs = np.concatenate([torch.sigmoid(model(torch.from_numpy(images[i: i + 32]))).numpy()
                                    for i in range(0, len(images), 32)])
        out[s] = np.where(np.array(cols) >= 0, probs[:, np.maximum(cols, 0)], 0.0).astype(np.float32)
    return out


# ---- the user's view: what the daemon would publish -------------------------------------

def teacher_hop_embeddings(run: RunData, recs: list, threads: int = 1, teacher=None) -> list[np.ndarray]:
    """BirdNET's embedding of every hop window of ``recs`` (a bundle's edge run), per recording.

    BirdNET runs on exactly those windows; its outputs join the run's teacher cache, so a
    second report costs no BirdNET time. ``teacher``: a stand-in with BirdNET's ``run`` (tests).
    """
    from trainer.teacher_cache import LABELLED, TeacherWindow, compute_cache

    wins = [[TeacherWindow(LABELLED, r.file, round(float(t), 3)) for t in r.t_start] for r in recs]
    cache = compute_cache(run.run_dir, [w for ws in wins for w in ws], {LABELLED: Path(run.root)}, threads,
                          window_s=run.frontend.window_s, model=teacher)
    return [cache.embeddings[cache.rows(ws)] if ws else np.zeros((0, cache.embeddings.shape[1]), np.float32)
            for ws in wins]


def teacher_hop_scores(run: RunData, recs: list, probe: Probe, threads: int = 1, teacher=None) -> list:
    """The probe's scores at the daemon's hops (the windows of ``recs``, a bundle's edge run)."""
    return [dataclasses.replace(r, scores=probe.predict(e))
            for r, e in zip(recs, teacher_hop_embeddings(run, recs, threads, teacher), strict=True)]


def crossfit_probe_points(run: RunData, cache, groups, hops: list, data, folds: int, c: float, seed: int,
                          target_precision: float, threads: int = 1, teacher=None) -> tuple[Probe, dict]:
    """The probe cross-fitted as ``sonotrap linear-head --folds`` fits the student's head.

    Train + validation recordings in the same folds (same seed), each recording's hops scored by
    the fold probe that never saw it, operating points on all of them. The probe that scores
    test is refitted on every pooled window (the student ships the mean of its fold heads
    instead). ``hops``/``data``: the pooled recordings' edge run and split.
    """
    from trainer.crossfit import cross_fit, fold_scores
    from trainer.edge_eval import choose_operating_points

    ws = [w for s in ("train", "val") for w in groups[s]]
    x = cache.embeddings[cache.rows(ws)]
    y, k = to_arrays([w for s in ("train", "val") for w in run.windows(s)], run.labels)
    files = [w.file for w in ws]
    cf = cross_fit(x, y, k, files, folds, (c,), fit_head, run.labels, seed)
    emb = teacher_hop_embeddings(run, hops, threads, teacher)
    oof = [dataclasses.replace(r, scores=fold_scores(e, cf["weights"], cf["biases"],
                                                     np.full(len(e), cf["assignment"][r.file])))
           for r, e in zip(hops, emb, strict=True)]
    points = choose_operating_points(oof, data, run.labels, target_precision)
    return Probe(x, y, k, c, seed), points


def user_view_rows(name: str, recs: dict[str, list], labels: list[str], data: dict, target_precision: float,
                   shipped: tuple[dict[str, float], set[str]] | None = None, val_rule: bool = True) -> list[dict]:
    """Event, presence and false-alarm figures of one model on val and test.

    Every model gets operating points by the bundles' own rule (validation hops, by-recording
    bootstrap) unless ``val_rule`` is off (a cross-fitted head saw validation); a bundle is also
    scored with its manifest's thresholds and enabled labels.
    """
    from edge.config import DetectorConfig
    from trainer.edge_eval import choose_operating_points, measure
    from trainer.user_metrics import headline

    settings = []
    if val_rule:
        points = choose_operating_points(recs["val"], data["val"], labels, target_precision)
        settings.append((f"val-hops-p{target_precision:g}", {lab: p.threshold for lab, p in points.items()},
                         {lab for lab, p in points.items() if p.enabled}))
    if shipped is not None:
        settings.insert(0, ("manifest", *shipped))
    rows = []
    for tname, thresholds, enabled in settings:
        for s in ("val", "test") if val_rule else ("test",):  # without the rule, validation is in-sample
            view = measure(recs[s], data[s], labels, thresholds, DetectorConfig(), enabled)
            rows.append({"model": name, "thresholds": tname, "split": s,
                         "metrics": {**headline(view), "enabled_labels": view["enabled_labels"]}})
    return rows


def user_view_report(run: RunData, probe: Probe, bundles: list[tuple[str, str]], target_precision: float,
                     threads: int = 1, teacher=None, folds: int = 0, c: float = 1.0, seed: int = 0) -> list[dict]:
    """The user's view of the probe and of each bundle on the same recordings and hops.

    ``folds``: also the probe cross-fitted on train + validation (its operating points on
    out-of-fold hop scores), the rule a bundle from ``sonotrap linear-head --folds`` ships with;
    its hops come from the first bundle's edge run of the training recordings.
    """
    from edge.config import Config, DetectorConfig
    from edge.models.bundle import load_bundle
    from trainer.edge_eval import bundle_settings, cross_fitted, score_recordings, split_from_run

    if not bundles:
        raise SystemExit("--user-view needs a --bundle: the probe is scored at the hops the daemon runs")
    data = {s: split_from_run(run, s) for s in ("val", "test")}
    rows, hops = [], None
    for name, path in bundles:
        bundle = load_bundle(path)
        recs = {s: score_recordings(bundle, data[s], Config(), threads) for s in data}
        hops = hops or recs
        rows += user_view_rows(f"{name} (INT8 bundle)", recs, bundle.labels, data, target_precision,
                               bundle_settings(bundle, DetectorConfig()), val_rule=not cross_fitted(bundle.manifest))
    assert hops is not None
    probe_recs = {s: teacher_hop_scores(run, hops[s], probe, threads, teacher) for s in data}
    rows = user_view_rows(PROBE, probe_recs, run.labels, data, target_precision) + rows
    if folds:
        from trainer.edge_eval import measure, pooled
        from trainer.teacher_cache import ensure_cache
        from trainer.user_metrics import headline

        cache, groups = ensure_cache(run, None, threads=threads, model=teacher)
        pool = pooled(split_from_run(run, "train"), data["val"])
        pool_hops = score_recordings(load_bundle(bundles[0][1]), pool, Config(), threads)
        cf_probe, points = crossfit_probe_points(run, cache, groups, pool_hops, pool, folds, c, seed,
                                                 target_precision, threads, teacher)
        test_recs = teacher_hop_scores(run, hops["test"], cf_probe, threads, teacher)
        view = measure(test_recs, data["test"], run.labels, {lab: p.threshold for lab, p in points.items()},
                       DetectorConfig(), {lab for lab, p in points.items() if p.enabled})
        rows.insert(0, {"model": f"{PROBE}, cross-fitted on train+val ({folds} folds)",
                        "thresholds": f"out-of-fold-hops-p{target_precision:g}", "split": "test",
                        "metrics": {**headline(view), "enabled_labels": view["enabled_labels"]}})
    return rows


# ---- report ------------------------------------------------------------------------------

COLUMNS = [("window_macro_ap", "window macro-AP"), ("window_macro_roc_auc", "window macro ROC-AUC"),
           ("recording_macro_roc_auc", "recording macro ROC-AUC"), ("pooled_precision", "pooled precision"),
           ("pooled_recall", "pooled recall"), ("pooled_enabled_labels", "labels enabled")]
USER_COLUMNS = [("event_precision", "event precision"), ("event_recall", "event recall"),
                ("presence_precision", "presence precision"), ("presence_recall", "presence recall"),
                ("false_detections_per_hour", "false detections per hour"), ("enabled_labels", "labels enabled")]
PROBE = "BirdNET v2.4 embedding + logistic regression"


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(rows: list[dict], columns: list[tuple[str, str]] = COLUMNS) -> str:
    head = "| model | thresholds | split | " + " | ".join(c[1] for c in columns) + " |"
    lines = [head, "|" + "---|" * (3 + len(columns))]
    for r in rows:
        lines.append(f"| {r['model']} | {r['thresholds']} | {r['split']} | "
                     + " | ".join(_fmt(r['metrics'].get(c[0])) for c in columns) + " |")
    return "\n".join(lines)


def versus_probe(models, targets, known, files: list[str], replicates: int, seed: int) -> list[dict]:
    """Each model's test window macro-AP minus the probe's, with a by-recording bootstrap interval."""
    probe = models[0][1]["test"]
    return [{"model": name, **paired_bootstrap_macro_ap(probs["test"], probe, targets, known, files, replicates, seed)}
            for name, probs, _, _ in models[1:]]


def versus_probe_markdown(rows: list[dict], replicates: int) -> str:
    out = [f"Test window macro-AP minus the probe's (by-recording bootstrap, {replicates} replicates):", "",
           "| model | difference | 95 % interval | replicates where it is higher |", "|---|---|---|---|"]
    out += [f"| {r['model']} | {r['diff']:+.3f} | {r['low']:+.3f} to {r['high']:+.3f} | {r['a_better']:.0%} |"
            for r in rows]
    return "\n".join(out)


def _named(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"{flag} takes NAME=PATH, got {item!r}")
        out.append((name, path))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="sonotrap run directory (its split and windows are used)")
    ap.add_argument("--bundle", action="append", default=[], metavar="NAME=DIR", help="INT8 bundle to compare")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PT", help="FP32 checkpoint to compare")
    ap.add_argument("--target-precision", type=float, default=0.9)
    ap.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the logistic regressions")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--user-view", action="store_true",
                    help="also score what the daemon would publish (event and presence precision/recall, false "
                         "detections per hour) for the probe and each --bundle; runs BirdNET at every hop of the "
                         "val and test recordings once (cached in the run)")
    ap.add_argument("--folds", type=int, default=0, metavar="K",
                    help="with --user-view: also the probe cross-fitted on train+val in K folds by recording "
                         "(as sonotrap linear-head --folds K), operating points on out-of-fold hop scores")
    ap.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                    help="replicates of the by-recording bootstrap of each model's test macro-AP minus the probe's "
                         "(0: none)")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--markdown", metavar="FILE")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    run = load_run_data(args.run)
    labels = run.labels
    targets, known, files = {}, {}, {}
    for s in ("train", "val", "test"):
        ws = run.windows(s)
        targets[s], known[s] = to_arrays(ws, labels)
        files[s] = [w.file for w in ws]

    t0 = time.monotonic()
    cache, groups = ensure_cache(run, None, threads=args.threads)
    models: list[tuple[str, dict, dict[str, float] | None, bool]] = []
    probe, probe_probs = probe_scores(cache, groups, targets, known, args.c, args.seed)
    models.append((PROBE, probe_probs, None, False))
    for name, path in _named(args.bundle, "--bundle"):
        probs, shipped, saw_val = bundle_scores(run, path, args.threads)
        models.append((f"{name} (INT8 bundle)", probs, shipped, saw_val))
    for name, path in _named(args.checkpoint, "--checkpoint"):
        models.append((f"{name} (FP32 checkpoint)", checkpoint_scores(run, path, args.threads), None, False))

    rows = []
    for name, probs, shipped, saw_val in models:
        options = []
        if not saw_val:  # a cross-fitted head was fitted on validation: only test says anything
            rule = val_thresholds(probs["val"], targets["val"], known["val"], labels, args.target_precision)
            options.append((f"val-p{args.target_precision:g}", rule))
        if shipped is not None:
            options.insert(0, ("manifest", {lab: {"threshold": shipped.get(lab, 0.5), "enabled": True}
                                            for lab in labels}))
        for tname, th in options:
            for s in (("test",) if saw_val else ("val", "test")):
                rows.append({"model": name, "thresholds": tname, "split": s,
                             "metrics": score(probs[s], targets[s], known[s], labels, files[s], th)})
    md = markdown(rows)
    report = {"run": str(run.run_dir), "target_precision": args.target_precision,
              "num_windows": {s: len(files[s]) for s in files}, "rows": rows}
    if args.bootstrap:
        report["versus_probe"] = versus_probe(models, targets["test"], known["test"], files["test"], args.bootstrap,
                                              args.seed)
        md += "\n\n" + versus_probe_markdown(report["versus_probe"], args.bootstrap)
    if args.user_view:
        report["user_view_rows"] = user_view_report(run, probe, _named(args.bundle, "--bundle"),
                                                    args.target_precision, args.threads, folds=args.folds,
                                                    c=args.c, seed=args.seed)
        md += "\n\nWhat the daemon would publish (events merged as it merges them):\n\n"
        md += markdown(report["user_view_rows"], USER_COLUMNS)
    report["wall_s"] = time.monotonic() - t0
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(json_safe(report), indent=1) + "\n", encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(md + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
