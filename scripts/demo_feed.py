#!/usr/bin/env python3
"""Live detection feed for `make demo`: subscribe to sonotrap/# and print one line per message.

Usage: demo_feed.py PORT [HOST] — runs until interrupted (SIGINT/SIGTERM).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def fmt_detection(p: dict) -> str:
    t = time.strftime("%H:%M:%S", time.localtime(p.get("end_epoch", time.time())))
    what = "started" if p.get("state") == "started" else f"{p.get('duration_s', 0):4.1f} s"
    return (f"{t}  DETECTION  {p.get('name') or p.get('label')}  [{p.get('label')}]  score {p.get('score', 0):.2f}"
            f"  {what}  ({p.get('hops')} hops, model {p.get('model', {}).get('version')})")


def fmt_status(p: dict) -> str:
    model = p.get("model") or {}
    audio = p.get("audio") or {}
    inf = p.get("inference_ms") or {}
    outbox = p.get("outbox") or {}
    if p.get("state") == "offline":
        return f"{time.strftime('%H:%M:%S')}  status     offline ({p.get('reason', '')})"
    return (f"{time.strftime('%H:%M:%S')}  status     {p.get('state')}: {model.get('name')} {model.get('version')}, "
            f"up {p.get('uptime_s', 0):.0f} s, {p.get('hops', 0)} hops, {p.get('detections', 0)} detections, "
            f"inference p50 {inf.get('p50')} / p99 {inf.get('p99')} ms, backlog {p.get('backlog_hops', 0)}, "
            f"audio {audio.get('state', '?')} (overflows {audio.get('overflows', 0)}), "
            f"outbox {outbox.get('outbox_depth', '?')}")


def main() -> int:
    port = int(sys.argv[1])
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def on_connect(client, _u, _f, rc, _p):
        if not rc.is_failure:
            client.subscribe("sonotrap/#", qos=1)

    def on_message(_c, _u, msg):
        try:
            p = json.loads(msg.payload)
        except ValueError:
            return
        kind = msg.topic.rsplit("/", 1)[-1]
        if kind == "detections":
            line = fmt_detection(p)
        elif kind == "status":
            line = fmt_status(p)
        elif kind == "events":
            line = f"{time.strftime('%H:%M:%S')}  event      {p.get('event')}: {json.dumps(p.get('data'))[:160]}"
        else:
            return
        print(line, flush=True)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sonotrap-demo-feed-{int(time.time())}")
    client.on_connect = on_connect
    client.on_message = on_message
    client.reconnect_delay_set(0.2, 2)
    client.connect_async(host, port, keepalive=30)
    client.loop_start()
    print(f"live feed: listening on mqtt://{host}:{port}/sonotrap/# (Ctrl-C stops)", flush=True)
    while not stop.wait(0.2):
        pass
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
