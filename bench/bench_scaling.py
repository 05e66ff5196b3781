"""How the model's cost grows with input size, number of classes, threads and hop.

One untrained ResNet50 per (input size, classes), exported to FP32 ONNX and run by
onnxruntime with the daemon's session settings; the shipped INT8 bundle is measured in the
same run at its own size as the anchor for INT8. Every configuration is timed in rounds that
interleave all of them, so machine noise hits them alike; the headline is the ratio to the
128x128 / 89-class / 1-thread configuration. Hop is arithmetic: compute per audio-second =
ms per window / hop (the daemon runs the model once per hop).

    python bench/bench_scaling.py [--sizes 96,128,160,224] [--classes 10,89,1000] [--threads 1,2]
        [--rounds 5] [--iters 10] [--json out.json] [--markdown out.md]

Needs the train extra (torch, to build the models).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.models.bundle import DEFAULT_BUNDLE, load_bundle  # noqa: E402

HOPS = (0.25, 0.5, 1.0, 2.0)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _build(folder: Path, size: int, classes: int) -> Path:
    from trainer.export import export_onnx
    from trainer.model import build_model

    path = folder / f"resnet50_{size}_{classes}.onnx"
    export_onnx(build_model(classes, "none"), path, (3, size, size))
    return path


def _time(session, x: np.ndarray, iters: int) -> float:
    name = session.get_inputs()[0].name
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="96,128,160,224")
    ap.add_argument("--classes", default="10,89,1000")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--markdown", metavar="PATH")
    args = ap.parse_args()
    bundle = load_bundle(DEFAULT_BUNDLE)
    shipped = (bundle.frontend.image_shape[-1], len(bundle.labels))
    configs: list[tuple[str, int, int, int]] = []  # (kind, size, classes, threads)
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for size in _ints(args.sizes):  # input size at the shipped class count
            models[("fp32", size, shipped[1])] = _build(Path(tmp), size, shipped[1])
        for classes in _ints(args.classes):  # class count at the shipped input size
            models.setdefault(("fp32", shipped[0], classes), _build(Path(tmp), shipped[0], classes))
        models[("int8", *shipped)] = bundle.model_path
        for (kind, size, classes), path in models.items():
            for threads in _ints(args.threads):
                configs.append((kind, size, classes, threads))
                sessions[configs[-1]] = (_session(path, threads), np.random.default_rng(0).standard_normal(
                    (1, 3, size, size)).astype(np.float32))
        samples: dict[tuple, list[float]] = {c: [] for c in configs}
        for c in configs:  # warm-up
            _time(sessions[c][0], sessions[c][1], 2)
        for _ in range(args.rounds):  # interleaved rounds
            for c in configs:
                samples[c].append(_time(sessions[c][0], sessions[c][1], args.iters))
    base = statistics.median(samples[("fp32", *shipped, 1)])
    rows = [{"model": kind, "input": size, "classes": classes, "threads": threads,
             "ms_per_window": round(statistics.median(samples[(kind, size, classes, threads)]), 2),
             "vs_base": round(statistics.median(samples[(kind, size, classes, threads)]) / base, 3),
             "ms_per_audio_s": {str(h): round(statistics.median(samples[(kind, size, classes, threads)]) / h, 1)
                                for h in HOPS}}
            for kind, size, classes, threads in configs]
    lines = [f"| model | input | classes | threads | ms/window | x base | ms per audio-s at hop "
             f"{' / '.join(f'{h:g}' for h in HOPS)} s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        per = " / ".join(f"{v:.1f}" for v in r["ms_per_audio_s"].values())
        lines.append(f"| {r['model']} | {r['input']} | {r['classes']} | {r['threads']} | "
                     f"{r['ms_per_window']:.1f} | {r['vs_base']:.2f} | {per} |")
    md = "\n".join(lines)
    print(md)
    print(f"\nbase: fp32 {shipped[0]}x{shipped[0]}, {shipped[1]} classes, 1 thread = {base:.1f} ms per window")
    if args.json:
        Path(args.json).write_text(json.dumps({"base_ms": base, "rows": rows}, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
