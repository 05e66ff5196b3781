"""StdinSource through real OS pipes fed by a subprocess (what arecord/ffmpeg pipelines do)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from edge.audio import open_source
from edge.config import AudioConfig

SR = 16000


def stdin_cfg(**kw) -> AudioConfig:
    cfg = AudioConfig(source="stdin", stdin_rate=SR, block_s=0.1, **kw)
    cfg.validate()
    return cfg


def producer(raw: bytes, chunk: int, pause: float = 0.0) -> subprocess.Popen:
    """A child process writing ``raw`` to its stdout in ``chunk``-byte writes (odd sizes split frames)."""
    code = textwrap.dedent(f"""
        import sys, time
        data = sys.stdin.buffer.read()
        out = sys.stdout.buffer
        for i in range(0, len(data), {chunk}):
            out.write(data[i:i + {chunk}]); out.flush()
            if {pause}: time.sleep({pause})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None
    threading.Thread(target=lambda: (proc.stdin.write(raw), proc.stdin.close()), daemon=True).start()
    return proc


def collect(src, limit_s: float = 20.0):
    blocks, deadline = [], time.monotonic() + limit_s
    while not src.finished and time.monotonic() < deadline:
        b = src.read(0.5)
        if b is not None:
            blocks.append(b)
    return blocks


def signal_(n: int, channels: int = 1) -> np.ndarray:
    t = np.arange(n)
    cols = [0.5 * np.sin(2 * np.pi * (440 * (c + 1)) * t / SR) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


@pytest.mark.parametrize("fmt", ["s16le", "f32le"])
def test_pcm_through_a_pipe_with_split_frames(fmt):
    x = signal_(SR * 2)
    if fmt == "s16le":
        raw = (x * 32767).astype("<i2").tobytes()
        expect = (x[:, 0] * 32767).astype("<i2").astype(np.float32) / 32768
    else:
        raw = x.astype("<f4").tobytes()
        expect = x[:, 0]
    proc = producer(raw, chunk=1237)  # 1237 bytes: every write ends inside a sample
    src = open_source(stdin_cfg(stdin_format=fmt), 32000)
    src._stream = proc.stdout  # the real pipe, as sys.stdin.buffer would be
    t0 = time.time()
    src.start()
    blocks = collect(src)
    proc.wait(timeout=10)
    got = np.concatenate([b.samples for b in blocks])
    np.testing.assert_array_equal(got, expect)
    assert src.sample_rate == SR and all(b.sample_rate == SR for b in blocks)
    for a, b in zip(blocks, blocks[1:], strict=False):
        assert b.start_time == pytest.approx(a.end_time, abs=1e-6)
    assert blocks[0].start_time == pytest.approx(t0, abs=1.0)
    st = src.stats()
    assert st["state"] == "finished" and st["discarded_bytes"] == 0 and st["queue_drops"] == 0


def test_stereo_channel_select_and_trailing_partial_frame():
    x = signal_(SR, channels=2)
    raw = x.astype("<f4").tobytes() + b"\x01\x02\x03"  # stream ends mid-frame
    proc = producer(raw, chunk=4096)
    src = open_source(stdin_cfg(stdin_format="f32le", stdin_channels=2, channel=1), 32000)
    src._stream = proc.stdout
    src.start()
    got = np.concatenate([b.samples for b in collect(src)])
    np.testing.assert_array_equal(got, x[:, 1])
    assert src.stats()["discarded_bytes"] == 3


def test_slow_live_producer_gives_timely_blocks():
    """A live pipe delivering in real time: blocks arrive as the audio does, not at EOF."""
    x = signal_(SR)
    raw = (x * 32767).astype("<i2").tobytes()
    proc = producer(raw, chunk=SR // 10 * 2, pause=0.1)  # 0.1 s of audio every 0.1 s
    src = open_source(stdin_cfg(), 32000)
    src._stream = proc.stdout
    src.start()
    t0 = time.monotonic()
    first = None
    while first is None and time.monotonic() - t0 < 5:
        first = src.read(0.5)
    assert first is not None and first.received - t0 < 0.6
    rest = collect(src)
    assert sum(len(b.samples) for b in [first, *rest]) == SR


def test_full_queue_counts_drops_for_live_input():
    """Consumer stalled: blocks beyond queue_s are dropped and counted, never silently."""
    x = signal_(SR * 3)
    raw = (x * 32767).astype("<i2").tobytes()
    proc = producer(raw, chunk=65536)
    events = []
    src = open_source(stdin_cfg(queue_s=0.5), 32000, on_event=lambda k, d: events.append((k, d)))
    src._stream = proc.stdout
    src.start()
    proc.wait(timeout=10)
    time.sleep(0.5)  # consumer stalled while the whole stream arrived
    blocks = collect(src)
    st = src.stats()
    delivered = sum(len(b.samples) for b in blocks)
    assert st["queue_drops"] > 0
    assert delivered + st["dropped_samples"] == 3 * SR
    overflow = [d for k, d in events if k == "overflow"]
    assert overflow and overflow[0]["queue_drops"] > 0


def test_backpressure_mode_loses_nothing():
    x = signal_(SR * 3)
    raw = (x * 32767).astype("<i2").tobytes()
    proc = producer(raw, chunk=65536)
    src = open_source(stdin_cfg(queue_s=0.5, stdin_backpressure=True), 32000)
    src._stream = proc.stdout
    src.start()
    time.sleep(0.5)
    blocks = collect(src)
    assert sum(len(b.samples) for b in blocks) == 3 * SR
    assert src.stats()["queue_drops"] == 0


def test_sys_stdin_is_the_default_stream(tmp_path):
    """End to end in a child whose stdin is a pipe: the source reads sys.stdin.buffer."""
    code = textwrap.dedent("""
        import sys
        from edge.audio import open_source
        from edge.config import AudioConfig
        src = open_source(AudioConfig(source="stdin", stdin_rate=8000), 32000)
        src.start()
        n = 0
        while not src.finished:
            b = src.read(1.0)
            if b is not None:
                n += len(b.samples)
        print(n)
    """)
    raw = np.zeros(8000 * 2 + 1, "<i2").tobytes()[:-1]  # 2 s plus one odd byte
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", code], input=raw, capture_output=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr.decode()
    assert int(out.stdout.decode().strip()) == 8000 * 2


def test_sonotrap_run_reads_a_pcm_pipeline(tiny_bundle, tmp_path):
    """`producer | sonotrap run --source stdin` end to end: the call in the stream is detected."""
    from tests.support.tiny_model import tone

    sr = 32000
    audio = np.concatenate([tone(1.0, 3.0, sr, amplitude=0.0, seed=1), tone(1200, 1.5, sr, seed=2),
                            tone(1.0, 2.5, sr, amplitude=0.0, seed=3)])
    raw = (audio * 32767).astype("<i2").tobytes()
    feeder = producer(raw, chunk=4001)
    out = subprocess.run(
        [sys.executable, "-m", "edge", "run", "--source", "stdin", "--model", str(tiny_bundle), "--no-mqtt",
         "--state-dir", str(tmp_path / "state"), "--jsonl", "-", "--set", "audio.stdin_format=\"s16le\"",
         "--set", f"audio.stdin_rate={sr}"],
        stdin=feeder.stdout, capture_output=True, text=True, timeout=120, cwd=os.getcwd(),
    )
    feeder.wait(timeout=10)
    assert out.returncode == 0, out.stderr[-2000:]
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    ended = [e for e in events if e["state"] == "ended"]
    assert [e["label"] for e in ended] == ["tone_low"]
    assert 1.5 < ended[0]["duration_s"] <= 1.5 + 2 * 2.0  # the call plus at most a window either side
