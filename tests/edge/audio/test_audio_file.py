"""FileSource with real files written by libsndfile: pacing, looping, channels, damaged files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.audio import AudioBlock, open_source
from edge.config import AudioConfig
from edge.errors import SonotrapError

SR = 16000


def ramp(seconds: float, sr: int = SR) -> np.ndarray:
    """Distinct, exactly representable samples so order and identity can be checked."""
    n = int(seconds * sr)
    return (((np.arange(n) % 1000) - 500) / 1024.0).astype(np.float32)


def drain(src, limit_s: float = 30.0) -> list[AudioBlock]:
    blocks, deadline = [], time.monotonic() + limit_s
    while not src.finished and time.monotonic() < deadline:
        b = src.read(0.5)
        if b is not None:
            blocks.append(b)
    return blocks


def file_cfg(path: Path, **kw) -> AudioConfig:
    cfg = AudioConfig(source="file", file=str(path), block_s=0.1, **kw)
    cfg.validate()
    return cfg


def assert_contiguous(blocks: list[AudioBlock]) -> None:
    for a, b in zip(blocks, blocks[1:], strict=False):
        assert b.start_time == pytest.approx(a.end_time, abs=1e-6)


def test_fast_replay_delivers_every_sample_in_order(tmp_path):
    x = ramp(3.0)
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    src = open_source(file_cfg(tmp_path / "a.wav", realtime=False), 32000)
    t0 = time.time()
    src.start()
    assert src.sample_rate == SR  # the file's own rate: the frontend resamples windows
    blocks = drain(src)
    assert time.time() - t0 < 1.0
    got = np.concatenate([b.samples for b in blocks])
    np.testing.assert_array_equal(got, x)
    assert all(b.samples.dtype == np.float32 and b.samples.ndim == 1 for b in blocks)
    assert len(blocks[0].samples) == SR // 10
    assert blocks[0].start_time == pytest.approx(t0, abs=0.5)
    assert_contiguous(blocks)
    assert src.finished and src.read(0.1) is None
    assert src.stats()["state"] == "finished"


def test_realtime_replay_is_paced_by_the_wall_clock(tmp_path):
    sf.write(tmp_path / "a.flac", ramp(1.5), SR)
    src = open_source(file_cfg(tmp_path / "a.flac", realtime=True), 32000)
    src.start()
    t0 = time.monotonic()
    blocks = drain(src)
    elapsed = time.monotonic() - t0
    assert 1.35 < elapsed < 2.5
    # each block is handed out when its last sample would have arrived from a microphone
    for i, b in enumerate(blocks):
        due = (i + 1) * 0.1
        assert b.received - t0 == pytest.approx(due, abs=0.15)
    assert sum(len(b.samples) for b in blocks) == int(1.5 * SR)


def test_realtime_read_times_out_with_none(tmp_path):
    sf.write(tmp_path / "a.wav", ramp(2.0), SR)
    cfg = file_cfg(tmp_path / "a.wav", realtime=True)
    cfg.block_s = 1.0
    src = open_source(cfg, 32000)
    src.start()
    t0 = time.monotonic()
    assert src.read(0.2) is None  # the first block is due after 1 s
    assert 0.15 < time.monotonic() - t0 < 0.5
    assert not src.finished
    src.stop()


def test_loop_repeats_the_file_with_contiguous_timestamps(tmp_path):
    x = ramp(0.35)
    sf.write(tmp_path / "short.wav", x, SR, subtype="FLOAT")
    src = open_source(file_cfg(tmp_path / "short.wav", realtime=False, loop=True), 32000)
    src.start()
    blocks = [src.read(1.0) for _ in range(12)]
    assert not src.finished
    got = np.concatenate([b.samples for b in blocks])
    np.testing.assert_array_equal(got[: 3 * len(x)], np.tile(x, 3))
    assert_contiguous(blocks)
    src.stop()


@pytest.mark.parametrize("channel", [0, 1])
def test_stereo_channel_select(tmp_path, channel):
    left, right = ramp(0.5), -ramp(0.5) * 0.5
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), SR, subtype="FLOAT")
    src = open_source(file_cfg(tmp_path / "st.wav", realtime=False, channels=2, channel=channel), 32000)
    src.start()
    got = np.concatenate([b.samples for b in drain(src)])
    np.testing.assert_array_equal(got, (left, right)[channel])


def test_channel_beyond_the_file_is_a_clear_error(tmp_path):
    sf.write(tmp_path / "mono.wav", ramp(0.2), SR)
    src = open_source(file_cfg(tmp_path / "mono.wav", channels=2, channel=1), 32000)
    with pytest.raises(SonotrapError, match=r"mono.wav has 1 channel.*audio.channel = 1"):
        src.start()


def truncate(src: Path, dst: Path, keep: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_truncated_file_delivers_what_is_readable_then_names_the_file(tmp_path, fmt):
    x = ramp(3.0)
    full = tmp_path / f"full.{fmt.lower()}"
    sf.write(full, x, SR, format=fmt, subtype="PCM_16")
    bad = truncate(full, tmp_path / f"cut.{fmt.lower()}", 0.5)
    events = []
    src = open_source(file_cfg(bad, realtime=False), 32000, on_event=lambda k, d: events.append((k, d)))
    src.start()
    blocks = []
    with pytest.raises(SonotrapError) as info:
        for _ in range(1000):
            b = src.read(0.5)
            if b is not None:
                blocks.append(b)
    msg = str(info.value)
    assert str(bad) in msg and "truncated or corrupt" in msg and "\n" not in msg
    got = np.concatenate([b.samples for b in blocks])
    assert 0.3 * len(x) < len(got) < 0.6 * len(x)  # about half was readable and was delivered
    np.testing.assert_allclose(got, x[: len(got)], atol=1 / 32768 + 1e-6)
    assert events and events[-1][0] == "audio_error" and events[-1][1]["fatal"]
    assert src.finished and src.stats()["state"] == "error"


def test_garbage_and_missing_files_fail_at_start(tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk" * 20)
    with pytest.raises(SonotrapError, match=r"junk.wav cannot be read"):
        open_source(file_cfg(junk), 32000).start()
    with pytest.raises(SonotrapError, match=r"nope.wav does not exist"):
        open_source(file_cfg(tmp_path / "nope.wav"), 32000).start()


def test_silence_watchdog_on_a_silent_file(tmp_path):
    x = np.concatenate([np.zeros(SR * 2, np.float32), ramp(0.5)])
    sf.write(tmp_path / "quiet.wav", x, SR, subtype="FLOAT")
    events = []
    cfg = file_cfg(tmp_path / "quiet.wav", realtime=False, silence_timeout_s=1.5)
    src = open_source(cfg, 32000, on_event=lambda k, d: events.append((k, d)))
    src.start()
    silent_seen = 0.0
    while not src.finished:
        if src.read(0.5) is not None:
            silent_seen = max(silent_seen, src.stats()["silent_for_s"])
    assert silent_seen == pytest.approx(2.0, abs=0.11)
    assert [k for k, _ in events] == ["silence", "silence_ended"]
    assert events[0][1]["silent_for_s"] >= 1.5
