"""What the activity gate saves and what it costs: model calls skipped vs annotated calls lost.

The gate (``[gate] activity``) skips the model on hops with nothing above the running noise
floor. It may only default on if it saves work on quiet audio without losing calls, so this
script measures both, through the real ``analyze`` path with the shipped model:

- savings: on a continuous soundscape and on a subset of unlabeled recordings, the fraction
  of hops that skip the model and the process CPU time with the gate off vs on;
- cost: on a labelled split (the standard split by recording, rebuilt with the trainer's own
  ``prepare_run``), the annotated calls found (a detection of the call's label overlapping
  it) with the gate off vs on, and calls lost.

Gate parameters are tuned with ``--split val --sweep`` (validation only); ``--split test``
reports. On the labelled split the model's outputs are cached by image, so the gate-on run
and every sweep point only pay for the frontend and the gate.

    python bench/bench_gate.py --split val --sweep
    python bench/bench_gate.py --split test --json runs/bench_gate.json
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edge.analysis.analyze import FileResult, analyze_file
from edge.config import Config, GateConfig
from edge.inference.frontend import FrontendConfig
from edge.inference.runtime import Classifier
from edge.models.bundle import load_bundle

DATA = Path("../shared/data")


class CachedClassifier:
    """The classifier, remembering each image's scores (sweeps re-score only what is new)."""

    def __init__(self, classifier: Classifier) -> None:
        self.inner = classifier
        self.bundle = classifier.bundle
        self.cache: dict[bytes, np.ndarray] = {}
        self.calls = 0

    def predict(self, images: np.ndarray) -> np.ndarray:
        keys = [hashlib.sha1(im.tobytes()).digest() for im in images]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            for i, p in zip(todo, self.inner.predict(images[todo]), strict=True):
                self.cache[keys[i]] = p
        self.calls += len(images)
        return np.stack([self.cache[k] for k in keys])


def config(gate: GateConfig) -> Config:
    """Every label enabled: a bundle may ship unreliable labels disabled, and the gate's cost
    in calls is measured on what the model can find, not on what a manifest publishes."""
    cfg = Config()
    cfg.gate = gate
    cfg.detector.enable_labels = "all"
    return cfg


def savings(classifier: Classifier, files: list[Path], gate: GateConfig, repeats: int) -> dict:
    """Hops skipped and process CPU seconds, gate off vs on (interleaved, best of ``repeats``)."""
    cpu = {"off": [], "on": []}
    hops = gated = 0
    audio_s = 0.0
    for _ in range(repeats):
        for name, g in (("off", GateConfig()), ("on", gate)):
            t0 = time.process_time()
            results = [analyze_file(f, classifier, config(g)) for f in files]
            cpu[name].append(time.process_time() - t0)
            if name == "on":
                hops = sum(r.hops for r in results)
                gated = sum(r.gated for r in results)
                audio_s = sum(r.duration_s for r in results)
    off, on = min(cpu["off"]), min(cpu["on"])
    return {"files": len(files), "audio_s": round(audio_s, 1), "hops": hops, "skipped": gated,
            "skipped_frac": round(gated / max(1, hops), 3), "cpu_s_off": round(off, 2),
            "cpu_s_on": round(on, 2), "cpu_saved_frac": round(1 - on / off, 3) if off > 0 else 0.0}


def labelled_split(data: Path, split: str) -> tuple[list[Path], dict[str, list[tuple[float, float, str]]]]:
    """Recordings of the standard split (``prepare_run``'s defaults) and their calls."""
    from trainer.prepare import DataSpec, prepare_run
    from trainer.split import read_split

    with tempfile.TemporaryDirectory() as tmp:
        run = prepare_run(DataSpec(data=str(data)), FrontendConfig(), tmp).run
        files = read_split(Path(tmp) / "split.json")[split]
    calls: dict[str, list[tuple[float, float, str]]] = {f: [] for f in files}
    for a in run.annotations:
        if a.file in calls and a.present:
            calls[a.file].append((a.start_s, a.end_s, a.label))
    return [run.path(f) for f in files], calls


def found_calls(results: list[FileResult], calls: list[list[tuple[float, float, str]]], labels: set[str]) -> set:
    """``(file index, call index)`` of every call a detection of its label overlaps."""
    found = set()
    for i, (res, cs) in enumerate(zip(results, calls, strict=True)):
        for j, (s, e, lab) in enumerate(cs):
            if lab in labels and any(ev.label == lab and ev.start < e and ev.end > s for ev in res.events):
                found.add((i, j))
    return found


def call_loss(cached: CachedClassifier, files: list[Path], calls, gate: GateConfig, base: set | None = None) -> dict:
    labels = set(cached.bundle.labels)
    results = [analyze_file(f, cached, config(gate)) for f in files]
    found = found_calls(results, calls, labels)
    hops = sum(r.hops for r in results)
    gated = sum(r.gated for r in results)
    empty = [r for r, cs in zip(results, calls, strict=True) if not cs]  # annotated call-free recordings
    out = {"gate": dataclasses.asdict(gate), "calls": sum(lab in labels for cs in calls for _, _, lab in cs),
           "found": len(found), "events": sum(len(r.events) for r in results), "hops": hops,
           "skipped_frac": round(gated / max(1, hops), 3), "call_free_recordings": len(empty),
           "call_free_skipped_frac": round(sum(r.gated for r in empty) / max(1, sum(r.hops for r in empty)), 3),
           "call_free_events": sum(len(r.events) for r in empty)}
    if base is not None:
        out["lost"] = len(base - found)
        out["gained"] = len(found - base)
    return out, found


def skipped_fraction(cached: CachedClassifier, files: list[Path], gate: GateConfig) -> float:
    results = [analyze_file(f, cached, config(gate)) for f in files]
    return round(sum(r.gated for r in results) / max(1, sum(r.hops for r in results)), 3)


SWEEP = [dict(threshold_db=t, smooth_s=s, bands=b) for s, b in ((0.05, 16), (0.1, 8), (0.1, 16))
         for t in (6.0, 8.0, 10.0)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/demo")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--split", choices=("val", "test"), default="val")
    ap.add_argument("--sweep", action="store_true", help="also try the SWEEP grid (validation only)")
    ap.add_argument("--unlabeled", type=int, default=200, help="unlabeled recordings to time (0: skip)")
    ap.add_argument("--repeats", type=int, default=2, help="timing repetitions (best is kept)")
    ap.add_argument("--no-timing", action="store_true", help="skip the CPU timing of the quiet sets")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="gate parameter")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.sweep and args.split != "val":
        ap.error("--sweep tunes the gate: validation split only")
    params = {k: float(v) if k != "bands" else int(v) for k, v in (s.split("=", 1) for s in args.set)}
    gate = GateConfig(activity=True, **params)
    gate.validate()
    classifier = Classifier(load_bundle(args.model), threads=1)
    report: dict = {"model": args.model, "gate": dataclasses.asdict(gate), "split": args.split}

    quiet = {"soundscape": [args.data / "soundscapes" / "opensoundscape_1min.wav"]}
    if args.unlabeled:
        with open(args.data / "nips4b_unlabeled" / "files.csv", newline="") as fh:
            names = sorted(row["file"] for row in csv.DictReader(fh))
        step = max(1, len(names) // args.unlabeled)
        quiet["unlabeled"] = [args.data / "nips4b_unlabeled" / n for n in names[::step][: args.unlabeled]]

    files, calls = labelled_split(args.data / "nips4bplus", args.split)
    cached = CachedClassifier(classifier)
    off, base = call_loss(cached, files, list(calls.values()), GateConfig())
    on, _ = call_loss(cached, files, list(calls.values()), gate, base)
    report["labelled"] = {"recordings": len(files), "off": off, "on": on}
    print(f"{args.split}: {len(files)} recordings, {off['calls']} calls; found gate off {off['found']}, "
          f"on {on['found']} (lost {on['lost']}, gained {on['gained']}); hops skipped {on['skipped_frac']:.1%}; "
          f"{on['call_free_recordings']} call-free recordings: hops skipped {on['call_free_skipped_frac']:.1%}, "
          f"events {off['call_free_events']} -> {on['call_free_events']}", flush=True)
    if args.sweep:
        report["sweep"] = []
        for point in SWEEP:
            g = GateConfig(activity=True, **point)
            r, _ = call_loss(cached, files, list(calls.values()), g, base)
            r.update({f"{name}_skipped_frac": skipped_fraction(cached, paths, g) for name, paths in quiet.items()})
            report["sweep"].append(r)
            print(f"  {point}: found {r['found']} lost {r['lost']} skipped {r['skipped_frac']:.1%}, "
                  f"call-free {r['call_free_skipped_frac']:.1%}; "
                  + ", ".join(f"{name} skipped {r[name + '_skipped_frac']:.1%}" for name in quiet), flush=True)

    for name, paths in quiet.items() if not args.no_timing else ():
        s = savings(classifier, paths, gate, args.repeats)
        report[name] = s
        print(f"{name}: {s['files']} files, {s['audio_s']} s, {s['hops']} hops, skipped {s['skipped_frac']:.1%}; "
              f"CPU {s['cpu_s_off']} s -> {s['cpu_s_on']} s (saved {s['cpu_saved_frac']:.1%})", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
