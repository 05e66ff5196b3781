"""`sonotrap run` as a real process: SIGTERM clean shutdown, SIGHUP model hot swap."""

from __future__ import annotations

import json
import os
import signal

from tests.support.daemon_helpers import LOW, read_jsonl, sonotrap, write_tones
from tests.support.tiny_model import make_tiny_bundle
from tests.support.waiting import wait_for


def start(tmp_path, wav, model, *extra):
    return sonotrap(
        "run", "--file", str(wav), "--realtime", "--loop", "--model", str(model), "--no-mqtt",
        "--state-dir", str(tmp_path / "state"), "--jsonl", str(tmp_path / "det.jsonl"),
        "--hops-jsonl", str(tmp_path / "hops.jsonl"), "--device-id", "sig-test", *extra,
    )


def test_sigterm_flushes_the_open_event_and_exits_0(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "t.wav", [(LOW, 30)])  # a call that is still going on at SIGTERM
    proc = start(tmp_path, wav, tiny_bundle)
    try:
        wait_for(lambda: len(read_jsonl(tmp_path / "hops.jsonl")) >= 3, timeout=30)
        assert read_jsonl(tmp_path / "det.jsonl") == []  # the event has not ended yet
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    (ev,) = read_jsonl(tmp_path / "det.jsonl")
    hops = read_jsonl(tmp_path / "hops.jsonl")
    assert ev["label"] == "tone_low" and ev["state"] == "ended" and ev["hops"] == len(hops)
    assert abs(ev["end_epoch"] - hops[-1]["t_end"]) < 1e-3
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["state"] == "stopped" and status["detections"] == 1
    assert "Traceback" not in err


def test_sighup_swaps_model_mid_stream_without_a_hop_gap(tmp_path):
    v1 = make_tiny_bundle(tmp_path / "models" / "v1", version="1.0.0")
    v2 = make_tiny_bundle(tmp_path / "models" / "v2", version="2.0.0")
    current = tmp_path / "models" / "current"
    current.symlink_to(v1)
    wav = write_tones(tmp_path / "t.wav", [(None, 2), (LOW, 2)])
    proc = start(tmp_path, wav, current)
    try:
        wait_for(lambda: len(read_jsonl(tmp_path / "hops.jsonl")) >= 3, timeout=30)
        tmp_link = tmp_path / "models" / "current.tmp"
        tmp_link.symlink_to(v2)
        os.replace(tmp_link, current)  # atomic switch, as the updater does
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any(h["model_version"] == "2.0.0" for h in read_jsonl(tmp_path / "hops.jsonl")), timeout=20)
        wait_for(lambda: json.loads((tmp_path / "state" / "status.json").read_text())["model"]["version"] == "2.0.0")
        # A broken bundle: the reload fails, the running model stays.
        broken = tmp_path / "models" / "broken"
        broken.mkdir()
        (broken / "manifest.json").write_text("{not json")
        tmp_link.symlink_to(broken)
        os.replace(tmp_link, current)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: json.loads((tmp_path / "state" / "status.json").read_text()).get("last_error"), timeout=20)
        n = len(read_jsonl(tmp_path / "hops.jsonl"))
        wait_for(lambda: len(read_jsonl(tmp_path / "hops.jsonl")) >= n + 2, timeout=20)  # still running
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    hops = read_jsonl(tmp_path / "hops.jsonl")
    ks = [h["hop"] for h in hops]
    assert ks == list(range(ks[0], ks[0] + len(ks))), "a hop was skipped or repeated across the swap"
    versions = [h["model_version"] for h in hops]
    switch = versions.index("2.0.0")
    assert set(versions[:switch]) == {"1.0.0"} and set(versions[switch:]) == {"2.0.0"}
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["model"]["version"] == "2.0.0" and "manifest" in status["last_error"]
    assert "model reload failed" in err and "model switched" in err
