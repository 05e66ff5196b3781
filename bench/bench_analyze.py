"""Batch analysis scaling: ``sonotrap analyze --workers 1`` vs ``--workers 2`` on real recordings.

    .venv/bin/python bench/bench_analyze.py [--data ../shared/data/nips4b_unlabeled/audio] [--files 300] [--reps 2]

Runs the real command (fresh output folder each time, so nothing is resumed) with 1 and 2
workers, interleaved (1, 2, 1, 2, ...) so that load from other programs hits both alike, and
prints per run: audio-hours per wall-hour and per CPU-hour (CPU of the command and its worker
processes), the speed-up of 2 workers over 1 (wall) and the 1-minute load average around
the run (a busy machine makes wall-clock figures pessimistic; CPU-hour figures much less so).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"([\d.]+) s of audio in ([\d.]+) s with (\d+) worker\(s\) x (\d+) thread\(s\), ([\d.]+) s CPU")


def run(files: list[Path], workers: int, out: Path) -> dict:
    load0 = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "edge", "analyze", *map(str, files), "-o", str(out), "--no-progress",
                        "--workers", str(workers)], capture_output=True, text=True, cwd=REPO)
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = SUMMARY.search(r.stderr)
    if r.returncode != 0 or not m:
        sys.exit(f"analyze failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    audio = float(m.group(1))
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)  # incl. interpreter start
    return {"workers": workers, "audio_s": audio, "wall_s": wall, "cpu_s": cpu,
            "per_wall_h": audio / wall, "per_cpu_h": audio / cpu, "load": (load0 + os.getloadavg()[0]) / 2}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "nips4b_unlabeled" / "audio"))
    p.add_argument("--files", type=int, default=300)
    p.add_argument("--reps", type=int, default=2)
    args = p.parse_args()
    files = sorted(Path(args.data).glob("*.flac"))[: args.files]
    if not files:
        sys.exit(f"no .flac files in {args.data}; pass --data")
    print(f"{len(files)} recordings from {args.data}, {os.cpu_count()} CPUs; "
          "audio-hours per hour = seconds of audio per second")
    print("| rep | workers | audio s | wall s | CPU s | audio-h per wall-h | audio-h per CPU-h | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(1, args.reps + 1):
            for workers in (1, 2):
                res = run(files, workers, Path(tmp) / f"r{rep}w{workers}")
                results.append(res)
                print(f"| {rep} | {workers} | {res['audio_s']:.0f} | {res['wall_s']:.1f} | {res['cpu_s']:.1f} | "
                      f"{res['per_wall_h']:.0f} | {res['per_cpu_h']:.0f} | {res['load']:.1f} |", flush=True)
    for rep in range(args.reps):
        one, two = results[2 * rep], results[2 * rep + 1]
        print(f"rep {rep + 1}: 2 workers / 1 worker: wall speed-up {one['wall_s'] / two['wall_s']:.2f}x, "
              f"CPU per audio-hour {two['cpu_s'] / one['cpu_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
