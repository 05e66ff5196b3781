"""Last Will: a publisher process killed with SIGKILL is reported offline (retained) by the broker."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from tests.support.broker import Mosquitto, Subscriber
from tests.support.paths import REPO
from tests.support.process import Spawned


def test_sigkill_publishes_the_retained_last_will(mosquitto: Mosquitto, tmp_path: Path) -> None:
    sub = Subscriber(mosquitto.port, "sonotrap/lwt-01/#")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = Spawned(
        [sys.executable, "-m", "tests.support.publisher_proc", "--port", str(mosquitto.port), "--device", "lwt-01",
         "--outbox", str(tmp_path / "o.sqlite"), "--jsonl", str(tmp_path / "d.jsonl"), "--every", "0.3"],
        cwd=REPO, env=env,
    )
    try:
        online = sub.wait_for(lambda ms: [m.json() for m in ms if m.topic.endswith("/status")
                                          and m.json()["state"] == "online"], 20)[0]
        assert online["model"] == {"name": "proc", "version": "0"}
        sub.wait_for(lambda ms: any(m.topic.endswith("/detections") for m in ms), 10)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        off = sub.wait_for(lambda ms: [m.json() for m in ms if m.topic.endswith("/status")
                                       and m.json()["state"] == "offline"], 15)[0]
        assert off["reason"] == "connection lost" and off["device"] == "lwt-01"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.stop()
    late = Subscriber(mosquitto.port, "sonotrap/lwt-01/status")
    msg = late.wait_for(lambda ms: ms, 5)[0]
    assert msg.retain and msg.json()["state"] == "offline" and msg.json()["reason"] == "connection lost"
    late.stop()
