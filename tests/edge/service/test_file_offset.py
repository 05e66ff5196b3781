"""Detections of a replayed file say where the call is in the file, besides wall-clock times."""

from __future__ import annotations

import json

from edge.mqtt.payloads import MessageContext, detection_payload
from tests.support.daemon_helpers import HIGH, LOW, run_cli, write_tones


def test_jsonl_events_carry_the_offset_in_the_file(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "dawn.wav", [(None, 3), (LOW, 2), (None, 4), (HIGH, 2), (None, 3)])
    r = run_cli("run", "--file", str(wav), "--fast", "--no-mqtt", "--model", str(tiny_bundle),
                "--state-dir", str(tmp_path / "state"), "--jsonl", "-")
    assert r.returncode == 0, r.stderr
    low, high = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert low["offset"]["file"] == "dawn.wav" and high["offset"]["file"] == "dawn.wav"
    # the call at 3-5 s / 9-11 s lies inside each event's span; spans are at most a window wider
    assert low["offset"]["start_s"] <= 3.0 + 0.5 and low["offset"]["end_s"] >= 5.0 - 0.5
    assert low["offset"]["start_s"] >= 3.0 - 2.0 and low["offset"]["end_s"] <= 5.0 + 2.0
    assert high["offset"]["start_s"] <= 9.5 and high["offset"]["end_s"] >= 10.5 and high["offset"]["start_s"] >= 7.0
    span = high["offset"]["end_s"] - high["offset"]["start_s"]
    assert abs(span - high["duration_s"]) < 1e-3  # offsets and wall-clock times describe the same span
    gap_wall = high["start_epoch"] - low["start_epoch"]
    assert abs(gap_wall - (high["offset"]["start_s"] - low["offset"]["start_s"])) < 0.002


def test_live_audio_payloads_have_no_offset():
    ev = type("E", (), dict(id="x", label="a", name="a", state="ended", start=1.0, end=2.0, peak_score=0.9,
                             mean_score=0.9, hops=1))
    assert "offset" not in detection_payload(ev, MessageContext("d", "m", "1", 0.5, 2.0))
