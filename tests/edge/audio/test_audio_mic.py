"""MicSource and device listing against real PortAudio, capturing a PulseAudio null sink's monitor.

No mocks: tones are played into the sink with pacat and captured through sounddevice via the
ALSA ``pulse`` plugin (see tests/support/pulse.py for the setup).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from edge.audio import list_input_devices, open_source
from edge.audio.devices import rescan
from edge.config import AudioConfig
from edge.errors import SonotrapError
from tests.support.pulse import PulseServer, available, pulse_server, use_in_process, write_asoundrc
from tests.support.waiting import wait_for

pulse = pulse_server  # the module-scoped fixture, under a short name

SR = 32000
pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


def mic_cfg(**kw) -> AudioConfig:
    kw.setdefault("device", "pulse")
    kw.setdefault("silence_timeout_s", 0)
    cfg = AudioConfig(source="mic", block_s=0.1, retry_initial_s=0.2, retry_max_s=0.5, **kw)
    cfg.validate()
    return cfg


class Events(list):
    def __call__(self, kind, data):
        self.append((kind, data))

    def kinds(self):
        return [k for k, _ in self]


def tone(freq: float, seconds: float, amp: float = 0.3, sr: int = SR) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def read_for(src, seconds: float) -> list:
    blocks, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        b = src.read(0.2)
        if b is not None:
            blocks.append(b)
    return blocks


def settle(src, extra_s: float = 1.0) -> None:
    """Wait for the first block plus ``extra_s``: a new pulse record stream starts ~1.8 s late and
    the null sink renders in large blocks until it has switched to the stream's low latency."""
    assert wait_for(lambda: src.stats()["blocks"] > 0, 6.0, poll=lambda: src.read(0.1)), "no audio from the monitor"
    read_for(src, extra_s)


def test_captures_a_played_tone_with_contiguous_timestamps(pulse, monkeypatch):
    use_in_process(pulse, monkeypatch)
    src = open_source(mic_cfg(), SR)
    src.start()
    try:
        assert src.stats()["state"] == "running" and src.sample_rate == SR
        settle(src)
        t_play = time.time()
        pulse.play(tone(1000, 2.0), SR, wait=False)
        blocks = read_for(src, 4.0)
    finally:
        src.stop()
    x = np.concatenate([b.samples for b in blocks])
    loud = np.flatnonzero(np.abs(x) > 0.05)
    assert len(loud) > 1.5 * SR, "the played tone did not come through the monitor"
    seg = x[loud[0] + 1000: loud[0] + 1000 + SR]
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
    peak_hz = np.argmax(spectrum) * SR / len(seg)
    assert peak_hz == pytest.approx(1000, abs=3)
    assert np.sqrt(np.mean(seg**2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.05)  # unity gain path
    for a, b in zip(blocks, blocks[1:], strict=False):
        assert b.start_time == pytest.approx(a.end_time, abs=1e-6)
        assert b.received >= a.received
    # the tone onset is stamped when it was played (within pacat/pulse start-up latency)
    onset_block = next(b for b in blocks if np.abs(b.samples).max() > 0.05)
    onset = onset_block.start_time + np.argmax(np.abs(onset_block.samples) > 0.05) / SR
    assert onset - t_play == pytest.approx(0.05, abs=0.15)
    assert 0 < onset_block.received - (time.monotonic() - (time.time() - onset_block.end_time)) < 0.5
    st = src.stats()
    assert st["overflows"] == 0 and st["queue_drops"] == 0 and st["device"] == "pulse"


def test_silence_watchdog_reports_dead_input_and_recovery(pulse, monkeypatch):
    use_in_process(pulse, monkeypatch)
    events = Events()
    src = open_source(mic_cfg(silence_timeout_s=1.0), SR, on_event=events)
    src.start()
    try:
        assert wait_for(lambda: "silence" in events.kinds(), 6.0, poll=lambda: src.read(0.1))  # nothing playing: digital zeros
        assert src.stats()["silent_for_s"] >= 1.0
        pulse.play(tone(2000, 0.8), SR, wait=False)
        assert wait_for(lambda: "silence_ended" in events.kinds(), 4.0, poll=lambda: src.read(0.1))
        assert src.stats()["silent_for_s"] < 1.0
    finally:
        src.stop()


def test_explicit_rate_the_device_rejects_is_a_clear_error(pulse, monkeypatch):
    use_in_process(pulse, monkeypatch)
    src = open_source(mic_cfg(sample_rate=400000), SR)
    with pytest.raises(SonotrapError) as info:
        src.start()
    msg = str(info.value)
    assert "'pulse' does not support 400000 Hz; supported: 8000, 16000" in msg
    assert msg.endswith("set audio.sample_rate") and "\n" not in msg


def test_model_rate_the_device_rejects_falls_back_to_its_default(pulse, monkeypatch, caplog):
    use_in_process(pulse, monkeypatch)
    src = open_source(mic_cfg(), 400000)  # a model rate no device offers
    with caplog.at_level(logging.WARNING, logger="sonotrap.audio"):
        src.start()
    try:
        assert src.sample_rate == 44100  # the pulse device's default
        assert "using its default 44100 Hz" in caplog.text
        blocks = read_for(src, 2.5)
        assert blocks and all(b.sample_rate == 44100 and len(b.samples) == 4410 for b in blocks)
    finally:
        src.stop()


def test_too_many_channels_is_a_clear_error(pulse, monkeypatch):
    use_in_process(pulse, monkeypatch)
    with pytest.raises(SonotrapError, match=r"has 32 input channel\(s\), cannot open 40; set audio.channels"):
        open_source(mic_cfg(channels=40), SR).start()


def test_missing_device_waits_then_recovers_when_it_appears(pulse, monkeypatch, tmp_path):
    use_in_process(pulse, monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path))  # ALSA reads $HOME/.asoundrc on PortAudio re-init
    rescan()
    events = Events()
    src = open_source(mic_cfg(device="sonotrap_late_mic"), SR, on_event=events)
    src.start()  # must not raise: USB microphones enumerate late
    try:
        st = src.stats()
        assert st["state"] == "waiting for device"
        assert events.kinds() == ["audio_error"] and not events[0][1]["fatal"]
        assert src.read(0.3) is None
        assert wait_for(lambda: src.stats()["retries"] >= 2, 3.0, poll=lambda: src.read(0.1))
        write_asoundrc(tmp_path, "sonotrap_late_mic")  # the microphone shows up
        assert wait_for(lambda: src.stats()["state"] == "running", 5.0, poll=lambda: src.read(0.1))
        assert "audio_recovered" in events.kinds()
        assert src.stats()["device"] == "sonotrap_late_mic"
        pulse.play(tone(1000, 0.5), SR, wait=False)
        blocks = read_for(src, 3.0)
        assert any(np.abs(b.samples).max() > 0.1 for b in blocks)
    finally:
        src.stop()
        monkeypatch.undo()
        rescan()


def test_device_timeout_turns_waiting_into_a_clear_error(pulse, monkeypatch):
    use_in_process(pulse, monkeypatch)
    src = open_source(mic_cfg(device="no_such_microphone", device_timeout_s=0.6), SR)
    src.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(SonotrapError) as info:
            while time.monotonic() - t0 < 10:
                src.read(0.2)
        msg = str(info.value)
        assert "'no_such_microphone' not available after 0.6 s" in msg and "audio.device" in msg
        assert src.stats()["state"] == "error"
    finally:
        src.stop()


@pytest.mark.parametrize("close_hangs", [False, True], ids=["close-returns", "close-hangs"])
def test_sound_server_dies_and_comes_back(tmp_path, monkeypatch, close_hangs):
    """With ``close_hangs`` the dead stream's close takes 5 s (as seen when the server is
    killed under it): the source abandons it after 3 s, must not re-initialise PortAudio under
    it (that crashed the interpreter), and still recovers with the devices it knows."""
    closing, terminated_under_a_close = [0], []
    if close_hangs:
        import sounddevice as sd

        real_close, real_terminate = sd.InputStream.close, sd._terminate

        def slow_close(self, ignore_errors=True):
            closing[0] += 1
            try:
                time.sleep(5.0)
                real_close(self, ignore_errors=ignore_errors)
            finally:
                closing[0] -= 1

        def watched_terminate():
            terminated_under_a_close.append(closing[0])
            real_terminate()

        monkeypatch.setattr(sd.InputStream, "close", slow_close)
        monkeypatch.setattr(sd, "_terminate", watched_terminate)
    server = PulseServer(tmp_path / "pa").start()
    src = None
    try:
        use_in_process(server, monkeypatch)
        events = Events()
        src = open_source(mic_cfg(), SR, on_event=events)
        src.start()
        assert read_for(src, 2.5), "no audio before the outage"
        server.stop()  # SIGKILL: the device vanishes under a running stream
        assert wait_for(lambda: src.stats()["state"] == "waiting for device", 8.0, poll=lambda: src.read(0.1))
        assert "audio_error" in events.kinds()
        server.start()
        assert wait_for(lambda: "audio_recovered" in events.kinds(), 8.0, poll=lambda: src.read(0.1))
        server.play(tone(1000, 0.5), SR, wait=False)
        blocks = read_for(src, 3.0)
        assert any(np.abs(b.samples).max() > 0.1 for b in blocks)
        st = src.stats()
        assert st["state"] == "running" and st["stream_restarts"] >= 1 and st["retries"] >= 1
        assert not any(terminated_under_a_close), "PortAudio was terminated while a stream was closing"
    finally:
        if src is not None:
            src.stop()  # a failed check must not leave its supervisor retrying into later tests
        server.stop()


def test_stalled_consumer_drops_are_counted_and_reported(pulse, monkeypatch):
    use_in_process(pulse, monkeypatch)
    events = Events()
    src = open_source(mic_cfg(queue_s=0.3), SR, on_event=events)
    src.start()
    try:
        time.sleep(4.0)  # consumer stalled: the queue holds 3 blocks, the rest must be counted
        st = src.stats()
        assert st["queue_drops"] >= 5 and st["dropped_samples"] == st["queue_drops"] * 3200
        assert st["queue_depth"] == 3
        src.read(0.2)
        overflow = [d for k, d in events if k == "overflow"]
        assert overflow and overflow[0]["queue_drops"] == st["queue_drops"]
    finally:
        src.stop()


def test_list_input_devices_and_cli(pulse, monkeypatch):
    use_in_process(pulse, monkeypatch)
    devices = {d["name"]: d for d in list_input_devices()}
    assert "pulse" in devices
    d = devices["pulse"]
    assert d["channels"] >= 1 and d["default_rate"] == 44100 and d["hostapi"] == "ALSA"
    assert {16000, 32000, 44100, 48000} <= set(d["supported_rates"])
    env = pulse.client_env()
    out = subprocess.run([sys.executable, "-m", "edge", "devices"], env=env, capture_output=True, text=True,
                         timeout=60, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    assert "pulse" in out.stdout and "32000" in out.stdout


def test_cli_without_any_input_device_is_a_clear_error(pulse, tmp_path):
    env = pulse.client_env()
    env["PULSE_SERVER"] = f"unix:{tmp_path}/no-server"  # sound server gone, no sound card here
    out = subprocess.run([sys.executable, "-m", "edge", "devices"], env=env, capture_output=True, text=True,
                         timeout=60, cwd=os.getcwd())
    if out.returncode == 0:
        pytest.skip("this machine has real input devices")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: no audio input devices found")


def run_daemon(pulse, bundle, state, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge", "run", "--model", str(bundle), "--source", "mic", "--no-mqtt",
         "--state-dir", str(state), *args],
        env=pulse.client_env(), capture_output=True, text=True, timeout=60, cwd=os.getcwd(),
    )


def test_daemon_with_an_unsupported_rate_exits_with_one_line(pulse, tiny_bundle, tmp_path):
    # a rate no device can do stops at config validation (the device check itself is tested
    # in-process above, where the config is built without the bounds)
    out = run_daemon(pulse, tiny_bundle, tmp_path, "--device", "pulse", "--sample-rate", "400000")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "error: config: audio.sample_rate 400000 is out of range; use a value within 8000..384000"
    )
    assert "Expression" not in out.stderr  # PortAudio's probe noise is hidden


def test_daemon_gives_up_on_a_missing_device_only_when_told(pulse, tiny_bundle, tmp_path):
    out = run_daemon(pulse, tiny_bundle, tmp_path, "--device", "no_such_microphone",
                     "--set", "audio.device_timeout_s=1.5", "--set", "audio.retry_initial_s=0.3")
    assert out.returncode != 0
    assert "audio device 'no_such_microphone' not available after 1.5 s" in out.stderr
    assert "retrying every 0.3..60 s" in out.stderr  # it waited and retried before giving up
