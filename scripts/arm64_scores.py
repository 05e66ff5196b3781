"""Window scores and detections of a model on a few recordings, and their comparison across machines.

``dump`` runs where the edge package is installed (x86 host, arm64 root under emulation) and
writes every window's scores and every detection as JSON, through the same analysis code as
``sonotrap analyze``. ``compare`` puts two dumps side by side: the largest score difference,
the detections only one side has, and which of those are near-threshold cases (a score
within the tolerance of its label's threshold on either side), which is the only way an
INT8 kernel difference may change a detection. Edge dependencies only (numpy, onnxruntime).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np


def dump(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from edge.analysis.analyze import analyze_file, event_rows
    from edge.config import Config
    from edge.inference.detector import resolve_thresholds
    from edge.inference.runtime import Classifier
    from edge.models.bundle import load_bundle

    cfg = Config()
    bundle = load_bundle(args.model)
    classifier = Classifier(bundle, 1)
    thresholds = resolve_thresholds(bundle.labels, bundle.manifest.thresholds, cfg.detector)
    files = {}
    t0 = time.monotonic()
    for path in map(Path, args.files):
        windows: list[list[float]] = []
        res = analyze_file(path, classifier, cfg, on_scores=lambda s, w=windows: w.extend(np.atleast_2d(s).tolist()))
        if res.error:
            print(f"error: {res.error}", file=sys.stderr)
            return 2
        files[path.name] = {"windows": windows,
                            "events": [row[:5] for row in event_rows(res.events, res.duration_s, path.name)]}
    elapsed = time.monotonic() - t0
    n = sum(len(f["windows"]) for f in files.values())
    info = {"machine": platform.machine(), "python": platform.python_version(), "onnxruntime": ort.__version__,
            "numpy": np.__version__, "windows": n, "s_per_window": elapsed / max(n, 1)}
    thr = {lab: float(thresholds[lab]) for lab in bundle.labels}
    Path(args.out).write_text(json.dumps({"info": info, "labels": bundle.labels, "thresholds": thr,
                                          "files": files}))
    print(f"{info['machine']}: {n} windows, {info['s_per_window'] * 1000:.0f} ms per window "
          f"(onnxruntime {info['onnxruntime']}, numpy {info['numpy']})")
    return 0


def compare(args: argparse.Namespace) -> int:
    a, b = (json.loads(Path(p).read_text()) for p in (args.reference, args.other))
    labels, thr, tol = a["labels"], a["thresholds"], args.tolerance
    worst, diffs, flips = 0.0, [], []
    for name, fa in a["files"].items():
        fb = b["files"][name]
        sa, sb = np.array(fa["windows"]), np.array(fb["windows"])
        if sa.shape != sb.shape:
            print(f"FAIL {name}: {sa.shape} windows x labels vs {sb.shape}")
            return 1
        d = np.abs(sa - sb)
        diffs.append(d.ravel())
        worst = max(worst, float(d.max()))
        for w, k in zip(*np.nonzero((sa >= [thr[lab] for lab in labels]) != (sb >= [thr[lab] for lab in labels])),
                        strict=True):
            flips.append((name, int(w), labels[k], float(sa[w, k]), float(sb[w, k]), thr[labels[k]]))
    d = np.concatenate(diffs)
    ea = {(n, *map(str, e[:4])) for n, f in a["files"].items() for e in f["events"]}
    eb = {(n, *map(str, e[:4])) for n, f in b["files"].items() for e in f["events"]}
    ia, ib = a["info"], b["info"]
    print(f"reference: {ia['machine']}, onnxruntime {ia['onnxruntime']}; other: {ib['machine']}, "
          f"onnxruntime {ib['onnxruntime']}")
    print(f"{len(a['files'])} recordings, {d.size // len(labels)} windows x {len(labels)} labels = {d.size} scores")
    steps = np.rint(d * 255).astype(int)  # in steps of the model's uint8 output (1/255)
    print(f"score |difference|: max {worst:.4f}, mean {d.mean():.5f} (tolerance {tol:.4f}); in output steps "
          f"of 1/255: 0: {np.mean(steps == 0) * 100:.1f}%, 1: {np.mean(steps == 1) * 100:.1f}%, "
          f"2-5: {np.mean((steps >= 2) & (steps <= 5)) * 100:.2f}%, >5: {np.mean(steps > 5) * 100:.2f}%")
    print(f"detections: {len(ea)} on the reference, {len(eb)} on the other, {len(ea & eb)} identical "
          "(label, start, end)")
    near = [f for f in flips if min(abs(f[3] - f[5]), abs(f[4] - f[5])) <= tol]
    for name, w, lab, x, y, t in flips:
        print(f"  near threshold: {name} window {w} {lab}: {x:.4f} vs {y:.4f} (threshold {t:.4f})")
    for e in sorted(ea ^ eb):
        print(f"  only on {'reference' if e in ea else 'other'}: {' '.join(e)}")
    ok = worst <= tol and len(near) == len(flips)
    print(("PASS" if ok else "FAIL") + f": scores within {tol:.4f}; "
          + ("detections identical" if ea == eb else
             f"{len(ea ^ eb)} detection(s) differ, all from the {len(flips)} near-threshold window(s) listed"
             if len(near) == len(flips) else "detections differ beyond near-threshold cases"))
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--model", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("files", nargs="+")
    c = sub.add_parser("compare")
    c.add_argument("reference")
    c.add_argument("other")
    c.add_argument("--tolerance", type=float, default=0.045)
    args = p.parse_args()
    return dump(args) if args.cmd == "dump" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
