"""Hypothesis fuzzing of what an operator or a recorder hands the daemon: config files and
audio file headers. Never a crash, never a hang: a valid result or a one-line SonotrapError,
and nothing written outside the directory the test gives it."""

from __future__ import annotations

import io
import json
import math
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

hypothesis = pytest.importorskip("hypothesis", reason="pip install -e .[dev] (hypothesis)")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edge.audio.filesource import FileSource  # noqa: E402
from edge.config import AudioConfig, Config, load_config  # noqa: E402
from edge.errors import SonotrapError  # noqa: E402
from tests.support.fuzzing import FUZZ, files_under  # noqa: E402


def _known_keys() -> dict[str, list[str]]:
    cfg = Config()
    out = {"": []}
    for name, value in vars(cfg).items():
        if hasattr(value, "__dataclass_fields__"):
            out[name] = list(vars(value))
        else:
            out[""].append(name)
    return out


KEYS = _known_keys()


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON escapes are TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "mic", "file", "stdin", "localhost", "/tmp/x", "a/b", "#", "+", "\x00", "0", "5"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=8), scalars, max_size=3))


@st.composite
def config_docs(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(KEYS[""] + ["unknown_top"]))
        lines.append(f"{key} = {_toml_value(draw(values))}")
    for section in draw(st.lists(st.sampled_from([k for k in KEYS if k] + ["bogus"]), max_size=4, unique=True)):
        lines.append(f"[{section}]")
        names = KEYS.get(section, ["x"]) + ["not_a_key"]
        for key in draw(st.lists(st.sampled_from(names), max_size=5, unique=True)):
            lines.append(f"{key} = {_toml_value(draw(values))}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _load_or_one_line_error(path: Path) -> None:
    t0 = time.monotonic()
    try:
        cfg = load_config(path)
        cfg.validate()
    except SonotrapError as err:
        msg = str(err)
        assert msg and "\n" not in msg and len(msg) < 2000, msg
    else:  # what loads is something the daemon can run with: finite numbers, usable strings
        for name, value in _leaves(cfg):
            if isinstance(value, float):
                assert math.isfinite(value), name
            if isinstance(value, str):
                assert value and "\x00" not in value, name
    assert time.monotonic() - t0 < 1.0


def _leaves(obj, where=""):
    for key, value in vars(obj).items():
        name = f"{where}.{key}" if where else key
        if hasattr(value, "__dataclass_fields__"):
            yield from _leaves(value, name)
        else:
            yield name, value


@FUZZ
@given(doc=config_docs())
def test_fuzzed_config_files_load_or_fail_with_one_line(sandbox, doc) -> None:
    path = sandbox / "config.toml"
    path.write_text(doc, encoding="utf-8")
    before = files_under(sandbox)
    _load_or_one_line_error(path)
    assert files_under(sandbox) == before, "loading a config wrote files"


@FUZZ
@given(raw=st.binary(max_size=400))
def test_arbitrary_bytes_as_a_config_file(sandbox, raw) -> None:
    path = sandbox / "raw.toml"
    path.write_bytes(raw)
    _load_or_one_line_error(path)


def _wav_bytes() -> bytes:
    buf = io.BytesIO()
    t = np.arange(8000) / 16000
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


WAV = _wav_bytes()
HEADER_FIELDS = [(22, "<H"), (24, "<I"), (28, "<I"), (32, "<H"), (34, "<H"), (40, "<I"), (4, "<I"), (16, "<I")]


@st.composite
def damaged_wavs(draw) -> bytes:
    data = bytearray(WAV)
    for offset, fmt in draw(st.lists(st.sampled_from(HEADER_FIELDS), min_size=1, max_size=4)):
        bits = struct.calcsize(fmt) * 8
        top = 2**bits - 1
        value = draw(st.one_of(st.integers(0, top), st.sampled_from([0, 1, top, 44100 & top, 1_000_000 & top])))
        data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    for _ in range(draw(st.integers(0, 3))):  # plus a few random bytes anywhere in the first 64
        pos = draw(st.integers(0, 63))
        data[pos] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return bytes(data[:cut] if cut is not None else data)


@FUZZ
@given(blob=damaged_wavs())
def test_damaged_audio_headers_give_audio_or_one_clear_error(sandbox, blob) -> None:
    work = sandbox / "audio"
    work.mkdir(exist_ok=True)
    path = work / "in.wav"
    path.write_bytes(blob)
    before = files_under(sandbox)
    cfg = AudioConfig(source="file", file=str(path), realtime=False, block_s=0.1)
    src = FileSource(cfg)
    t0 = time.monotonic()
    frames = 0
    try:
        src.start()
        while not src.finished and time.monotonic() - t0 < 5:
            block = src.read(0)
            if block is not None:
                frames += len(block.samples)
                assert np.isfinite(block.samples).all() or block.samples.dtype == np.float32
    except SonotrapError as err:
        assert "\n" not in str(err) and str(path) in str(err), str(err)
    finally:
        src.stop()
    assert time.monotonic() - t0 < 5, "reading a damaged header took too long"
    assert frames <= 8000 * 64  # never more audio than bytes could hold
    assert files_under(sandbox) == before
    os.unlink(path)
