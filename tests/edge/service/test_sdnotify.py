"""sd_notify as systemd sees it: datagrams captured on a real unix socket set as NOTIFY_SOCKET.

The daemon (real process, real file source in real time) must send READY=1 after start-up,
WATCHDOG=1 at half the WATCHDOG_USEC period, STOPPING=1 on SIGTERM -- and no WATCHDOG=1 at all
while its processing loop is stuck, because that is what makes systemd restart a wedged
recorder.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.service.daemon import Daemon
from edge.service.sdnotify import Notifier
from tests.support.daemon_helpers import LOW, file_config, read_jsonl, write_tones
from tests.support.paths import REPO
from tests.support.process import Spawned
from tests.support.waiting import wait_for


class NotifySocket:
    """What systemd does: a bound AF_UNIX datagram socket; records (monotonic time, message)."""

    def __init__(self, path: Path | str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.address = str(path) if not str(path).startswith("\0") else "@" + str(path)[1:]
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def times(self, line: str) -> list[float]:
        return [t for t, m in self.messages if line in m.splitlines()]

    def first(self, line: str) -> int:
        return next(i for i, (_, m) in enumerate(self.messages) if line in m.splitlines())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


def test_notifier_speaks_the_protocol_and_is_a_noop_without_systemd(tmp_path, notify_socket, monkeypatch):
    n = Notifier(notify_socket.address)
    assert n.enabled
    assert n.ready("listening") and n.watchdog() and n.status("x: y") and n.stopping()
    wait_for(lambda: len(notify_socket.messages) == 4, timeout=5)
    assert [m for _, m in notify_socket.messages] == ["READY=1\nSTATUS=listening", "WATCHDOG=1", "STATUS=x: y",
                                                      "STOPPING=1"]
    # abstract namespace sockets ("@name"), as systemd uses in containers
    abstract = NotifySocket(f"\0sonotrap-test-{os.getpid()}")
    try:
        assert Notifier(abstract.address).ready()
        wait_for(lambda: abstract.messages, timeout=5)
    finally:
        abstract.close()
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    quiet = Notifier()
    assert not quiet.enabled and not quiet.ready() and not quiet.watchdog()
    # WATCHDOG_USEC -> ping every half period; a WATCHDOG_PID for another process disables it
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert quiet.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert quiet.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert quiet.watchdog_interval() == 15.0
    # systemd gone: never an exception
    notify_socket.close()
    assert n.watchdog() is False


def test_daemon_ready_watchdog_rate_reload_and_stopping(tmp_path, notify_socket, tiny_bundle):
    wav = write_tones(tmp_path / "t.wav", [(None, 1.0), (LOW, 1.0)])
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC="1000000", PYTHONUNBUFFERED="1")
    env.pop("WATCHDOG_PID", None)
    proc = Spawned(
        [sys.executable, "-m", "edge", "run", "--file", str(wav), "--realtime", "--loop", "--no-mqtt",
         "--model", str(tiny_bundle), "--state-dir", str(tmp_path / "state"), "--hop", "0.25",
         "--hops-jsonl", str(tmp_path / "hops.jsonl")],
        cwd=REPO, env=env,
    )
    try:
        wait_for(lambda: len(notify_socket.times("WATCHDOG=1")) >= 8, timeout=40)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: notify_socket.times("RELOADING=1"), timeout=20)
        reload_at = notify_socket.times("RELOADING=1")[0]
        wait_for(lambda: [t for t in notify_socket.times("READY=1") if t > reload_at], timeout=20)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    msgs = [m for _, m in notify_socket.messages]
    # READY once start-up is done (model loaded, audio flowing), before the first watchdog ping
    ready = notify_socket.first("READY=1")
    assert ready < notify_socket.first("WATCHDOG=1")
    assert any(line.startswith("STATUS=") for line in msgs[ready].splitlines()), msgs[ready]
    assert read_jsonl(tmp_path / "hops.jsonl"), "hops were processed"
    # WATCHDOG every WATCHDOG_USEC/2 = 0.5 s (never late enough to trip a 1-s watchdog)
    pings = notify_socket.times("WATCHDOG=1")
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert 0.4 <= sum(gaps) / len(gaps) <= 0.8, gaps
    assert max(gaps) < 1.0, gaps
    # STOPPING=1 on SIGTERM, and it is the last word about state
    assert "STOPPING=1" in msgs[-1].splitlines() or any("STOPPING=1" in m for m in msgs[-3:]), msgs[-3:]
    assert notify_socket.times("STOPPING=1")[0] > notify_socket.times("RELOADING=1")[0]


def test_no_watchdog_while_the_processing_loop_is_stalled(tmp_path, notify_socket, tiny_bundle, monkeypatch):
    """A stuck inference (simulated by a 2.5 s sleep inside the hop loop) stops the pings."""
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    wav = write_tones(tmp_path / "t.wav", [(None, 1.0), (LOW, 1.0)])
    cfg = file_config(tmp_path, wav, realtime=True, loop=True)
    cfg.model.bundle = str(tiny_bundle)
    cfg.model.hop_s = 0.25
    daemon = Daemon(cfg, notifier=Notifier(notify_socket.address), install_signals=False)
    stall = {"armed": False, "window": None}

    def on_hops(_results):
        if stall["armed"]:
            stall["armed"] = False
            start = time.monotonic()
            time.sleep(2.5)  # the classifier hangs
            stall["window"] = (start, time.monotonic())

    daemon.on_hops = on_hops
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        wait_for(lambda: len(notify_socket.times("WATCHDOG=1")) >= 4, timeout=40)
        stall["armed"] = True
        wait_for(lambda: stall["window"] is not None, timeout=20)
        end = stall["window"][1]
        wait_for(lambda: len([t for t in notify_socket.times("WATCHDOG=1") if t > end]) >= 3, timeout=20)
    finally:
        daemon.request_stop()
        runner.join(30)
    assert not runner.is_alive()
    start, end = stall["window"]
    pings = notify_socket.times("WATCHDOG=1")
    during = [t for t in pings if start + 0.05 < t < end - 0.05]
    assert during == [], f"WATCHDOG=1 sent while the pipeline was stuck: {during}"
    before = max(t for t in pings if t <= start + 0.05)
    after = min(t for t in pings if t >= end - 0.05)
    assert after - before > 2.0, "systemd (WatchdogSec=1s here) would have seen the stall"
    later = [t for t in pings if t > end]
    gaps = [b - a for a, b in zip(later, later[1:], strict=False)]
    assert gaps and max(gaps) < 1.0, f"pings resume at the normal rate after the stall: {gaps}"
    assert notify_socket.times("STOPPING=1")


def _run_on_journal_stream(tmp_path: Path, bundle: Path, *extra: str) -> list[str]:
    """`sonotrap run` with stderr on a pipe announced as the journal stream, like systemd does."""
    tmp_path.mkdir()
    wav = write_tones(tmp_path / "t.wav", [(None, 1.0), (LOW, 1.0), (None, 1.0)])
    data = wav.read_bytes()
    (tmp_path / "trunc.wav").write_bytes(data[: len(data) * 2 // 3])  # ends with an error
    r, w = os.pipe()
    st = os.fstat(w)
    env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--file", str(tmp_path / "trunc.wav"), "--fast", "--no-mqtt",
         "--model", str(bundle), "--state-dir", str(tmp_path / "state"), *extra],
        stderr=w, stdout=subprocess.DEVNULL, cwd=REPO, env=env)
    os.close(w)
    with os.fdopen(r) as fh:
        lines = fh.read().splitlines()
    proc.wait(60)
    return lines


def test_journald_priorities_and_level_from_config(tmp_path, tiny_bundle):
    lines = _run_on_journal_stream(tmp_path / "a", tiny_bundle)
    assert lines and all(line[:3] in ("<7>", "<6>", "<4>", "<3>", "<2>") for line in lines), lines
    assert any(line.startswith("<6>sonotrap.daemon: running model") for line in lines)
    assert any(line.startswith("<3>") and "truncated" in line for line in lines)
    assert not any(line[3:7].isdigit() for line in lines), "no timestamps: journald adds its own"
    quiet = _run_on_journal_stream(tmp_path / "b", tiny_bundle, "--set", 'log_level="ERROR"')
    assert quiet and all(line.startswith("<3>") for line in quiet), quiet


def test_fatal_error_line_has_error_priority_in_the_journal(tmp_path):
    """The last line of a daemon that cannot start must pass `journalctl -p warning`."""
    r, w = os.pipe()
    st = os.fstat(w)
    env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--model", str(tmp_path / "missing"), "--no-mqtt",
         "--state-dir", str(tmp_path / "state")],
        stderr=w, stdout=subprocess.DEVNULL, cwd=REPO, env=env)
    os.close(w)
    with os.fdopen(r) as fh:
        lines = fh.read().splitlines()
    assert proc.wait(60) == 2
    assert lines[-1].startswith("<3>error: ") and "missing" in lines[-1], lines
