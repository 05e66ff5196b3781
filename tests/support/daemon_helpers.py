"""Shared helpers for the daemon/analyze/check tests: tone recordings, configs, JSONL readers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from edge.config import Config
from tests.support.paths import REPO
from tests.support.process import Spawned
from tests.support.tiny_model import tone

SR = 32000
LOW, HIGH = 1200.0, 4100.0  # inside the tiny model's tone_low / tone_high bands
NOISE_F = 300.0  # a quiet tone outside both bands (keeps the windows non-silent)


def write_tones(path: Path, segments: list[tuple[float | None, float]], sr: int = SR) -> Path:
    """Write a WAV of consecutive (frequency or None for background, seconds) segments."""
    parts = [tone(f or NOISE_F, s, sr, seed=i) for i, (f, s) in enumerate(segments)]
    sf.write(str(path), np.concatenate(parts), sr, subtype="FLOAT")
    return path


def file_config(tmp: Path, wav: Path, **audio) -> Config:
    cfg = Config()
    cfg.state_dir = str(tmp / "state")
    cfg.mqtt.enabled = False
    cfg.mqtt.device_id = "test-device"
    cfg.audio.source = "file"
    cfg.audio.file = str(wav)
    cfg.audio.realtime = False
    for k, v in audio.items():
        setattr(cfg.audio, k, v)
    return cfg


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stream_t0(hops: list[dict], sr: int = SR) -> float:
    """Epoch of the stream's first sample, from a hop line (t_end = t0 + sample_end / sr)."""
    return hops[0]["t_end"] - hops[0]["sample_end"] / sr


def sonotrap(*args: str, **kw) -> Spawned:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("NOTIFY_SOCKET", None)
    return Spawned([sys.executable, "-m", "edge", *args], cwd=REPO, env=env, **kw)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
