#!/usr/bin/env python3
"""Model benchmark: PyTorch eager FP32 vs ONNX FP32 vs ONNX INT8, side by side, on this machine.

For each runtime and thread count (1 and 2) a fresh subprocess loads the model and times
single-window inference (batch 1 = one 2-s window, the daemon's steady state) on real
frontend windows, so peak RSS is per runtime and nobody shares a warm cache. Also prints
file sizes and the FP32/INT8 macro-AP stored in (or re-measured for) the bundle.

    .venv/bin/python bench/bench_model.py --checkpoint RUN_DIR/best.pt \
        --fp32 RUN_DIR/model_fp32.onnx --bundle models/demo

Targets: INT8 >= 2.5x faster than ONNX FP32 and >= 4x faster than PyTorch at the same
thread count, INT8 file <= 26 MB, INT8 macro-AP within 0.01 of FP32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _worker(kind: str, model: str, threads: int, windows: str, iters: int, warmup: int) -> dict:
    import numpy as np

    x_all = np.load(windows)
    t0 = time.perf_counter()
    if kind == "pytorch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        from trainer.checkpoint import load_checkpoint, model_from_checkpoint

        net = model_from_checkpoint(load_checkpoint(model))

        def infer(x):
            with torch.inference_mode():
                return torch.sigmoid(net(torch.from_numpy(x))).numpy()
    else:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def infer(x):
            return sess.run(None, {name: x})[0]

    load_s = time.perf_counter() - t0
    for i in range(warmup):
        infer(x_all[i % len(x_all)][None])
    times = []
    for i in range(iters):
        x = x_all[i % len(x_all)][None]
        t = time.perf_counter()
        infer(x)
        times.append((time.perf_counter() - t) * 1000)
    return {
        "kind": kind,
        "threads": threads,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "p90_ms": sorted(times)[int(0.9 * (len(times) - 1))],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_s": load_s,
    }


def _frontend_ms(cfg, n: int = 20) -> float:
    import numpy as np

    from edge.inference.frontend import compute

    audio = (0.001 * np.random.default_rng(0).standard_normal(cfg.window_samples)).astype(np.float32)
    compute(audio, cfg.sample_rate, cfg)
    t = time.perf_counter()
    for _ in range(n):
        compute(audio, cfg.sample_rate, cfg)
    return (time.perf_counter() - t) / n * 1000


def _windows(args, cfg):
    import numpy as np

    if args.windows:
        from trainer.quantize import load_windows

        return load_windows(args.windows, "val", args.n_windows, 0).images
    from edge.inference.frontend import compute
    from edge.models.selftest import default_reference_audio

    return np.stack([compute(w, cfg.sample_rate, cfg) for w in default_reference_audio(cfg)] * 4)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                vnni = "avx512_vnni" in flags or "avx_vnni" in flags
                return line.split(":", 1)[1].strip() + (" (VNNI)" if vnni else "")
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", type=Path, required=False, help="trainer checkpoint (PyTorch eager row)")
    p.add_argument("--fp32", type=Path, help="FP32 ONNX (default: <bundle>/../.<bundle>-work/model_fp32.onnx)")
    p.add_argument("--bundle", type=Path, default=REPO / "models" / "demo", help="INT8 bundle (default: models/demo)")
    p.add_argument("--windows", type=Path, default=None, help="run dir or .npz with real windows (default: run of --checkpoint)")
    p.add_argument("--n-windows", type=int, default=16)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()

    if args.worker:
        print(json.dumps(_worker(args.worker, args.model, args.threads[0], args.input, args.iters, args.warmup)))
        return 0

    from edge.models.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    fp32 = args.fp32 or bundle.path.parent / f".{bundle.path.name}-work" / "model_fp32.onnx"
    if args.windows is None and args.checkpoint is not None:
        ck = args.checkpoint if args.checkpoint.is_dir() else args.checkpoint.parent
        args.windows = ck if (ck / "split.json").is_file() else None
    cfg = bundle.frontend
    images = _windows(args, cfg)
    rows_spec = []
    if args.checkpoint:
        rows_spec.append(("PyTorch eager FP32", "pytorch", str(args.checkpoint), args.checkpoint))
    if fp32.is_file():
        rows_spec.append(("ONNX FP32", "onnx", str(fp32), fp32))
    rows_spec.append(("ONNX INT8 (bundle)", "onnx", str(bundle.model_path), bundle.model_path))

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "windows.npy"
        import numpy as np

        np.save(inp, images.astype(np.float32))
        for threads in args.threads:
            for label, kind, model, path in rows_spec:
                cmd = [sys.executable, __file__, "--worker", kind, "--model", model, "--threads", str(threads),
                       "--input", str(inp), "--iters", str(args.iters), "--warmup", str(args.warmup)]
                env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if out.returncode != 0:
                    print(f"{label}: worker failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r["label"] = label
                r["file_mb"] = Path(path).stat().st_size / 1e6 if Path(path).is_file() else None
                results.append(r)

    m = bundle.manifest.metrics
    ap32 = m.get("fp32", {}).get("macro_ap")
    ap8 = m.get("int8", {}).get("macro_ap")
    print(f"model bundle {bundle.name} {bundle.version}; CPU: {_cpu_name()}, {os.cpu_count()} cores; "
          f"onnxruntime {__import__('onnxruntime').__version__}; {len(images)} real windows, batch 1, "
          f"{args.iters} timed runs each (load avg {os.getloadavg()[0]:.1f})")
    print(f"frontend (numpy, 2-s window -> 3x128x128): {_frontend_ms(cfg):.1f} ms")
    hdr = f"{'runtime':<22}{'threads':>8}{'median ms':>11}{'min ms':>9}{'p90 ms':>9}{'file MB':>9}{'peak RSS MB':>13}"
    hdr += f"{'INT8 speedup':>14}"
    print(hdr)
    for threads in args.threads:
        rows = [r for r in results if r["threads"] == threads]
        int8 = next((r for r in rows if "INT8" in r["label"]), None)
        for r in rows:
            speed = f"{r['median_ms'] / int8['median_ms']:.2f}x" if int8 and r is not int8 else ""
            fm = f"{r['file_mb']:.1f}" if r["file_mb"] else "-"
            print(f"{r['label']:<22}{threads:>8}{r['median_ms']:>11.1f}{r['min_ms']:>9.1f}{r['p90_ms']:>9.1f}"
                  f"{fm:>9}{r['peak_rss_mb']:>13.0f}{speed:>14}")
    if ap32 is not None and ap8 is not None:
        print(f"macro-AP on {m.get('validation', {}).get('windows', '?')} validation windows: FP32 {ap32:.4f}, "
              f"INT8 {ap8:.4f} (drop {ap32 - ap8:+.4f})")
    checks = []
    for threads in args.threads:
        rows = {r["kind"] + ("8" if "INT8" in r["label"] else ""): r for r in results if r["threads"] == threads}
        if "onnx8" in rows and "onnx" in rows:
            s = rows["onnx"]["median_ms"] / rows["onnx8"]["median_ms"]
            checks.append((f"{threads} thr: INT8 vs ONNX FP32 {s:.2f}x >= 2.5x", s >= 2.5))
        if "onnx8" in rows and "pytorch" in rows:
            s = rows["pytorch"]["median_ms"] / rows["onnx8"]["median_ms"]
            checks.append((f"{threads} thr: INT8 vs PyTorch {s:.2f}x >= 4x", s >= 4.0))
    size = bundle.model_path.stat().st_size / 1e6
    checks.append((f"INT8 file {size:.1f} MB <= 26 MB", size <= 26.0))
    if ap32 is not None and ap8 is not None:
        checks.append((f"INT8 macro-AP within 0.01 of FP32 ({ap32 - ap8:+.4f})", ap32 - ap8 <= 0.01))
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "checks": checks, "cpu": _cpu_name()}, indent=2))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
