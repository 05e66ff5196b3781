"""Daemon control for the updater: hot-swap the running model and watch its health.

The procedure only needs three things from a daemon -- is it running, swap the model in,
its status -- so it talks to a :class:`DaemonHandle`; :class:`SignalDaemon` does that from
another process (SIGHUP + ``status.json``, read through the shared contract of
:mod:`edge.service.status`), :class:`InProcessDaemon` inside the daemon (for the MQTT command,
through :class:`edge.contracts.DaemonControl`). Tests inject a stand-in process instead of
monkeypatching the procedure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from edge.contracts import DaemonControl
from edge.errors import SonotrapError
from edge.models.bundle import load_bundle
from edge.service.status import Health, read_health, read_status


class DaemonHandle(Protocol):
    """What the update procedure needs from the daemon it updates (in or out of process)."""

    def running(self) -> bool: ...

    def swap(self) -> None:
        """Ask the daemon to load the model ``current`` now names (between two hops)."""

    def status(self) -> dict: ...


class SignalDaemon:
    """Out-of-process daemon control: SIGHUP to the running daemon and its status.json.

    The pid comes from ``<state_dir>/status.json`` ("pid") or systemd's MainPID of
    sonotrap.service, in that order; each candidate must be alive.
    """

    def __init__(self, state_dir: str | Path, unit: str = "sonotrap.service") -> None:
        self.state_dir = Path(state_dir)
        self.unit = unit

    def pid(self) -> int | None:
        candidates: list[int] = []
        pid = read_health(self.state_dir).pid
        if pid is not None:
            candidates.append(pid)
        if shutil.which("systemctl"):
            with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
                out = subprocess.run(
                    ["systemctl", "show", "-p", "MainPID", "--value", self.unit],
                    capture_output=True, text=True, timeout=5,
                ).stdout.strip()
                if out and out != "0":
                    candidates.append(int(out))
        for pid in candidates:
            if pid > 1 and _alive(pid):
                return pid
        return None

    def running(self) -> bool:
        return self.pid() is not None

    def swap(self) -> None:
        pid = self.pid()
        if pid is None:
            raise SonotrapError("the sonotrap daemon is not running; nothing to hot-swap")
        os.kill(pid, signal.SIGHUP)

    def status(self) -> dict:
        return read_status(self.state_dir)


class InProcessDaemon:
    """In-process control for the MQTT command: ``Daemon.request_model_swap`` + ``Daemon.status``."""

    def __init__(self, daemon: DaemonControl, model_path: str | Path) -> None:
        self.daemon = daemon
        self.model_path = Path(model_path)

    def running(self) -> bool:
        return True

    def swap(self) -> None:
        # request_model_swap self-tests the session itself; resolve() names the versioned directory
        self.daemon.request_model_swap(load_bundle(self.model_path.resolve(), self_test=False))

    def status(self) -> dict:
        return self.daemon.status()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but another user's: not ours to signal
        return False


def wait_healthy(
    status: Callable[[], dict], version: str, since_hop: float | None, timeout_s: float, poll_s: float = 0.25
) -> tuple[bool, str]:
    """Wait until the daemon reports ``version`` and a hop newer than ``since_hop`` (twice)."""
    deadline = time.monotonic() + timeout_s
    seen_version = None
    advanced = 0
    last = since_hop
    while time.monotonic() < deadline:
        health = Health.of(status())
        seen_version, hop = health.model_version, health.last_hop_epoch
        if seen_version == version and hop is not None and (last is None or hop > last):
            advanced += 1
            last = hop
            if advanced >= 2:  # two fresh hops on the new model: it really runs
                return True, ""
        time.sleep(poll_s)
    if seen_version != version:
        return False, f"daemon still reports model {seen_version} after {timeout_s:.0f} s (new model not swapped in)"
    return False, f"daemon runs {version} but processed no new hops within {timeout_s:.0f} s"
