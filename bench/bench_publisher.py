"""MQTT publisher figures on this machine (real Mosquitto on localhost, real SQLite outbox).

    .venv/bin/python bench/bench_publisher.py [--n 300] [--backlog 5000]

Prints, for outbox synchronous=full and =normal:
- publish_detection() call time (what the inference thread pays): p50 / p99 / max;
- hand-off -> subscriber receipt latency (outbox commit, sender thread, broker, subscriber);
- drain rate of a backlog left by a previous run (messages/s, max_inflight 20).
The daemon's own end-to-end benchmark (audio sample -> MQTT) is bench/bench_daemon.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.config import MqttConfig  # noqa: E402
from edge.mqtt.outbox import Outbox  # noqa: E402
from edge.mqtt.publisher import Publisher  # noqa: E402
from tests.support.broker import Mosquitto, Subscriber  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def run(sync: str, n: int, backlog: int, tmp: Path) -> None:
    broker = Mosquitto(tmp / f"broker-{sync}").start()
    sub = Subscriber(broker.port, "sonotrap/bench/detections")
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, device_id="bench", reconnect_min_s=0.2)
    pub = Publisher(cfg, Outbox(tmp / f"{sync}.sqlite", synchronous=sync), "bench")
    pub.start()
    sub.wait_for(lambda _: pub.connected, 10)
    call, sent_at = [], {}
    for _ in range(n):
        pid = uuid.uuid4().hex
        t0 = time.monotonic()
        pub.publish_detection({"id": pid, "label": "x", "score": 0.9})
        t1 = time.monotonic()
        call.append(t1 - t0)
        sent_at[pid] = t0
        time.sleep(0.01)
    sub.wait_for(lambda ms: len(ms) >= n, 30)
    e2e = [m.t - sent_at[m.json()["id"]] for m in sub.messages[:n]]
    pub.stop(2)
    pub.outbox.close()
    print(f"synchronous={sync}: publish_detection p50 {pct(call, 50):.2f} ms, p99 {pct(call, 99):.2f} ms, "
          f"max {max(call) * 1000:.2f} ms; hand-off->receipt p50 {pct(e2e, 50):.2f} ms, p99 {pct(e2e, 99):.2f} ms "
          f"(n={n})")
    # backlog drain
    path = tmp / f"backlog-{sync}.sqlite"
    box = Outbox(path, synchronous=sync)
    for i in range(backlog):
        box.put("sonotrap/bench/detections", b'{"id":"%d"}' % i)
    box.close()
    sub.messages.clear()
    pub = Publisher(cfg, Outbox(path, synchronous=sync), "bench")
    t0 = time.monotonic()
    pub.start()
    sub.wait_for(lambda ms: len(ms) >= backlog, 300)
    dt = time.monotonic() - t0
    order_ok = [m.json()["id"] for m in sub.messages[:backlog]] == [str(i) for i in range(backlog)]
    pub.stop(5)
    print(f"synchronous={sync}: drained {backlog} queued messages in {dt:.2f} s ({backlog / dt:.0f} msg/s), "
          f"in order: {order_ok}, left in outbox: {pub.outbox.depth()}")
    pub.outbox.close()
    sub.stop()
    broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--backlog", type=int, default=5000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        for sync in ("full", "normal"):
            run(sync, args.n, args.backlog, Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
