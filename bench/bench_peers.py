#!/usr/bin/env python3
"""Peer speed benchmark: sonotrap INT8 vs sonotrap FP32 vs BirdNET v2.4, same machine, same run.

What a user weighs before putting a detector on a battery-powered recorder is compute per
audio-second at each tool's default settings. Each measurement is a fresh subprocess (so
peak RSS is per model and no cache is shared) that loads one model and times, per window,
the whole step from raw audio to scores:

- sonotrap: 2 s of 44.1-kHz audio -> the edge frontend (resample, mel spectrogram, image)
  -> onnxruntime (INT8 bundle, or the FP32 ONNX of the same graph);
- BirdNET: 3 s of 44.1-kHz audio -> resampling to 48 kHz -> the tflite model (its
  spectrogram is inside the model) through ai-edge-litert with its default XNNPACK delegate.

Compute per audio-second = ms per window / hop: BirdNET-Go analyses a 3-s window every 1.5 s;
the sonotrap daemon uses a hop of 0.5 s (default) or 1 s. Repetitions are interleaved
(model A, B, C, A, B, C, ...) because shared machines are noisy: the ratios are the headline.
Without ``--fp32`` the FP32 row exports an untrained ResNet50 with the bundle's input and
class count (same graph, so the same cost). BirdNET needs the optional extra ``sonotrap[birdnet]``.

    python bench/bench_peers.py --bundle models/demo --reps 3 --json peers.json --markdown peers.md
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

RATE = 44100
HOPS = {"sonotrap INT8": (0.5, 1.0), "sonotrap FP32": (0.5, 1.0), "BirdNET v2.4": (1.5,)}


def _worker(kind: str, model: str, threads: int, iters: int, warmup: int) -> dict:
    import numpy as np

    t0 = time.perf_counter()
    if kind == "birdnet":
        from trainer import birdnet

        net = birdnet.BirdNET(threads=threads, path=model, embeddings=False)
        seconds = birdnet.WINDOW_S

        def step(audio):
            x = birdnet.resample_to_48k(audio, RATE)[: birdnet.WINDOW_SAMPLES]
            return net.run(x[None]).logits
    else:
        from edge.inference.frontend import FrontendConfig, compute
        from edge.models.selftest import create_session  # the daemon's own session settings

        cfg = FrontendConfig.from_dict(json.loads(Path(model).with_suffix(".frontend.json").read_text()))
        sess = create_session(model, threads)
        name = sess.get_inputs()[0].name
        seconds = cfg.window_s

        def step(audio):
            return sess.run(None, {name: compute(audio, RATE, cfg)[None]})[0]

    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    windows = [(0.003 * rng.standard_normal(int(seconds * RATE))).astype(np.float32) for _ in range(4)]
    for i in range(warmup):
        step(windows[i % 4])
    times = []
    for i in range(iters):
        t = time.perf_counter()
        step(windows[i % 4])
        times.append((time.perf_counter() - t) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "load_s": load_s,
            "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's high-water RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    fork + exec, so a worker would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fp32_model(bundle, folder: Path) -> Path:
    """An untrained ResNet50 with the bundle's classes and input, exported to FP32 ONNX."""
    from trainer.export import export_onnx
    from trainer.model import build_model

    path = folder / "resnet50_fp32.onnx"
    export_onnx(build_model(len(bundle.labels), "none"), path, bundle.frontend.image_shape)
    return path


def _spawn(kind: str, model: str, threads: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--model", model, "--threads", str(threads),
           "--iters", str(args.iters), "--warmup", str(args.warmup)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind} worker failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt(v: float, digits: int = 1) -> str:
    return f"{v:.{digits}f}"


def markdown(rows: list[dict], ratios: list[dict]) -> str:
    lines = ["| model | threads | ms/window (incl. spectrogram) | hop s | compute ms per audio-s | "
             "peak RSS MB | file MB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for hop in HOPS[r["model"]]:
            lines.append(f"| {r['model']} | {r['threads']} | {_fmt(r['median_ms'])} | {hop:g} | "
                         f"{_fmt(r['median_ms'] / hop)} | {_fmt(r['peak_rss_mb'], 0)} | {_fmt(r['file_mb'])} |")
    lines += ["", "| threads | BirdNET / INT8 per audio-s (hop 0.5 s) | BirdNET / INT8 (hop 1 s) | "
              "FP32 / INT8 per window |", "|---|---|---|---|"]
    for q in ratios:
        lines.append(f"| {q['threads']} | {_fmt(q['birdnet_vs_int8_hop0.5'], 2)} | "
                     f"{_fmt(q['birdnet_vs_int8_hop1'], 2)} | {_fmt(q['fp32_vs_int8'], 2)} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--bundle", type=Path, default=REPO / "models" / "demo", help="INT8 bundle (default models/demo)")
    p.add_argument("--fp32", type=Path, help="FP32 ONNX of the same model (default: an untrained export)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (fresh process each)")
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.model, args.threads[0], args.iters, args.warmup)))
        return 0

    from edge.models.bundle import load_bundle
    from trainer.birdnet import model_path

    bundle = load_bundle(args.bundle, self_test=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    fp32 = args.fp32 or _fp32_model(bundle, tmp)
    models = {"sonotrap INT8": ("onnx", bundle.model_path), "sonotrap FP32": ("onnx", Path(fp32)),
              "BirdNET v2.4": ("birdnet", model_path())}
    for kind, path in models.values():
        if kind == "onnx":  # the worker reads the frontend next to a copy of the model
            link = tmp / path.name
            if not link.exists():
                link.symlink_to(path.resolve())
            link.with_suffix(".frontend.json").write_text(json.dumps(bundle.frontend.to_dict()))
    t0 = time.monotonic()
    samples: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.reps):
        for threads in args.threads:
            for name, (kind, path) in models.items():
                model = str(tmp / path.name) if kind == "onnx" else str(path)
                samples.setdefault((name, threads), []).append(_spawn(kind, model, threads, args))
    rows = []
    for (name, threads), runs in samples.items():
        rows.append({"model": name, "threads": threads,
                     "median_ms": statistics.median(r["median_ms"] for r in runs),
                     "rep_medians_ms": [r["median_ms"] for r in runs],
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                     "load_s": statistics.median(r["load_s"] for r in runs),
                     "file_mb": models[name][1].stat().st_size / 1e6})
    ratios = []
    for threads in args.threads:
        by = {r["model"]: r for r in rows if r["threads"] == threads}
        i8, bn = by["sonotrap INT8"]["median_ms"], by["BirdNET v2.4"]["median_ms"]
        ratios.append({"threads": threads, "birdnet_vs_int8_hop0.5": (bn / 1.5) / (i8 / 0.5),
                       "birdnet_vs_int8_hop1": (bn / 1.5) / i8,
                       "fp32_vs_int8": by["sonotrap FP32"]["median_ms"] / i8})
    md = markdown(rows, ratios)
    print(md)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version()},
              "reps": args.reps, "iters": args.iters, "rows": rows, "ratios": ratios,
              "wall_s": time.monotonic() - t0, "fp32_model": "given" if args.fp32 else "untrained export"}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
