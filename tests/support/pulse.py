"""A private PulseAudio server with a null sink: a virtual microphone for real-capture tests.

What works here (Debian, running as root, no D-Bus, no sound card):

* Server: ``pulseaudio --daemonize=no --system=false -n -F <script> --exit-idle-time=-1
  --disallow-exit --realtime=no --high-priority=no`` with ``HOME``, ``XDG_RUNTIME_DIR`` and
  ``PULSE_RUNTIME_PATH`` pointing into a temp dir (it only warns about running as root).
  ``-n`` skips default.pa; the script loads just ``module-null-sink`` (float32, mono, 32 kHz
  by default so captured audio equals the played samples up to float rounding) and
  ``module-native-protocol-unix auth-anonymous=1`` (no cookie), and makes the sink's
  ``.monitor`` the default source.
* Clients get :attr:`PulseServer.env`: ``PULSE_SERVER=unix:<socket>`` plus a client.conf with
  ``autospawn = no`` (so a killed server is not silently respawned as the system one). PortAudio's ALSA backend reaches PulseAudio through the
  ``pulse`` ALSA plugin (libasound2-plugins). The ALSA devices ``pulse`` and ``default``
  (the latter routed to pulse by ``/usr/share/alsa/alsa.conf.d/pulse.conf`` when a server is
  reachable) then capture from the default source, i.e. the null sink's monitor.
* PortAudio enumerates devices once, in ``Pa_Initialize`` (at ``import sounddevice``), and
  the pulse plugin reads ``PULSE_SERVER`` when a device is opened. So either run the capture
  in a subprocess started with :attr:`PulseServer.env` after the server is up, or, in-process,
  put :attr:`env` into ``os.environ`` and call ``edge.audio.devices.rescan()`` first.
* A device that appears late (a USB mic enumerating after boot) is simulated with
  :func:`write_asoundrc`: an ALSA pcm of type pulse defined in ``$HOME/.asoundrc``; after a
  PortAudio re-init it is listed by name.
* :meth:`PulseServer.play` writes float32 samples into the sink with ``pacat`` (real time;
  pulse paces it), so the monitor carries exactly that audio.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

SINK = "sonotrap_test"


def available() -> str | None:
    """None when the PulseAudio tools are installed, else the reason to skip."""
    for tool in ("pulseaudio", "pactl", "pacat"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/install-system-deps installs pulseaudio)"
    return None


@dataclass
class PulseServer:
    root: Path
    rate: int = 32000
    channels: int = 1
    sink: str = SINK
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def monitor(self) -> str:
        return f"{self.sink}.monitor"

    @property
    def socket(self) -> Path:
        return self.root / "runtime" / "pulse" / "native"

    def start(self, timeout: float = 10.0) -> PulseServer:
        runtime = self.root / "runtime"
        (runtime / "pulse").mkdir(parents=True, exist_ok=True)
        runtime.chmod(0o700)
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        script = self.root / "null.pa"
        script.write_text(
            f"load-module module-null-sink sink_name={self.sink} format=float32le "
            f"rate={self.rate} channels={self.channels}\n"
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}\n"
            f"set-default-sink {self.sink}\n"
            f"set-default-source {self.monitor}\n"
        )
        client_conf = self.root / "client.conf"
        client_conf.write_text("autospawn = no\n")
        server_env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(runtime),
                          PULSE_RUNTIME_PATH=str(runtime / "pulse"))
        server_env.pop("PULSE_SERVER", None)
        self.env = {"PULSE_SERVER": f"unix:{self.socket}", "PULSE_CLIENTCONFIG": str(client_conf)}
        log = open(self.root / "pulseaudio.log", "ab")
        self.proc = subprocess.Popen(
            ["pulseaudio", "--daemonize=no", "--system=false", "-n", "-F", str(script),
             "--exit-idle-time=-1", "--disallow-exit", "--realtime=no", "--high-priority=no",
             "--log-target=stderr", "--use-pid-file=no"],
            env=server_env, stdout=log, stderr=log, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pulseaudio exited: {self.log_tail()}")
            if self.socket.exists() and self.pactl("info", check=False).returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"pulseaudio did not come up in {timeout} s: {self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (SIGKILL: what a crashed sound server or an unplugged card looks like)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None
        self.socket.unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        return dict(os.environ if base is None else base, **self.env)

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["pactl", *args], env=self.client_env(), capture_output=True, text=True,
                              timeout=10, check=check)

    def play(self, audio: np.ndarray | str | Path, sr: int | None = None, wait: bool = True) -> subprocess.Popen:
        """Play samples (or a sound file) into the null sink in real time via pacat."""
        if not isinstance(audio, np.ndarray):
            import soundfile as sf

            audio, sr = sf.read(str(audio), dtype="float32", always_2d=False)
        if sr is None:
            raise ValueError("play(array) needs sr")
        data = np.asarray(audio, dtype=np.float32)
        channels = 1 if data.ndim == 1 else data.shape[1]
        proc = subprocess.Popen(
            ["pacat", "--playback", f"--device={self.sink}", "--format=float32le", f"--rate={sr}",
             f"--channels={channels}", "--raw", "--latency-msec=20"],
            stdin=subprocess.PIPE, env=self.client_env(), stderr=subprocess.PIPE,
        )
        payload = np.ascontiguousarray(data).tobytes()

        def feed() -> None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(payload)
                proc.stdin.close()
            except (BrokenPipeError, ValueError):
                pass

        if not wait:  # pacat consumes in real time: feed it from a thread
            threading.Thread(target=feed, daemon=True).start()
            return proc
        feed()
        if wait:
            proc.wait(timeout=len(data) / sr + 30)
            if proc.returncode != 0:
                raise RuntimeError(f"pacat failed: {proc.stderr.read().decode(errors='replace') if proc.stderr else ''}")
        return proc

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.root / "pulseaudio.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""


def write_asoundrc(home: Path, pcm_name: str, description: str = "test microphone") -> Path:
    """Define an ALSA capture device ``pcm_name`` (routed to PulseAudio) in ``home/.asoundrc``."""
    path = home / ".asoundrc"
    path.write_text(
        f"pcm.{pcm_name} {{\n  type pulse\n  hint {{ show on description \"{description}\" }}\n}}\n"
    )
    return path


@pytest.fixture(scope="module")
def pulse_server(tmp_path_factory: pytest.TempPathFactory):
    """A running :class:`PulseServer` (null sink ``sonotrap_test``, 32 kHz mono) for a test module."""
    reason = available()
    if reason:
        pytest.skip(reason)
    server = PulseServer(tmp_path_factory.mktemp("pulse")).start()
    yield server
    server.stop()


def use_in_process(server: PulseServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this process's PortAudio at ``server`` (env + PortAudio re-init)."""
    from edge.audio.devices import rescan

    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    rescan()
