"""The real daemon on a (virtual) microphone that disappears mid-run and comes back: it keeps
running, reports the loss and the recovery over MQTT, and detects calls again afterwards."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from tests.support import pulse as pulse_support
from tests.support.broker import Subscriber
from tests.support.paths import REPO
from tests.support.process import Spawned
from tests.support.pulse import PulseServer
from tests.support.tiny_model import tone
from tests.support.waiting import wait_for

SR = 32000
DEVICE = "unplug-01"


@pytest.mark.slow
def test_microphone_removed_and_re_added_mid_run(tmp_path, tiny_bundle, mosquitto) -> None:
    reason = pulse_support.available()
    if reason:
        pytest.skip(reason)
    server = PulseServer(tmp_path / "pa").start()
    sub = Subscriber(mosquitto.port, f"sonotrap/{DEVICE}/#")
    proc = Spawned(
        [sys.executable, "-m", "edge", "run", "--model", str(tiny_bundle), "--source", "mic", "--device", "pulse",
         "--broker", f"127.0.0.1:{mosquitto.port}", "--device-id", DEVICE, "--state-dir", str(tmp_path / "state"),
         "--set", "audio.retry_initial_s=0.3", "--set", "audio.retry_max_s=1.0", "--set", "audio.silence_timeout_s=0"],
        env=server.client_env(), cwd=REPO)

    def kinds() -> list[str]:
        return [m.json().get("event") for m in sub.on_topic("/events")]

    def detections() -> int:
        return len([m for m in sub.on_topic("/detections") if m.json().get("state") == "ended"])

    try:
        wait_for(lambda: any(m.json().get("state") == "online" for m in sub.on_topic("/status")), 40)
        time.sleep(2.5)  # a full window of audio first
        server.play(tone(1200, 1.5, SR), SR, wait=True)
        wait_for(lambda: detections() >= 1, 20)
        server.stop()  # the microphone vanishes under the running stream
        wait_for(lambda: "audio_error" in kinds(), 15)
        time.sleep(2.0)
        assert proc.poll() is None, "the daemon exited when its microphone went away"
        server.start()  # plugged in again
        wait_for(lambda: "audio_recovered" in kinds(), 20)
        time.sleep(2.5)
        before = detections()
        server.play(tone(4100, 1.5, SR), SR, wait=True)
        wait_for(lambda: detections() > before, 20)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sub.stop()
        server.stop()
