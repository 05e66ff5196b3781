"""`sonotrap check` against real parts: a real Mosquitto, real files, the real model."""

from __future__ import annotations

from tests.support.broker import free_port
from tests.support.daemon_helpers import LOW, run_cli, write_tones


def check(tmp_path, *args):
    return run_cli("check", "--state-dir", str(tmp_path / "state"), "--timeout", "3", *args)


def test_all_good_with_file_and_real_broker(tmp_path, tiny_bundle, mosquitto):
    wav = write_tones(tmp_path / "t.wav", [(LOW, 3)])
    r = check(tmp_path, "--model", str(tiny_bundle), "--file", str(wav), "--broker", f"127.0.0.1:{mosquitto.port}")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "ok      model    tiny-band-detector 1.0.0" in out and "self-test passed" in out
    assert "ok      audio    file" in out and "32000 Hz" in out
    assert f"ok      mqtt     broker 127.0.0.1:{mosquitto.port} accepts MQTT" in out
    assert "sonotrap run would: read file" in out and f"mqtt://127.0.0.1:{mosquitto.port}/sonotrap/" in out
    assert "all checks passed." in out
    assert "sonotrap-check" in mosquitto.log()  # a real MQTT CONNECT reached the broker


def test_problems_are_listed_one_line_each_and_exit_1(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "t.wav", [(LOW, 3)])
    port = free_port()  # nothing listens here
    r = check(tmp_path, "--model", str(tmp_path / "missing-model"), "--file", str(wav),
              "--broker", f"127.0.0.1:{port}")
    assert r.returncode == 1
    problems = [line for line in r.stdout.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 2
    assert problems[0].startswith("PROBLEM model") and "missing-model" in problems[0]
    assert problems[1].startswith("PROBLEM mqtt") and "unreachable" in problems[1]
    assert "2 problem(s) found." in r.stdout and "Traceback" not in r.stderr


def test_config_errors_and_unknown_labels(tmp_path, tiny_bundle):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[detector]\ninclude = ['tone_low', 'robin']\n")
    r = check(tmp_path, "--config", str(cfg), "--model", str(tiny_bundle), "--skip-audio", "--no-mqtt")
    assert r.returncode == 1
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("PROBLEM")]
    assert "detector.include" in line and "'robin'" in line and "tone_low, tone_high" in line
    cfg.write_text("[model]\nhop = 0.5\n")
    r = check(tmp_path, "--config", str(cfg), "--model", str(tiny_bundle))
    assert r.returncode == 1 and "PROBLEM config" in r.stdout and "model.hop is not a known setting" in r.stdout


def test_missing_audio_device_is_a_problem(tmp_path, tiny_bundle):
    r = check(tmp_path, "--model", str(tiny_bundle), "--source", "mic", "--device", "no-such-microphone-xyz",
              "--no-mqtt")
    assert r.returncode == 1
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("PROBLEM")]
    assert line.startswith("PROBLEM audio") and "no-such-microphone-xyz" in line
