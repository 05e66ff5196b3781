"""A stand-alone publisher process for tests that must kill it (-9) or restart it.

    python -m tests.support.publisher_proc --port P --outbox PATH --jsonl PATH [--every 0.2] [--count N]

Publishes a detection every ``--every`` seconds through the real Publisher + Outbox (same
order as the daemon: durable outbox commit first, then the JSON line), forever or ``--count``
times; SIGTERM stops it cleanly (Publisher.stop).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import uuid

from edge.config import MqttConfig
from edge.mqtt.outbox import Outbox
from edge.mqtt.payloads import MessageContext, detection_payload
from edge.mqtt.publisher import Publisher


class _Event:
    def __init__(self, i: int) -> None:
        now = time.time()
        self.id = uuid.uuid4().hex
        self.label = "tone_low" if i % 2 == 0 else "tone_high"
        self.name = self.label
        self.state = "ended"
        self.start, self.end = now - 1.0, now
        self.peak_score, self.mean_score, self.hops = 0.99, 0.98, 2


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--device", default="proc-01")
    ap.add_argument("--outbox", required=True)
    ap.add_argument("--jsonl", required=True)
    ap.add_argument("--every", type=float, default=0.2)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--keepalive", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    cfg = MqttConfig(host="127.0.0.1", port=args.port, device_id=args.device, keepalive_s=args.keepalive,
                     reconnect_min_s=0.2, reconnect_max_s=1.0, status_interval_s=5.0)
    pub = Publisher(cfg, Outbox(args.outbox), args.device)
    pub.set_status_provider(lambda: {"model": {"name": "proc", "version": "0"}})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    pub.start()
    ctx = MessageContext(args.device, "proc", "0", 0.5, 2.0)
    i = 0
    with open(args.jsonl, "a", encoding="utf-8") as out:
        while not stop.is_set() and (args.count == 0 or i < args.count):
            payload = detection_payload(_Event(i), ctx)
            pub.publish_detection(payload)
            out.write(json.dumps(payload) + "\n")
            out.flush()
            i += 1
            stop.wait(args.every)
        if args.count:
            stop.wait()
    pub.stop(5.0)
    pub.outbox.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
