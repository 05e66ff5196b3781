"""Bad input to `sonotrap run`: one clear line, non-zero exit where it cannot run, retry where it can."""

from __future__ import annotations

import json
import signal

import pytest

from tests.support.daemon_helpers import LOW, read_jsonl, run_cli, sonotrap, write_tones
from tests.support.waiting import wait_for


def one_error_line(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    return errors[0]


@pytest.fixture
def wav(tmp_path):
    return write_tones(tmp_path / "t.wav", [(LOW, 2.5)])


def run(tmp_path, *args):
    return run_cli("run", "--state-dir", str(tmp_path / "state"), "--no-mqtt", *args)


def test_missing_model(tmp_path, wav):
    r = run(tmp_path, "--file", str(wav), "--model", str(tmp_path / "nope"))
    assert r.returncode == 2 and "nope" in one_error_line(r)


def test_corrupt_model(tmp_path, wav, tiny_bundle):
    (tiny_bundle / "model.onnx").write_bytes(b"garbage")
    r = run(tmp_path, "--file", str(wav), "--model", str(tiny_bundle))
    assert r.returncode == 2 and "sha256" in one_error_line(r)


@pytest.mark.parametrize("text, expect", [
    ("[model\nthreads = 2", "is not valid TOML"),
    ("[model]\nthreads = 'two'", "model.threads"),
    ("[audio]\nsorce = 'mic'", "audio.sorce is not a known setting"),
    ("[model]\nhop_s = -1", "model.hop_s"),
])
def test_corrupt_config(tmp_path, wav, tiny_bundle, text, expect):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    r = run(tmp_path, "--config", str(cfg), "--file", str(wav), "--model", str(tiny_bundle))
    assert r.returncode == 2 and expect in one_error_line(r)


def test_missing_config_file_and_bad_set(tmp_path, wav, tiny_bundle):
    r = run(tmp_path, "--config", str(tmp_path / "none.toml"), "--file", str(wav))
    assert r.returncode == 2 and "does not exist" in one_error_line(r)
    r = run(tmp_path, "--file", str(wav), "--model", str(tiny_bundle), "--set", "detector.min_hops=0")
    assert r.returncode == 2 and "detector.min_hops" in one_error_line(r)


def test_unknown_label_in_config(tmp_path, wav, tiny_bundle):
    r = run(tmp_path, "--file", str(wav), "--model", str(tiny_bundle), "--set", "detector.exclude=['robin']")
    line = one_error_line(r)
    assert r.returncode == 2 and "'robin'" in line and "valid labels: tone_low, tone_high" in line


def test_missing_and_truncated_audio_file(tmp_path, wav, tiny_bundle):
    r = run(tmp_path, "--file", str(tmp_path / "gone.wav"), "--model", str(tiny_bundle))
    assert r.returncode == 2 and "gone.wav does not exist" in one_error_line(r)
    (tmp_path / "junk.wav").write_text("not audio")
    r = run(tmp_path, "--file", str(tmp_path / "junk.wav"), "--model", str(tiny_bundle))
    assert r.returncode == 2 and "junk.wav cannot be read" in one_error_line(r)
    long = write_tones(tmp_path / "long.wav", [(None, 3), (LOW, 2), (None, 5)])
    long.write_bytes(long.read_bytes()[: long.stat().st_size // 2])
    r = run(tmp_path, "--file", str(long), "--fast", "--model", str(tiny_bundle), "--jsonl", str(tmp_path / "d.jsonl"))
    assert r.returncode == 1 and "truncated" in r.stderr and "Traceback" not in r.stderr
    assert [d["label"] for d in read_jsonl(tmp_path / "d.jsonl")] == ["tone_low"]  # what was readable counts


def test_invalid_sample_rate_and_broker_flag(tmp_path, wav, tiny_bundle):
    r = run(tmp_path, "--source", "mic", "--sample-rate", "500", "--model", str(tiny_bundle))
    assert r.returncode == 2 and "audio.sample_rate" in one_error_line(r)
    r = run_cli("run", "--file", str(wav), "--model", str(tiny_bundle), "--broker", "host:port")
    assert r.returncode == 2 and "--broker" in one_error_line(r)


def test_state_dir_not_writable(tmp_path, wav, tiny_bundle):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("run", "--state-dir", str(blocker / "state"), "--no-mqtt", "--file", str(wav), "--model", str(tiny_bundle))
    assert r.returncode == 2 and "--state-dir" in one_error_line(r)


def test_no_audio_device_waits_and_retries_instead_of_exiting(tmp_path, tiny_bundle):
    proc = sonotrap("run", "--source", "mic", "--device", "no-such-microphone-xyz", "--model", str(tiny_bundle),
                    "--no-mqtt", "--state-dir", str(tmp_path / "state"))
    status_file = tmp_path / "state" / "status.json"
    try:
        status = wait_for(lambda: status_file.exists() and json.loads(status_file.read_text()), timeout=30)
        assert status["state"] == "running" and status["hops"] == 0
        assert status["audio"]["state"] == "waiting for device"
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "no-such-microphone-xyz" in err and "Traceback" not in err
