"""``sonotrap quantize``: checkpoint -> verified INT8 model bundle (fails if INT8 loses too much AP)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.errors import SonotrapError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="run directory or checkpoint file (best.pt)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--archive", type=Path, default=None, help="also write the bundle as this .tar.gz")
    parser.add_argument("--name", default=None, help="model name (default: the run's name)")
    parser.add_argument("--model-version", default="1.0.0", help="semantic version of this model")
    parser.add_argument("--onnx", type=Path, default=None, help="reuse this FP32 export instead of exporting")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="calibration windows: run directory (train split) or .npz (default: the checkpoint's run)")
    parser.add_argument("--validation", type=Path, default=None,
                        help="validation windows: run directory (val split) or .npz (default: the checkpoint's run)")
    parser.add_argument("--data", type=Path, default=None, help="data root for the run's audio (default: as recorded)")
    parser.add_argument("--calib-windows", type=int, default=256, help="number of calibration windows")
    parser.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                        help="calibration method")
    parser.add_argument("--percentile", type=float, default=99.999, help="for --method percentile")
    parser.add_argument("--activation-type", choices=("uint8", "int8"), default="uint8",
                        help="activation type (uint8 = U8S8, fastest on x86 and fine on ARM; see models/README.md)")
    parser.add_argument("--full-range", action="store_true",
                        help="8-bit weights instead of 7-bit: slightly more accurate, but wrong outputs on x86 "
                             "CPUs without VNNI; only for fleets of ARM or VNNI hosts (see models/README.md)")
    parser.add_argument("--max-ap-drop", type=float, default=0.02, help="fail when INT8 macro-AP drops more than this")
    parser.add_argument("--min-threshold", type=float, default=0.1,
                        help="floor for the per-class thresholds written into the bundle (default 0.1)")
    parser.add_argument("--target-precision", type=float, default=0.9,
                        help="labels whose threshold cannot reach this precision on new recordings ship disabled")
    parser.add_argument("--no-operating-points", action="store_true",
                        help="keep the window-level thresholds and enable every label")
    parser.add_argument("--reference-audio", choices=("validation", "synthetic"), default="validation",
                        help="audio the bundle carries for its self-test: two recorded validation windows, or "
                             "synthetic windows when the recordings may not be passed on with the model")
    parser.add_argument("--val-limit", type=int, default=None, help="use at most N validation windows")
    parser.add_argument("--provenance", action="append", default=[], metavar="KEY=VALUE",
                        help="extra provenance for the manifest (repeatable)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the FP32 export, INT8 model and report.json go (default: .<out>-work next to --out)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from trainer.bundle_builder import bundle_from_checkpoint
    from trainer.quantize import QuantSettings

    extra = {}
    for item in args.provenance:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SonotrapError(f"--provenance {item!r} is not KEY=VALUE")
        extra[key] = value
    settings = QuantSettings(method=args.method, calibration_windows=args.calib_windows,
                             activation_type=args.activation_type, reduce_range=not args.full_range,
                             percentile=args.percentile, seed=args.seed)
    if not 0.0 <= args.min_threshold < 1.0:
        raise SonotrapError(f"--min-threshold {args.min_threshold} must be in [0, 1)")
    out, m = bundle_from_checkpoint(
        args.checkpoint, args.out, settings=settings, calibration_source=args.calibration,
        validation_source=args.validation, data_root=args.data, val_limit=args.val_limit,
        max_ap_drop=args.max_ap_drop, name=args.name, version=args.model_version, provenance=extra,
        archive=args.archive, fp32_path=args.onnx, work_dir=args.work_dir, min_threshold=args.min_threshold,
        target_precision=args.target_precision, operating_points=not args.no_operating_points,
        reference_audio=args.reference_audio,
    )
    d = m["int8_vs_fp32"]
    print(f"wrote INT8 bundle {out}" + (f" and {args.archive}" if args.archive else ""))
    print(f"  ONNX parity vs PyTorch: max abs diff {m['export']['parity_max_abs_diff']:.2e}")
    print(f"  validation windows {m['validation']['windows']}: macro-AP FP32 {m['fp32']['macro_ap']:.4f} "
          f"INT8 {m['int8']['macro_ap']:.4f} (drop {d['macro_ap_drop']:+.4f}, bound {args.max_ap_drop}); "
          f"top-label agreement {d['top_label_agreement']:.3f}")
    worst = sorted(d["per_class_ap_drop"].items(), key=lambda kv: -kv[1])[:5]
    print("  largest per-class AP drops: " + ", ".join(f"{k} {v:+.3f}" for k, v in worst))
    return 0
