"""scripts/demo (what `make demo` runs): broker + daemon + live feed, stopped by DURATION and by Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.support.daemon_helpers import LOW, REPO, write_tones

HAS_MOSQUITTO = bool(shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto"))


def _start_demo(env: dict[str, str]) -> subprocess.Popen:
    env.setdefault("VENV", sys.prefix)  # the interpreter running the suite (a clone's .venv under make test)
    # SIGINT at its default, as in a terminal: a shell started with SIGINT ignored (e.g. from a
    # background job, as a CI runner may start the suite) can never trap it.
    return subprocess.Popen([str(REPO / "scripts" / "demo")], cwd=REPO, env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_leftovers(proc: subprocess.Popen, tmp_path) -> None:
    """After a failure, stop the script and its children (each in its own session; the daemon's
    and broker's arguments name tmp_path, the feed's the port), so a looping daemon does not
    load the machine for the rest of the suite."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-KILL", "-f", str(tmp_path)], check=False)
    conf = next(tmp_path.glob("sonotrap-demo.*/mosquitto.conf"), None)
    port = conf.read_text().split()[1] if conf else None
    if port:
        subprocess.run(["pkill", "-KILL", "-f", f"demo_feed.py {port}"], check=False)


@pytest.mark.skipif(not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")), reason="needs mosquitto")
def test_demo_shows_live_detections_and_stops_cleanly(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "rec.wav", [(None, 2.5), (LOW, 1.5), (None, 2)])
    env = dict(os.environ, MODEL=str(tiny_bundle), SOURCE=str(wav), DURATION="30", TMPDIR=str(tmp_path))
    env.pop("NOTIFY_SOCKET", None)
    proc = _start_demo(env)
    try:
        out, _ = proc.communicate(timeout=60)  # the recording (6 s) ends before DURATION
    finally:
        _kill_leftovers(proc, tmp_path)
    assert proc.returncode == 0, out
    assert "mosquitto on 127.0.0.1:" in out and "DETECTION  tone low  [tone_low]" in out, out
    assert "status     offline (shutdown)" in out and "demo: the recording ended" in out
    assert not list(tmp_path.glob("sonotrap-demo.*")), "demo state dir not cleaned up"


@pytest.mark.skipif(not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")), reason="needs mosquitto")
def test_demo_ctrl_c_stops_everything(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "rec.wav", [(LOW, 4)])
    env = dict(os.environ, MODEL=str(tiny_bundle), SOURCE=str(wav), LOOP="1", TMPDIR=str(tmp_path))
    env.pop("NOTIFY_SOCKET", None)
    proc = _start_demo(env)
    try:
        time.sleep(8)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        out, _ = proc.communicate(timeout=30)
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    finally:
        _kill_leftovers(proc, tmp_path)
    assert str(tmp_path) not in ps, "a demo process survived Ctrl-C"
    assert proc.returncode == 0, out
    assert "demo: stopping" in out and "status     offline (shutdown)" in out, out
    assert "DETECTION  tone low" in out  # the open event was flushed at shutdown and delivered


def _demo_env(tmp_path, model, wav, **extra) -> dict[str, str]:
    env = dict(os.environ, MODEL=str(model), SOURCE=str(wav), TMPDIR=str(tmp_path), **extra)
    env.pop("NOTIFY_SOCKET", None)
    return env


@pytest.mark.skipif(not HAS_MOSQUITTO, reason="needs mosquitto")
def test_demo_prints_the_first_status_once(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "rec.wav", [(None, 2.5), (LOW, 1.5), (None, 2)])
    proc = _start_demo(_demo_env(tmp_path, tiny_bundle, wav, DURATION="30"))
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        _kill_leftovers(proc, tmp_path)
    assert proc.returncode == 0, out
    online = [line for line in out.splitlines() if "status     online" in line]
    assert len(online) == 1, out  # the 6-s recording ends before the next periodic status (10 s)


@pytest.mark.skipif(not HAS_MOSQUITTO, reason="needs mosquitto")
def test_demo_prints_a_bad_file_error_once(tmp_path, tiny_bundle):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    proc = _start_demo(_demo_env(tmp_path, tiny_bundle, bad, DURATION="30"))
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        _kill_leftovers(proc, tmp_path)
    assert proc.returncode == 2, out
    errors = [line for line in out.splitlines() if "cannot be read" in line]
    assert len(errors) == 1, out
    assert "demo: the daemon exited with status 2" in out


def test_demo_without_mosquitto_uses_the_embedded_amqtt_broker(tmp_path, tiny_bundle):
    """BROKER=amqtt is what a machine without Mosquitto gets: the embedded broker carries detections."""
    pytest.importorskip("amqtt", reason="the 'demo' extra (amqtt) is not installed")
    if not os.path.exists(os.path.join(sys.prefix, "bin", "amqtt")):
        pytest.skip("no amqtt executable in this environment")
    wav = write_tones(tmp_path / "rec.wav", [(None, 2.5), (LOW, 1.5), (None, 2)])
    proc = _start_demo(_demo_env(tmp_path, tiny_bundle, wav, DURATION="40", BROKER="amqtt"))
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        _kill_leftovers(proc, tmp_path)
    assert proc.returncode == 0, out
    assert "amqtt (embedded) on 127.0.0.1:" in out, out
    assert "DETECTION  tone low  [tone_low]" in out, out
    assert "status     offline (shutdown)" in out
