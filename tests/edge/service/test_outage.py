"""Acceptance: broker down for 30 s mid-stream, daemon SIGKILLed during the outage and restarted.

The real daemon (``sonotrap run``: file source replaying tones in real time with the tiny
test model) publishes through its on-disk outbox to a real Mosquitto; a real subscriber with
a persistent session records what arrives. "Every detection" is what the two daemon runs
wrote to their ``--jsonl`` sinks: after recovery each one must arrive, none twice (by id),
in the order the daemon produced them.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto, Subscriber
from tests.support.daemon_helpers import HIGH, LOW, read_jsonl, sonotrap, write_tones
from tests.support.tiny_model import make_tiny_bundle

DEVICE = "outage-01"
OUTAGE_S = 30.0


def ids(path: Path) -> list[str]:
    return [d["id"] for d in read_jsonl(path)]


def wait(pred, timeout: float, what: str, every: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.slow
def test_outage_with_sigkill_loses_nothing_duplicates_nothing_keeps_order(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle")
    wav = write_tones(tmp_path / "tones.wav", [(LOW, 0.5), (None, 1.5), (HIGH, 0.5), (None, 1.5)])
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    sub = Subscriber(broker.port, f"sonotrap/{DEVICE}/detections", client_id="outage-sub", persistent=True)
    state = tmp_path / "state"
    procs = []

    def launch(n: int):
        p = sonotrap(
            "run", "--model", str(bundle), "--file", str(wav), "--realtime", "--loop",
            "--broker", f"127.0.0.1:{broker.port}", "--device-id", DEVICE, "--state-dir", str(state),
            "--jsonl", str(tmp_path / f"run{n}.jsonl"),
            "--set", "mqtt.reconnect_min_s=0.2", "--set", "mqtt.reconnect_max_s=2.0", "--set", "mqtt.keepalive_s=5",
        )
        procs.append(p)
        return p

    def received() -> list[str]:
        return [m.json()["id"] for m in sub.on_topic("/detections")]

    try:
        run1 = launch(1)
        wait(lambda: len(received()) >= 3, 40, "the first detections over MQTT")
        broker.stop()
        outage_start = time.monotonic()
        before = len(ids(tmp_path / "run1.jsonl"))
        wait(lambda: len(ids(tmp_path / "run1.jsonl")) >= before + 3, 20, "detections during the outage")
        run1.send_signal(signal.SIGKILL)
        run1.wait(10)
        assert run1.returncode == -signal.SIGKILL
        launch(2)
        wait(lambda: len(ids(tmp_path / "run2.jsonl")) >= 2, 25, "the restarted daemon's detections")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_start)))
        outage = time.monotonic() - outage_start
        broker.start()
        expected_now = ids(tmp_path / "run1.jsonl") + ids(tmp_path / "run2.jsonl")
        wait(lambda: set(expected_now) <= set(received()), 30, "the backlog to drain after the outage")
        run2 = procs[-1]
        run2.send_signal(signal.SIGTERM)
        out, err = run2.communicate(timeout=20)
        assert run2.returncode == 0, err[-2000:]
        expected = ids(tmp_path / "run1.jsonl") + ids(tmp_path / "run2.jsonl")
        wait(lambda: set(expected) <= set(received()), 10, "detections flushed at shutdown")
        time.sleep(0.5)  # a late duplicate would show up here
        got = received()
        assert outage >= OUTAGE_S
        assert len(got) == len(set(got)), "a detection arrived twice"
        missing = [i for i in expected if i not in set(got)]
        assert not missing, f"{len(missing)} of {len(expected)} detections never arrived"
        assert got == expected, "detections arrived out of order"
        assert len(ids(tmp_path / "run1.jsonl")) >= 6 and len(ids(tmp_path / "run2.jsonl")) >= 2
        print(f"outage {outage:.1f} s: {len(expected)} detections, all delivered once, in order")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
        sub.stop()
        broker.stop()
