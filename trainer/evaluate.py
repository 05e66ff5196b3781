"""Evaluate a checkpoint on a split of its run; choose thresholds on validation; write a report.

Report folder: ``metrics.json`` (everything, per class), ``summary.md`` (Markdown tables),
``pr_curves.png`` (per-class precision-recall curves with the chosen operating points),
``pr_micro.png`` (all known entries pooled) and ``confusion.png`` (for windows truly holding
class i, how often each class j is predicted at its threshold; multi-label, so rows need not
sum to one; last column: nothing predicted). Thresholds are always chosen on the validation
split, never on the split being reported, and are written back into the checkpoint for the
export to the edge. :func:`finalize` does the same at the end of training, without a report.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.errors import SonotrapError
from edge.util.jsonio import json_safe
from trainer.checkpoint import load_checkpoint, model_from_checkpoint, update_checkpoint
from trainer.dataset import WindowDataset
from trainer.engine import evaluate, validation_thresholds
from trainer.metrics import pr_curve, threshold_dicts
from trainer.rundata import RunData, load_run_data

log = logging.getLogger("sonotrap.trainer")


def evaluate_checkpoint(
    checkpoint: str | Path, split: str, out: str | Path, target_precision: float = 0.9,
    batch_size: int = 32, workers: int = 0, data_root: str | Path | None = None, device: str = "cpu",
    progress: bool = False, write_thresholds: bool = True, user_view: bool = True,
) -> dict[str, Any]:
    """Score ``split`` with validation-chosen thresholds; write the report into ``out``."""
    if split not in ("train", "val", "test"):
        raise SonotrapError(f"--split {split!r} is not train, val or test")
    ckpt = load_checkpoint(checkpoint)
    ckpt_path = ckpt.path
    run = load_run_data(ckpt_path.parent, data_root)
    if run.labels != ckpt.labels:
        raise SonotrapError(f"checkpoint {ckpt_path} labels differ from its run directory's; "
                            "pass the checkpoint inside its own run directory")
    dev = torch.device(device)
    model = model_from_checkpoint(ckpt).to(dev)
    th, val = validation_thresholds(model, run, batch_size, dev, workers, progress, target_precision)
    if val is None:
        raise SonotrapError("the run has no validation windows to choose thresholds on; "
                            "train with a non-zero validation fraction")
    thresholds = {k: v.threshold for k, v in th.items()}
    if split == "val":
        ev = val
    else:
        windows = run.windows(split)
        if not windows:
            raise SonotrapError(f"the run has no {split} windows; evaluate --split val instead")
        ev = evaluate(model, WindowDataset(run, windows), batch_size, dev, workers, progress, split, thresholds)
    metrics = ev.metrics
    report = {
        "checkpoint": str(ckpt_path), "split": split, "epoch": ckpt.extra.get("epoch"),
        "target_precision": target_precision, "thresholds_from": "val",
        "thresholds": threshold_dicts(th), "label_names": run.label_names, "metrics": metrics,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if user_view:  # what the daemon would publish: FP32 model, edge pipeline, thresholds from val

        report["user_view"] = checkpoint_user_view(ckpt_path, run, split, target_precision, out / "edge")
    (out / "metrics.json").write_text(json.dumps(json_safe(report), indent=1) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(report), encoding="utf-8")
    np.savez_compressed(out / "scores.npz", probs=ev.probs, targets=ev.targets, known=ev.known)
    plot_pr_curves(out, ev.probs, ev.targets, ev.known, run.labels, thresholds)
    plot_confusion(out / "confusion.png", ev.probs, ev.targets, ev.known, run.labels, thresholds)
    if write_thresholds:
        update_checkpoint(ckpt, thresholds=thresholds, target_precision=target_precision,
                          metrics={**ckpt.metrics, split: json_safe(metrics)})
    return report


def finalize(
    best_path: Path, run: RunData, device: torch.device, batch_size: int = 32, workers: int = 0,
    target_precision: float = 0.9, progress: bool = False,
) -> dict[str, Any]:
    """End of training: thresholds from validation, val/test metrics with them; written into the checkpoint."""
    ckpt = load_checkpoint(best_path)
    model = model_from_checkpoint(ckpt).to(device)
    out: dict[str, Any] = {}
    th, val = validation_thresholds(model, run, batch_size, device, workers, progress, target_precision)
    thresholds = {k: v.threshold for k, v in th.items()}
    if val is not None:
        out["val"] = val.metrics
        out["val"]["thresholds"] = threshold_dicts(th)
        out["val"]["target_precision"] = target_precision
    test_w = run.windows("test")
    if test_w:
        out["test"] = evaluate(model, WindowDataset(run, test_w), batch_size, device, workers, progress, "test",
                               thresholds or None).metrics
    update_checkpoint(ckpt, thresholds=thresholds, metrics=json_safe({**ckpt.metrics, **out}))
    return out


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def summary_markdown(report: dict[str, Any]) -> str:
    m = report["metrics"]
    lines = [
        f"# Evaluation: {report['split']} split",
        "",
        f"Checkpoint `{report['checkpoint']}` (epoch {report['epoch']}); thresholds chosen on the "
        f"validation split for precision >= {report['target_precision']} (best F1 where unreachable).",
        "",
        "| metric | value |",
        "|---|---|",
        f"| macro average precision | {_fmt(m['macro_ap'])} |",
        f"| macro ROC-AUC | {_fmt(m['macro_roc_auc'])} |",
        f"| macro F1 (at thresholds) | {_fmt(m['macro_f1'])} |",
        f"| micro average precision | {_fmt(m['micro_ap'])} |",
        f"| classes with positives | {m['classes_scored']} of {len(m['per_class'])} |",
        f"| windows | {m['num_windows']} |",
        f"| known label fraction | {_fmt(m['known_fraction'])} |",
        "",
        "| label | name | positives | AP | ROC-AUC | F1 | threshold | precision | recall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = report.get("label_names", {})
    for lab, c in sorted(m["per_class"].items(), key=lambda kv: -(kv[1]["n_pos"])):
        lines.append(
            f"| {lab} | {names.get(lab, lab)} | {c['n_pos']} | {_fmt(c['ap'])} | {_fmt(c['roc_auc'])} | "
            f"{_fmt(c['f1'])} | {_fmt(c['threshold'])} | {_fmt(c['precision'])} | {_fmt(c['recall'])} |"
        )
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pr_curves(out: Path, probs, targets, known, labels, thresholds) -> None:
    plt = _plt()
    y = np.asarray(targets) > 0.5
    known = np.asarray(known, dtype=bool)
    shown = [k for k in range(len(labels)) if y[known[:, k], k].any()]
    cols = max(1, min(8, math.ceil(math.sqrt(max(len(shown), 1)))))
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_visible(False)
    for ax, k in zip(axes.ravel(), shown, strict=False):
        ax.set_visible(True)
        m = known[:, k]
        p, r, t = pr_curve(y[m, k], probs[m, k])
        ax.step(np.r_[0, r], np.r_[1, p], where="post", lw=1)
        thr = thresholds.get(labels[k], 0.5)
        sel = probs[m, k] >= thr
        tp = (sel & y[m, k]).sum()
        ax.plot(tp / max(y[m, k].sum(), 1), tp / max(sel.sum(), 1), "o", ms=3, color="red")
        ax.set_title(labels[k], fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=5)
    fig.suptitle("precision (y) vs recall (x) per class; red: chosen threshold", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pr_curves.png", dpi=90)
    plt.close(fig)
    flat = known.ravel()
    fig, ax = plt.subplots(figsize=(4, 4))
    if flat.any():
        p, r, _ = pr_curve(y.ravel()[flat], np.asarray(probs).ravel()[flat])
        ax.step(np.r_[0, r], np.r_[1, p], where="post")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("micro-averaged precision-recall (known entries)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    fig.tight_layout()
    fig.savefig(out / "pr_micro.png", dpi=90)
    plt.close(fig)


def confusion_matrix(probs, targets, known, labels, thresholds) -> np.ndarray:
    """Rows: true class i; columns: share of those windows where class j (or nothing) fires."""
    y = np.asarray(targets) > 0.5
    thr = np.array([thresholds.get(lab, 0.5) for lab in labels])
    pred = np.asarray(probs) >= thr[None, :]
    mat = np.full((len(labels), len(labels) + 1), np.nan)
    for i in range(len(labels)):
        rows = y[:, i] & np.asarray(known)[:, i]
        if rows.any():
            mat[i, :-1] = pred[rows].mean(axis=0)
            mat[i, -1] = (~pred[rows].any(axis=1)).mean()
    return mat


def plot_confusion(path: Path, probs, targets, known, labels, thresholds) -> None:
    plt = _plt()
    mat = confusion_matrix(probs, targets, known, labels, thresholds)
    k = len(labels)
    size = max(4.0, min(18.0, 0.18 * k + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(np.nan_to_num(mat, nan=0.0), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    fs = 8 if k <= 20 else 4
    ax.set_xticks(range(k + 1), [*labels, "(none)"], rotation=90, fontsize=fs)
    ax.set_yticks(range(k), labels, fontsize=fs)
    ax.set_xlabel("predicted (score >= threshold)")
    ax.set_ylabel("true label")
    fig.colorbar(im, ax=ax, fraction=0.03)
    ax.set_title("share of windows with true label (row) where each label fires")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def checkpoint_user_view(checkpoint: str | Path, run, split: str, target_precision: float,
                         work_dir: str | Path) -> dict[str, Any]:
    """The FP32 model of a checkpoint through the edge pipeline, operating points as its bundle would get them."""
    from trainer.bundle_builder import BundleInfo, build_bundle, operating_point_evidence
    from trainer.checkpoint import load_checkpoint, model_from_checkpoint
    from trainer.edge_eval import set_operating_points, split_from_run
    from trainer.export import export_onnx

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    fp32 = export_onnx(model, work / "model_fp32.onnx", ckpt.frontend.image_shape)
    bdir = build_bundle(fp32, BundleInfo.from_checkpoint(ckpt), work / "fp32-bundle")
    evidence, scored, how = operating_point_evidence(bdir, ckpt, run)
    _, view = set_operating_points(bdir, evidence, target_precision, scored=scored, how=how,
                                   report=(split, split_from_run(run, split)))
    assert view is not None  # a report was asked for
    return view
