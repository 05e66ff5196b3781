#!/usr/bin/env python3
"""Compare INT8 quantization settings on a trained checkpoint: AP drop, agreement and latency.

Loads the run's windows once (train for calibration, val for verification), exports FP32
once, then quantizes with each setting and measures FP32 vs INT8 on the same windows and
single-window latency (1 thread). This is how the defaults in models/README.md were chosen.

    .venv/bin/python bench/quant_compare.py RUN_DIR/best.pt --calib-windows 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Every setting names its weight range: 7-bit (reduce-range) is the default because 8-bit
# weights give wrong outputs on x86 CPUs without VNNI (run this there and the 8-bit rows show it).
SETTINGS = {
    "minmax u8, 7-bit weights (default)": {"method": "minmax", "reduce_range": True},
    "percentile u8, 7-bit weights": {"method": "percentile", "reduce_range": True},
    "minmax u8, 8-bit weights": {"method": "minmax", "reduce_range": False},
    "entropy u8, 8-bit weights": {"method": "entropy", "reduce_range": False},
    "percentile u8, 8-bit weights": {"method": "percentile", "reduce_range": False},
    "minmax s8 activations, 8-bit weights": {"method": "minmax", "activation_type": "int8", "reduce_range": False},
}


def latency_ms(path: Path, x, runs: int = 20) -> float:
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    for i in range(3):
        s.run(None, {"input": x[i % len(x)][None]})
    t = []
    for i in range(runs):
        t0 = time.perf_counter()
        s.run(None, {"input": x[i % len(x)][None]})
        t.append((time.perf_counter() - t0) * 1000)
    return statistics.median(t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--calib-windows", type=int, default=256)
    p.add_argument("--val-limit", type=int, default=None)
    p.add_argument("--only", nargs="*", default=None, help="subset of setting names")
    args = p.parse_args()

    from trainer.checkpoint import load_checkpoint, model_from_checkpoint
    from trainer.export import export_onnx, onnx_predict
    from trainer.quantize import QuantSettings, compare, load_windows, quantize_model

    ckpt = load_checkpoint(args.checkpoint)
    run = ckpt.path.parent
    val = load_windows(run, "val", args.val_limit, 0)
    calib = load_windows(run, "train", args.calib_windows, 0)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model_from_checkpoint(ckpt), Path(tmp) / "fp32.onnx", ckpt.frontend.image_shape)
        p32 = onnx_predict(fp32, val.images)
        print(f"{ckpt.path}: {len(val.images)} val windows, {len(calib.images)} calibration windows; "
              f"FP32 1-thread latency {latency_ms(fp32, val.images):.1f} ms")
        print(f"{'setting':<26}{'FP32 mAP':>9}{'INT8 mAP':>9}{'drop':>8}{'worst cls':>10}{'top-1 agr':>10}"
              f"{'max|dp|':>8}{'ms':>7}{'quant s':>8}")
        for name, kw in SETTINGS.items():
            if args.only and name not in args.only:
                continue
            out = Path(tmp) / "int8.onnx"
            t = time.time()
            quantize_model(fp32, out, calib.images, QuantSettings(calibration_windows=args.calib_windows, **kw))
            qs = time.time() - t
            r = compare(p32, onnx_predict(out, val.images), val)
            worst = max(r.per_class_drop.values())
            print(f"{name:<26}{r.macro_ap_fp32:>9.4f}{r.macro_ap_int8:>9.4f}{r.ap_drop:>+8.4f}{worst:>+10.3f}"
                  f"{r.top_label_agreement:>10.3f}{r.max_abs_prob_diff:>8.3f}{latency_ms(out, val.images):>7.1f}{qs:>8.0f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
