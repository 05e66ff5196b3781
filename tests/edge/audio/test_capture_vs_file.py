"""Acceptance: the real capture path gives the same detections as replaying the same audio from file.

A recording is played into a PulseAudio null sink while ``sonotrap run --source mic`` captures
the sink's monitor through sounddevice/PortAudio (ALSA ``pulse`` plugin); the same recording
is then analysed by ``sonotrap run --file ... --fast``. Both run as real subprocesses with the
tiny band-detector bundle. Events must match: same labels in the same order, start times and
durations within one hop (the capture's hop grid has an arbitrary phase against the audio),
peak scores within tolerance; the capture must not lose audio.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.support.paths import REPO
from tests.support.pulse import available, pulse_server
from tests.support.tiny_model import tone

pulse = pulse_server

SR = 32000
HOP = 0.5

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


def recording() -> np.ndarray:
    """Noise, a 1.2 kHz call (tone_low), noise, a 4.1 kHz call (tone_high), noise: 11.25 s.

    The first call starts after a full window (events cannot start before the stream does).
    Onsets sit between two hops of the file run's grid, so a capture grid of any phase is within
    half a hop of it (plus the playback latency).
    """
    def quiet(seconds: float, seed: int) -> np.ndarray:
        return tone(1.0, seconds, SR, amplitude=0.0, seed=seed)

    parts = [quiet(3.25, 1), tone(1200, 2.0, SR, seed=2), quiet(2.0, 3), tone(4100, 1.5, SR, seed=4), quiet(2.5, 5)]
    return np.concatenate(parts)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_cmd(bundle: Path, state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edge", "run", "--model", str(bundle), "--no-mqtt", "--hop", str(HOP),
            "--state-dir", str(state), "--jsonl", str(state / "events.jsonl"),
            "--hops-jsonl", str(state / "hops.jsonl"), *extra]


def ended(path: Path) -> list[dict]:
    return [e for e in read_jsonl(path) if e["state"] == "ended"]


def anchor_of(hops: list[dict]) -> float:
    """Wall-clock epoch of the run's sample 0, from any hop's (t_end, sample_end)."""
    return hops[0]["t_end"] - hops[0]["sample_end"] / SR


def test_capture_equals_file_replay(pulse, tiny_bundle, tmp_path):
    audio = recording()
    wav = tmp_path / "rec.wav"
    sf.write(wav, audio, SR, subtype="FLOAT")

    # 1. the same audio from file, as fast as possible
    fdir = tmp_path / "file"
    out = subprocess.run(run_cmd(tiny_bundle, fdir, "--file", str(wav), "--fast"), cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    file_events = ended(fdir / "events.jsonl")
    file_rel = anchor_of(read_jsonl(fdir / "hops.jsonl"))
    assert [e["label"] for e in file_events] == ["tone_low", "tone_high"], file_events

    # 2. the daemon captures the null sink's monitor while the recording is played into the sink
    cdir = tmp_path / "capture"
    cdir.mkdir()
    env = pulse.client_env()
    log = open(cdir / "daemon.log", "w")
    proc = subprocess.Popen(
        run_cmd(tiny_bundle, cdir, "--source", "mic", "--device", "pulse", "--set", "audio.silence_timeout_s=0"),
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while len(read_jsonl(cdir / "hops.jsonl")) < 3:  # capturing and classifying (pulse start-up ~2 s)
            assert proc.poll() is None, (cdir / "daemon.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the daemon produced no hops from the microphone"
            time.sleep(0.1)
        time.sleep(1.0)  # let the null sink settle to the capture stream's low latency
        t_play = time.time()
        pulse.play(audio, SR, wait=True)
        time.sleep(2 * HOP + 1.0)  # the last window after the recording ends
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (cdir / "daemon.log").read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()

    cap_events = [e for e in ended(cdir / "events.jsonl") if e["end_epoch"] > t_play]
    assert [e["label"] for e in cap_events] == [e["label"] for e in file_events], (cap_events, file_events)
    for f, c in zip(file_events, cap_events, strict=True):
        # times relative to the start of the recording; pacat/pulse add ~0.05 s before the first sample sounds
        assert c["start_epoch"] - t_play == pytest.approx(f["start_epoch"] - file_rel, abs=HOP / 2 + 0.2)
        assert c["end_epoch"] - t_play == pytest.approx(f["end_epoch"] - file_rel, abs=HOP / 2 + 0.2)
        assert c["duration_s"] == pytest.approx(f["duration_s"], abs=HOP + 0.01)
        assert abs(c["hops"] - f["hops"]) <= 1
        assert c["score"] == pytest.approx(f["score"], abs=0.03)
    # nothing was lost or re-stamped on the way in
    hops = read_jsonl(cdir / "hops.jsonl")
    ends = [h["sample_end"] for h in hops]
    assert np.all(np.diff(ends) == int(HOP * SR))
    t_ends = np.array([h["t_end"] for h in hops])
    assert np.allclose(np.diff(t_ends), HOP, atol=0.002)
    status = json.loads((cdir / "status.json").read_text())
    audio_stats = status.get("audio") or {}
    assert audio_stats.get("overflows") == 0 and audio_stats.get("queue_drops") == 0, audio_stats
    assert os.path.getsize(cdir / "daemon.log") > 0
