"""``sonotrap export``: checkpoint -> FP32 ONNX (sigmoid in graph), checked against PyTorch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="run directory or checkpoint file (best.pt)")
    parser.add_argument("-o", "--out", type=Path, default=None, help="ONNX file (default: <run>/model_fp32.onnx)")
    parser.add_argument("--windows", type=Path, default=None,
                        help="real windows for the parity check: run directory (val split) or .npz "
                             "(default: the checkpoint's run directory)")
    parser.add_argument("--data", type=Path, default=None, help="data root for the run's audio (default: as recorded)")
    parser.add_argument("--parity-windows", type=int, default=16, help="windows used for the parity check")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy",
                        help="torch.onnx exporter (legacy TorchScript is faster and gives a cleaner graph)")


def run(args: argparse.Namespace) -> int:
    from trainer.checkpoint import load_checkpoint, model_from_checkpoint
    from trainer.export import check_parity, export_onnx
    from trainer.quantize import load_windows

    ckpt = load_checkpoint(args.checkpoint)
    out = args.out or ckpt.path.parent / "model_fp32.onnx"
    model = model_from_checkpoint(ckpt)
    export_onnx(model, out, ckpt.frontend.image_shape, opset=args.opset, exporter=args.exporter)
    windows = load_windows(args.windows or ckpt.path.parent, "val", args.parity_windows, 0, args.data)
    diff = check_parity(model, out, windows.images)
    report = {"onnx": str(out), "opset": args.opset, "checker": "ok", "parity_windows": len(windows.images),
              "parity_max_abs_diff": diff, "labels": len(ckpt.labels), "bytes": out.stat().st_size}
    out.with_suffix(".export.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"exported {out} ({out.stat().st_size / 1e6:.1f} MB, opset {args.opset}, onnx.checker OK); "
          f"max |p_torch - p_onnx| on {len(windows.images)} real windows = {diff:.2e} (< 1e-4)")
    return 0
