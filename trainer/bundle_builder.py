"""Checkpoint -> verified INT8 bundle: export, parity check, quantize, verify, manifest, (tar.gz).

``build_bundle`` writes a bundle from ONNX file(s) plus everything known about the model;
``bundle_from_checkpoint`` is the whole pipeline used by ``sonotrap quantize`` and
``scripts/build-demo-model``.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge import __version__
from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig
from edge.models.bundle import write_bundle
from edge.models.manifest import Label, Manifest
from edge.models.selftest import default_reference_audio
from edge.util.hashing import sha256_file
from edge.util.jsonio import json_safe
from trainer.birdnet import TEACHER_INFO
from trainer.crossfit import KEY as CROSSFIT
from trainer.species import SPECIES_FILE, label_fields, read_species

TEACHERS = {"birdnet": TEACHER_INFO}  # what a manifest records about a distillation teacher

log = logging.getLogger("sonotrap.trainer")


@dataclass
class BundleInfo:
    """What a manifest says about a model beyond the ONNX file itself."""

    name: str
    version: str
    labels: list[str]
    label_names: dict[str, str]
    frontend: FrontendConfig
    thresholds: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    species: dict[str, dict[str, str]] = field(default_factory=dict)  # code -> scientific/common name, group

    @classmethod
    def from_checkpoint(cls, ckpt, name: str | None = None, version: str = "1.0.0", provenance: dict | None = None) -> BundleInfo:
        args, data = ckpt.args, ckpt.data
        prov = {
            "checkpoint": str(ckpt.path),
            "checkpoint_sha256": sha256_file(ckpt.path),
            "architecture": "torchvision ResNet50, new Linear head, sigmoid in graph",
            "init_weights": args.get("weights", "unknown"),
            "training_args": _plain(args),
            "training_data": _plain(data),
        }
        if args.get("teacher") in TEACHERS:
            prov["teacher"] = dict(TEACHERS[args["teacher"]])
        head = ckpt.extra.get("linear_head")
        if isinstance(head, dict):  # sonotrap linear-head: a frozen backbone plus a fitted fc
            teacher = _teacher_of(head.get("stage1"))
            if teacher:  # the backbone's teacher, whatever the template run was trained with
                prov["teacher"] = teacher
            st = head.get("self_training")
            if isinstance(st, dict) and st.get("used") and isinstance(st.get("teacher"), dict):
                # the head learnt from the teacher's pseudo labels: the manifest says so, licence included
                head_teacher = st["teacher"]
                prov["teacher"] = {"name": head_teacher["name"], "licence": head_teacher["licence"],
                                   **prov.get("teacher", {}), "head_pseudo_labels": dict(head_teacher)}
            prov["init_weights"] = head.get("backbone", "unknown")
            prov["linear_head"] = _plain({k: v for k, v in head.items() if k != "backbone"})
            prov["training_args_note"] = ("the run whose labels, frontend and split the head was fitted on; "
                                          "the weights are its backbone file plus the fitted fc")
        for key in ("git_commit", "created", "epoch", "best_epoch", "torch_version"):
            if key in ckpt.extra:
                prov[key] = _plain(ckpt.extra[key])
        prov.update(provenance or {})
        return cls(
            name=name or str(args.get("name") or ckpt.path.parent.name or "sonotrap-model"),
            version=version,
            labels=list(ckpt.labels),
            label_names=dict(ckpt.label_names),
            frontend=ckpt.frontend,
            thresholds=dict(ckpt.thresholds),
            provenance=prov,
            metrics={"training": _plain(ckpt.metrics)},
            species=_run_species(ckpt.path.parent, list(ckpt.labels)),
        )


def _teacher_of(stage1: Any) -> dict[str, Any] | None:
    """The distillation teacher (and its licence) behind a linear head's backbone, if any.

    A stage-1 summary names it (``teacher: birdnet``); a backbone read from a bundle carries
    that bundle's own record, or its stage-1 summary, one level down.
    """
    if not isinstance(stage1, dict):
        return None
    source = stage1.get("from_bundle")
    if isinstance(source, dict):
        if isinstance(source.get("teacher"), dict):
            return dict(source["teacher"])
        return _teacher_of(source.get("stage1"))
    name = stage1.get("teacher")
    return dict(TEACHERS[name]) if name in TEACHERS else None


def _plain(value: Any) -> Any:
    """JSON values for the manifest, with long lists and deep nests cut (provenance can be big)."""
    return json_safe(value, max_depth=4, max_items=200)


def _run_species(run_dir: Path, labels: list[str]) -> dict[str, dict[str, str]]:
    """Label entries' species fields from the run's species table (``train --species``), if any."""
    path = run_dir / SPECIES_FILE
    if not path.is_file():
        return {}
    table = read_species(path)
    return {lab: fields for lab in labels if (fields := label_fields(lab, table))}


DEFAULT_MIN_THRESHOLD = 0.1


def _clip_threshold(t: float, floor: float = DEFAULT_MIN_THRESHOLD) -> float:
    """Validation-chosen thresholds, kept in [floor, 0.99].

    Best-F1 thresholds of classes with few validation positives can land near 0, and a class
    detected at a score of 0.02 only reports noise in the field; the floor keeps it quiet.
    """
    return float(min(max(t, floor), 0.99))


def build_bundle(
    model_path: str | Path,
    info: BundleInfo,
    out_dir: str | Path,
    *,
    quantization: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    reference_images: np.ndarray | None = None,
    reference_audio: list[np.ndarray] | None = None,
    reference_audio_source: str = "",
    archive: str | Path | None = None,
    min_threshold: float = DEFAULT_MIN_THRESHOLD,
) -> Path:
    """Write a complete bundle directory (and ``archive`` .tar.gz if given); returns the directory.

    ``reference_audio`` (mono windows at the frontend's sample rate; default: synthetic windows)
    is stored in the bundle with the outputs the edge frontend and the model give on it, so a
    device refuses the bundle when its frontend settings do not reproduce them.
    """
    thresholds = {c: _clip_threshold(info.thresholds.get(c, 0.5), min_threshold) for c in info.labels}
    manifest = Manifest(
        name=info.name,
        version=info.version,
        labels=[Label.from_dict({"code": c, "name": info.label_names.get(c, c), **info.species.get(c, {})})
                for c in info.labels],
        thresholds=thresholds,
        frontend=info.frontend.to_dict(),
        model_sha256="",
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        provenance=_plain(info.provenance),
        metrics=_plain(info.metrics | (metrics or {})),
        quantization=_plain(quantization or {"kind": "none (FP32)"}),
        min_sonotrap_version=__version__,
    )
    if reference_audio is None:
        reference_audio, reference_audio_source = default_reference_audio(info.frontend), "synthetic"
    out = write_bundle(out_dir, model_path, manifest, reference_images=reference_images,
                       reference_audio=reference_audio, reference_audio_source=reference_audio_source,
                       archive=archive)
    from edge.models.bundle import load_bundle

    load_bundle(out)  # the bundle we ship must pass the same checks a device runs
    return out


REFERENCE_AUDIO = ("validation", "synthetic")


def _pick_reference(probs: np.ndarray) -> list[int]:
    """Two real windows: the one the model is most sure about, and the median one."""
    order = np.argsort(probs.max(1))
    return [int(order[-1]), int(order[len(order) // 2])]


def _reference_audio(sources: list | None, picked: list[int], cfg: FrontendConfig) -> tuple[list[np.ndarray] | None, str]:
    """The picked validation windows' recorded audio at the model's sample rate (None: no audio known)."""
    if sources is None:
        return None, ""
    from trainer.rundata import window_audio

    chosen = [sources[i] for i in picked]
    audio = [window_audio(Path(p), start, length, cfg.sample_rate) for p, start, length in chosen]
    return audio, "validation windows: " + ", ".join(f"{Path(p).name}@{start:.2f}s" for p, start, _ in chosen)


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def bundle_from_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    settings=None,
    calibration_source: str | Path | None = None,
    validation_source: str | Path | None = None,
    data_root: str | Path | None = None,
    val_limit: int | None = None,
    parity_windows: int = 16,
    max_ap_drop: float = 0.02,
    name: str | None = None,
    version: str = "1.0.0",
    provenance: dict[str, Any] | None = None,
    archive: str | Path | None = None,
    fp32_path: str | Path | None = None,
    work_dir: str | Path | None = None,
    min_threshold: float = DEFAULT_MIN_THRESHOLD,
    target_precision: float = 0.9,
    operating_points: bool = True,
    reference_audio: str = "validation",
) -> tuple[Path, dict[str, Any]]:
    """Export -> parity -> quantize (calibrated on train windows) -> verify -> INT8 bundle.

    When the validation source is a run directory, the INT8 bundle's operating points are
    then set the way the daemon will use them: its validation recordings go through the edge
    pipeline, per-label thresholds and enabled flags come from
    :func:`trainer.edge_eval.set_operating_points`, and the user's view on the test split is
    stored in the manifest metrics (``user_view``).

    ``reference_audio``: "validation" stores the recorded audio of two validation windows in the
    bundle (the strongest self-test); "synthetic" stores generated windows instead, for data whose
    licence does not allow passing recordings on with the model.

    Raises SonotrapError (and writes no bundle) when parity or the AP-drop bound fails.
    Returns the bundle directory and a report dict (also stored in the manifest metrics).
    """
    from trainer.checkpoint import load_checkpoint, model_from_checkpoint
    from trainer.export import check_parity, export_onnx
    from trainer.quantize import QuantSettings, load_windows, quantize_and_verify

    if reference_audio not in REFERENCE_AUDIO:
        raise SonotrapError(f"reference audio {reference_audio!r} is not one of {', '.join(REFERENCE_AUDIO)}")
    settings = settings or QuantSettings()
    ckpt = load_checkpoint(checkpoint)
    run_dir = ckpt.path.parent
    calibration_source = Path(calibration_source or run_dir)
    validation_source = Path(validation_source or run_dir)
    work = Path(work_dir) if work_dir else Path(out_dir).parent / f".{Path(out_dir).name}-work"
    work.mkdir(parents=True, exist_ok=True)

    val = load_windows(validation_source, "val", val_limit, settings.seed, data_root)
    if val.labels != ckpt.labels:
        raise SonotrapError(f"validation windows from {validation_source} have other labels than {ckpt.path}; use the run's own directory")
    model = model_from_checkpoint(ckpt)
    fp32 = Path(fp32_path) if fp32_path else work / "model_fp32.onnx"
    if not fp32_path or not fp32.is_file():
        export_onnx(model, fp32, ckpt.frontend.image_shape)
    parity = check_parity(model, fp32, val.images[:parity_windows])
    log.info("ONNX parity vs PyTorch on %d real windows: max abs diff %.2e", min(parity_windows, len(val.images)), parity)

    calib = load_windows(calibration_source, "train", settings.calibration_windows, settings.seed, data_root)
    int8 = work / "model_int8.onnx"
    held_out = None
    if CROSSFIT in ckpt.raw:  # the head saw the validation windows: judge INT8 with the fold heads
        from trainer.crossfit import held_out_predict
        from trainer.rundata import load_run_data

        if val.sources is None:
            raise SonotrapError("a cross-fitted head is checked on its run directory's validation windows; "
                                "pass the run directory as the validation source")
        root = load_run_data(validation_source, data_root).root
        held_out = held_out_predict(ckpt.raw[CROSSFIT], [str(Path(p).relative_to(root)) for p, _, _ in val.sources])
    report = quantize_and_verify(fp32, int8, calib, val, settings, max_ap_drop=max_ap_drop, predict=held_out)

    from trainer.export import onnx_predict

    probs = onnx_predict(int8, val.images)
    info = BundleInfo.from_checkpoint(ckpt, name=name, version=version, provenance=provenance)
    info.provenance.setdefault("built_with", {"sonotrap": __version__, "git_commit": _git_commit(), "python": platform.python_version()})
    metrics = {
        "fp32": {"macro_ap": report.macro_ap_fp32, "per_class_ap": report.per_class_ap_fp32},
        "int8": {"macro_ap": report.macro_ap_int8, "per_class_ap": report.per_class_ap_int8},
        "int8_vs_fp32": {
            "macro_ap_drop": report.ap_drop,
            "max_ap_drop_allowed": max_ap_drop,
            "per_class_ap_drop": report.per_class_drop,
            "top_label_agreement": report.top_label_agreement,
            "max_abs_prob_diff": report.max_abs_prob_diff,
            "mean_abs_prob_diff": report.mean_abs_prob_diff,
        },
        "validation": {"windows": report.windows, "source": val.source, "classes_with_positives": len(report.per_class_ap_fp32)},
        "export": {"parity_max_abs_diff": parity, "parity_windows": int(min(parity_windows, len(val.images))), "opset": 17},
    }
    quant = settings.to_dict() | {
        "calibration_source": calib.source,
        "calibration_windows_used": int(len(calib.images)),
        "tool": "onnxruntime.quantization quant_pre_process + quantize_static",
        "onnxruntime": _ort_version(),
        "weights": f"int8 symmetric per-channel{', 7-bit range' if settings.reduce_range else ''}",
        "activations": f"{settings.activation_type} asymmetric per-tensor",
        "fp32_sha256": sha256_file(fp32),
        "fp32_bytes": fp32.stat().st_size,
    }
    picked = _pick_reference(probs)
    audio, audio_source = (_reference_audio(val.sources, picked, ckpt.frontend) if reference_audio == "validation"
                           else (None, ""))  # build_bundle generates the synthetic windows
    out = build_bundle(int8, info, out_dir, quantization=quant, metrics=metrics,
                       reference_images=val.images[picked], reference_audio=audio,
                       reference_audio_source=audio_source, archive=archive, min_threshold=min_threshold)
    if operating_points and (validation_source / "dataset.json").is_file():
        from trainer.edge_eval import set_operating_points, split_from_run
        from trainer.rundata import load_run_data

        run = load_run_data(validation_source, data_root)
        test = split_from_run(run, "test")
        val_split, scored, how = operating_point_evidence(out, ckpt, run)
        _, view = set_operating_points(out, val_split, target_precision, scored=scored, how=how,
                                       report=("test", test) if test.files else None)
        if view is not None:
            metrics["user_view"] = view["headline"] | {"split": "test"}
        if archive is not None:
            from edge.models.bundle import write_archive

            write_archive(out, archive)  # the manifest changed
    elif operating_points:
        log.info("validation windows are not a run directory: window-level thresholds kept, every label enabled")
    (work / "report.json").write_text(json.dumps(_plain(metrics), indent=2) + "\n")
    return out, metrics


def operating_point_evidence(bundle_dir: Path, ckpt, run):
    """(recordings, their hop scores or None, method or None) on which to set the operating points.

    Normally the validation recordings, scored by the bundle itself (None: the caller runs it).
    A cross-fitted head (:mod:`trainer.crossfit`) brings out-of-fold scores of every train and
    validation recording instead, each from the fold head that never saw it.
    """
    from trainer.edge_eval import pooled, split_from_run

    if CROSSFIT not in ckpt.raw:
        return split_from_run(run, "val"), None, None
    from edge.models.bundle import load_bundle
    from trainer.crossfit import HOW as CROSSFIT_HOW
    from trainer.crossfit import out_of_fold_recordings

    crossfit = ckpt.raw[CROSSFIT]
    data = pooled(split_from_run(run, "train"), split_from_run(run, "val"))
    log.info("operating points from out-of-fold scores of %d train + validation recordings", len(data.files))
    recs = out_of_fold_recordings(load_bundle(bundle_dir), crossfit, data)
    return data, recs, CROSSFIT_HOW.format(folds=crossfit["folds"])


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__

