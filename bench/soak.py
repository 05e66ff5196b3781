"""Accelerated soak: many hours of audio through the real daemon as fast as it can go, while
the broker keeps restarting. Prints RSS, fd and thread figures and the delivery count.

    .venv/bin/python bench/soak.py [--hours 24] [--flap-every 20] [--down 1.0] [--json OUT]

What runs: ``sonotrap run --source stdin`` (the real daemon process, stdin back-pressure on,
so nothing is dropped and nothing is paced) with the tiny test model (tests/support/
tiny_model.py: the figures are about the daemon's machinery -- audio queue, pipeline,
detector, outbox, MQTT -- not about a large network). A producer pipes a 10-s cycle of
tones (two calls per cycle) and quiet noise, ``--hours`` of audio in all. A real Mosquitto
with persistence is stopped for ``--down`` s every ``--flap-every`` s; a persistent
subscriber records every detection. The last 5 % of the audio runs with a steady broker so the
outbox can drain before the stream ends (a daemon stopped while its broker is away keeps the
rest on disk for its next start; that is not what this measures).

Figures: RSS, open fds and threads of the daemon, sampled every 0.5 s; "growth" compares
the median of the last 10 % of samples with the median of the 10 %-20 % window (after the
warm-up; sampling starts at the first hop). Delivery: detections the daemon committed (its --jsonl) vs. received (by id),
duplicates, and the rows left in the outbox after the daemon exited.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.broker import Mosquitto, Subscriber  # noqa: E402
from tests.support.tiny_model import make_tiny_bundle  # noqa: E402

SR = 32000
CYCLE_S = 10.0
DEVICE = "soak-01"

PRODUCER = textwrap.dedent("""
    import sys
    import numpy as np
    sr, cycles = int(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(0)
    def tone(f, s):
        t = np.arange(int(s * sr)) / sr
        return 0.5 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(len(t))
    quiet = lambda s: 0.01 * rng.standard_normal(int(s * sr)) + 0.02 * np.sin(2 * np.pi * 300 * np.arange(int(s * sr)) / sr)
    cycle = np.concatenate([tone(1200, 0.6), quiet(4.4), tone(4100, 0.6), quiet(4.4)])
    raw = (np.clip(cycle, -1, 1) * 32767).astype("<i2").tobytes()
    out = sys.stdout.buffer
    for _ in range(cycles):
        out.write(raw)
    out.flush()
""")


def proc_figures(pid: int) -> dict | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"t": time.monotonic(), "rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]),
            "fds": fds}


def growth(samples: list[dict], key: str) -> tuple[float, float]:
    n = len(samples)
    base = statistics.median(s[key] for s in samples[n // 10: max(n // 10 + 1, n // 5)])
    last = statistics.median(s[key] for s in samples[-max(1, n // 10):])
    return base, last


def soak(hours: float, flap_every: float, down: float, tmp: Path, hop_s: float = 0.5,
         steady_tail: float = 0.05, qos: int = 2) -> dict:
    bundle = make_tiny_bundle(tmp / "bundle")
    # QoS 2 (exactly once, in order): one message in flight from the broker to the subscriber too
    broker = Mosquitto(tmp / "broker", persistence=True, max_inflight=1 if qos == 2 else None).start()
    sub = Subscriber(broker.port, f"sonotrap/{DEVICE}/detections", client_id="soak-sub", persistent=True, qos=qos)
    cycles = max(1, round(hours * 3600 / CYCLE_S))
    jsonl = tmp / "detections.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env.pop("NOTIFY_SOCKET", None)
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, str(SR), str(cycles)], stdout=subprocess.PIPE)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--source", "stdin", "--model", str(bundle),
         "--broker", f"127.0.0.1:{broker.port}", "--device-id", DEVICE, "--state-dir", str(tmp / "state"),
         "--jsonl", str(jsonl), "--set", f"audio.stdin_rate={SR}", "--set", "audio.stdin_backpressure=true",
         "--set", f"model.hop_s={hop_s}", "--set", "mqtt.reconnect_min_s=0.2", "--set", "mqtt.reconnect_max_s=1.0",
         "--set", "mqtt.keepalive_s=5", "--set", "audio.silence_timeout_s=0", "--set", f"mqtt.qos={qos}",
         "--set", 'mqtt.protocol="5"' if qos == 2 else 'mqtt.protocol="3.1.1"'],
        stdin=producer.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    assert producer.stdout is not None
    producer.stdout.close()
    err_tail: list[str] = []
    threading.Thread(target=lambda: [err_tail.append(x) for x in daemon.stderr], daemon=True).start()  # type: ignore[union-attr]
    samples: list[dict] = []
    restarts = 0
    t0 = time.monotonic()
    next_flap = t0 + flap_every
    total_hops = cycles * CYCLE_S / hop_s
    status_path = tmp / "state" / "status.json"
    flapping = True
    hops = 0
    while daemon.poll() is None:
        try:
            hops = json.loads(status_path.read_text())["hops"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        fig = proc_figures(daemon.pid) if hops > 0 else None  # from the first hop on (model loaded)
        if fig:
            samples.append(fig)
        # the last part of the audio with a steady broker, so the outbox can drain
        flapping = flapping and hops < (1.0 - steady_tail) * total_hops
        if flapping and time.monotonic() >= next_flap:
            broker.stop()
            time.sleep(down)
            broker.start()
            restarts += 1
            next_flap = time.monotonic() + flap_every
        time.sleep(0.5)
    wall = time.monotonic() - t0
    if not broker.running:
        broker.start()
    committed = [json.loads(line)["id"] for line in jsonl.read_text().splitlines() if line.strip()]
    deadline = time.monotonic() + 60
    want = set(committed)
    while time.monotonic() < deadline and not want <= {m.json()["id"] for m in sub.messages}:
        time.sleep(0.5)
    got = [m.json()["id"] for m in sub.messages]
    missing = [i for i in committed if i not in set(got)]
    import sqlite3

    with sqlite3.connect(tmp / "state" / "outbox.sqlite") as db:
        rows = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox")]
    left = len(rows)
    missing_in_outbox = len(set(missing) & {r.get("id") for r in rows})
    status = json.loads((tmp / "state" / "status.json").read_text())
    sub.stop()
    broker.stop()
    rss0, rss1 = growth(samples, "rss_kb")
    fd0, fd1 = growth(samples, "fds")
    th0, th1 = growth(samples, "threads")
    return {
        "audio_hours": round(status["hops"] * hop_s / 3600, 2),
        "wall_s": round(wall, 1),
        "speed_x_realtime": round(status["hops"] * hop_s / wall, 1),
        "exit_code": daemon.returncode,
        "broker_restarts": restarts,
        "qos": qos,
        "detections_committed": len(committed),
        "detections_received_unique": len(set(got) & want),
        "duplicates": len(got) - len(set(got)),
        "outbox_left_after_exit": left,
        "missing": len(missing), "missing_still_in_outbox": missing_in_outbox,
        "rss_mb_base": round(rss0 / 1024, 1), "rss_mb_end": round(rss1 / 1024, 1),
        "rss_growth_pct": round(100 * (rss1 / rss0 - 1), 2),
        "rss_mb_max": round(max(s["rss_kb"] for s in samples) / 1024, 1),
        "fds_base": fd0, "fds_end": fd1, "threads_base": th0, "threads_end": th1,
        "samples": len(samples),
        "stderr_tail": "".join(err_tail[-5:]) if daemon.returncode else "",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0, help="hours of audio to push through")
    ap.add_argument("--flap-every", type=float, default=20.0, help="seconds (wall) between broker restarts")
    ap.add_argument("--down", type=float, default=1.0, help="seconds the broker stays down each time")
    ap.add_argument("--qos", type=int, choices=(1, 2), default=2,
                    help="mqtt.qos of the daemon and the subscriber (2: exactly once, in order)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sonotrap-soak-") as d:
        res = soak(args.hours, args.flap_every, args.down, Path(d), qos=args.qos)
    print(f"soak: {res['audio_hours']} h of audio in {res['wall_s']:.0f} s ({res['speed_x_realtime']}x real time), "
          f"{res['broker_restarts']} broker restarts, QoS {res['qos']}, exit {res['exit_code']}")
    print(f"  detections: {res['detections_committed']} committed, {res['detections_received_unique']} received, "
          f"{res['duplicates']} duplicates, {res['outbox_left_after_exit']} left in the outbox")
    print(f"  RSS {res['rss_mb_base']} -> {res['rss_mb_end']} MB ({res['rss_growth_pct']:+.2f} %, max "
          f"{res['rss_mb_max']} MB); fds {res['fds_base']} -> {res['fds_end']}; threads {res['threads_base']} -> "
          f"{res['threads_end']} ({res['samples']} samples)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
