#!/usr/bin/env python3
"""Daemon benchmark: audio-in -> MQTT-receipt latency, CPU per audio hour, peak RSS (hop 0.5 s and 1 s).

    .venv/bin/python bench/bench_daemon.py [--model models/demo] [--seconds 60] [--audio FILE]

For each hop a fresh child process runs the real daemon (``edge.service.daemon.Daemon``) on the
recording replayed in REAL TIME (looped), with the real publisher + SQLite outbox talking to
a real Mosquitto on localhost and a real paho subscriber in the same process (same
monotonic clock):

* latency = subscriber receipt time - ``AudioBlock.received`` of the block holding the last
  sample of the window that produced the message (the moment that sample entered the
  process). Detection messages are few, so ``started`` messages are enabled too (published
  at the first hop above threshold) and, if the model finds fewer than --min-messages calls,
  the detector threshold is lowered to 0 for a second, labelled measurement
  (every hop then opens and closes an event: worst case traffic). Also: audio-in -> hop scored
  for every hop (many samples; the pipeline part of the latency).
* CPU: process CPU time (all threads: audio, frontend, onnxruntime, publisher, subscriber)
  / audio time replayed, as CPU seconds per audio hour and % of one core.
* peak RSS of the child (``wait4``'s ru_maxrss).
A second pass replays the file as fast as possible to show the pure processing cost.

Targets: p99 < 100 ms, < 3 % of one core at hop 1 s, RSS < 200 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SOUNDSCAPE_CANDIDATES = [
    os.environ.get("SONOTRAP_DATA", ""),
    str(REPO.parent / "shared" / "data"),
]


def default_audio() -> str | None:
    for base in SOUNDSCAPE_CANDIDATES:
        p = Path(base) / "soundscapes" / "opensoundscape_1min.wav" if base else None
        if p and p.is_file():
            return str(p)
    return None


def pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 1) if values else None


def child(args: argparse.Namespace) -> None:
    """One measurement in this process; prints a JSON line."""
    from edge.config import Config
    from edge.models.bundle import load_bundle
    from edge.mqtt.outbox import Outbox
    from edge.mqtt.publisher import Publisher
    from edge.service.daemon import Daemon
    from tests.support.broker import Mosquitto, Subscriber

    tmp = Path(args.tmp)
    broker = Mosquitto(tmp / f"broker-{args.hop}-{args.threshold}").start()
    cfg = Config()
    cfg.state_dir = str(tmp / f"state-{args.hop}-{args.threshold}-{args.fast}")
    cfg.audio.source, cfg.audio.file = "file", args.audio
    cfg.audio.realtime, cfg.audio.loop = not args.fast, not args.fast
    cfg.model.hop_s, cfg.model.threads = args.hop, args.threads
    cfg.detector.publish_started = True
    if args.threshold is not None:
        cfg.detector.default_threshold = args.threshold
    cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.device_id = "127.0.0.1", broker.port, "bench"
    sub = Subscriber(broker.port, "sonotrap/bench/detections")
    publisher = Publisher(cfg.mqtt, Outbox(Path(cfg.state_dir) / "outbox.sqlite"), "bench")
    bundle = load_bundle(args.model)
    d = Daemon(cfg, bundle=bundle, publisher=publisher, install_signals=False)
    received: dict[tuple[str, str], float] = {}
    hop_lat: list[float] = []

    def on_published(payload: dict, rec: float | None) -> None:
        if rec is not None:
            received[(payload["id"], payload["state"])] = rec

    def on_hops(results) -> None:
        now = time.monotonic()
        for r in results:
            rec = d.received_of(r.sample_end)
            if rec is not None:
                hop_lat.append(now - rec)

    d.on_published, d.on_hops = on_published, on_hops
    if not args.fast:
        threading.Timer(args.seconds, d.request_stop).start()
    cpu0, wall0 = time.process_time(), time.monotonic()
    d.run()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    audio_s = d.source.stats()["samples"] / d.source.sample_rate
    time.sleep(0.5)
    lat = []
    for m in sub.messages:
        p = m.json()
        rec = received.get((p["id"], p["state"]))
        if rec is not None:
            lat.append(m.t - rec)
    status = d.status()
    sub.stop()
    broker.stop()
    print(json.dumps({
        "hop": args.hop, "fast": args.fast, "threshold": args.threshold, "audio_s": audio_s, "wall_s": wall,
        "cpu_s": cpu, "messages": len(lat), "lat_p50": pct(lat, 50), "lat_p99": pct(lat, 99),
        "lat_max": round(max(lat) * 1000, 1) if lat else None, "hop_p50": pct(hop_lat, 50),
        "hop_p99": pct(hop_lat, 99), "hops": status["hops"], "skipped": status["skipped_hops"],
        "inference_ms": status["inference_ms"], "overflows": status["audio"]["overflows"],
        "queue_drops": status["audio"]["queue_drops"], "detections": status["detections"],
    }), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models" / "demo"), help="bundle (default models/demo)")
    ap.add_argument("--audio", default=None, help="recording to replay (default: the shared 1-min soundscape)")
    ap.add_argument("--seconds", type=float, default=60.0, help="real-time replay per hop setting")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hops", default="0.5,1.0")
    ap.add_argument("--min-messages", type=int, default=20)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--hop", type=float, default=0.5, help=argparse.SUPPRESS)
    ap.add_argument("--threshold", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.audio is None:
        args.audio = default_audio()
        if args.audio is None:
            raise SystemExit("no --audio given and the shared soundscape is not available (set SONOTRAP_DATA)")
    if not Path(args.model, "manifest.json").is_file():
        raise SystemExit(f"model bundle {args.model} not found; pass --model")
    import platform

    from edge.models.bundle import load_bundle

    b = load_bundle(args.model)
    print(f"model {b.name} {b.version} ({args.model}, {len(b.labels)} labels), audio {args.audio}, "
          f"{args.threads} onnxruntime thread(s), {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        for hop in [float(h) for h in args.hops.split(",")]:
            r = run_child(args, hop, False, None, tmp)
            rows.append(("real time", r))
            if r["messages"] < args.min_messages:
                rows.append(("real time, threshold 0", run_child(args, hop, False, 0.0, tmp)))
            rows.append(("fast replay", run_child(args, hop, True, None, tmp)))
    print_table(rows)


def run_child(args, hop, fast, threshold, tmp) -> dict:
    cmd = [sys.executable, __file__, "--child", "--hop", str(hop), "--model", args.model, "--audio", args.audio,
           "--seconds", str(args.seconds), "--threads", str(args.threads), "--tmp", tmp]
    if fast:
        cmd.append("--fast")
    if threshold is not None:
        cmd += ["--threshold", str(threshold)]
    with open(Path(tmp) / "child.out", "w+") as out, open(Path(tmp) / "child.err", "w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errors = out.read(), err.read()
    if proc.returncode:
        raise SystemExit(f"benchmark child failed ({proc.returncode}): {errors[-3000:]}")
    result = json.loads(text.strip().splitlines()[-1])
    result["rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return result


def print_table(rows: list[tuple[str, dict]]) -> None:
    head = ("hop s", "replay", "audio s", "msgs", "in->MQTT p50/p99/max ms", "in->scored p50/p99 ms",
            "infer p50/p99 ms", "CPU s/audio h", "% core", "peak RSS MB", "skipped/overflow")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for mode, r in rows:
        cpu_h = r["cpu_s"] / max(r["audio_s"], 1e-9) * 3600
        core = r["cpu_s"] / max(r["wall_s"], 1e-9) * 100
        lat = f"{r['lat_p50']}/{r['lat_p99']}/{r['lat_max']}" if r["messages"] and mode != "fast replay" else "-"
        hop_lat = f"{r['hop_p50']}/{r['hop_p99']}" if mode != "fast replay" else "-"
        inf = r["inference_ms"]
        print(f"| {r['hop']} | {mode} | {r['audio_s']:.0f} | {r['messages']} | {lat} | {hop_lat} | "
              f"{inf['p50']}/{inf['p99']} | {cpu_h:.0f} | {core:.2f} | {r['rss_mb']} | "
              f"{r['skipped']}/{r['overflows'] + r['queue_drops']} |")
    print("\nin->MQTT: last sample of the window entering the process -> subscriber receipt (real Mosquitto); "
          "% core: CPU time / wall time of the whole daemon process (for fast replay: while it runs flat out); "
          "CPU s/audio h: CPU seconds per hour of audio.")


if __name__ == "__main__":
    main()
