"""The shared helpers: one JSON cleaner, one device id rule, one file hash."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from edge.util.hashing import sha256_file
from edge.util.identity import device_id
from edge.util.jsonio import json_safe, read_json, write_json_atomic


def test_json_safe_makes_strict_json():
    value = {"nan": math.nan, "inf": -math.inf, "np": np.float32(0.5), "arr": np.arange(3), 1: (1, "a"), "p": object}
    out = json_safe(value)
    json.dumps(out, allow_nan=False)  # raises on NaN/inf
    assert out["nan"] is None and out["inf"] is None and out["np"] == 0.5
    assert out["arr"] == [0, 1, 2] and out["1"] == [1, "a"] and isinstance(out["p"], str)


def test_json_safe_cuts_long_and_deep_values():
    out = json_safe({"a": list(range(5)), "b": np.zeros((4, 4)), "c": {"d": {"e": 1}}}, max_items=3, max_depth=1)
    assert out == {"a": "<5 items>", "b": "<array (4, 4)>", "c": {"d": "..."}}


def test_device_id_is_one_topic_level(monkeypatch):
    assert device_id("recorder-01") == "recorder-01"
    assert device_id("a/b#c+d e") == "a_b_c_d_e"
    monkeypatch.setattr("socket.gethostname", lambda: "pi-garden")
    assert device_id(None) == "pi-garden"


def test_sha256_file_and_json_files(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc" * 1000)
    assert sha256_file(f) == hashlib.sha256(b"abc" * 1000).hexdigest()
    write_json_atomic(tmp_path / "s.json", {"a": 1})
    assert read_json(tmp_path / "s.json") == {"a": 1}
    (tmp_path / "bad.json").write_text("[1]")
    assert read_json(tmp_path / "bad.json") is None and read_json(tmp_path / "missing.json") is None
