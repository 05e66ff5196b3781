"""Real bundles and a real HTTP update server for the update tests.

``BundleServer`` is a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 serving a directory, with
HTTP Range support (206 / Content-Range), a request log, and fault injection: cut a response
after N bytes (to exercise resume) or stall.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from edge.config import Config, MqttConfig, UpdateConfig
from edge.models.archive import write_archive
from edge.models.signing import generate_keypair, sign_bundle
from edge.models.store import ModelStore
from edge.util.hashing import sha256_file
from tests.support.paths import REPO
from tests.support.tiny_model import make_tiny_bundle


@dataclass
class Keys:
    private: Path
    public_dir: Path  # the device's trusted_keys directory


def make_keys(root: Path, name: str = "fleet") -> Keys:
    pub_dir = root / f"{name}-trusted"
    pub_dir.mkdir(parents=True, exist_ok=True)
    generate_keypair(root / f"{name}.key", pub_dir / f"{name}.pub")
    return Keys(root / f"{name}.key", pub_dir)


@dataclass
class Published:
    version: str
    dir: Path
    archive: Path
    sha256: str
    size: int

    def entry(self, url: str | None = None) -> dict:
        return {"version": self.version, "url": url or self.archive.name, "sha256": self.sha256, "size": self.size}


def publish_bundle(
    work: Path,
    out_dir: Path,
    version: str,
    key: Path | None,
    *,
    bands: dict | None = None,
    mutate=None,
    name: str = "tiny-band-detector",
) -> Published:
    """Build a tiny bundle, optionally break it (``mutate(bundle_dir)``), sign, pack into out_dir."""
    d = make_tiny_bundle(work / f"{name}-{version}-{os.urandom(3).hex()}", version=version, bands=bands, name=name)
    if mutate is not None:
        mutate(d)
    if key is not None:
        sign_bundle(d, key)
    archive = write_archive(d, out_dir / f"{name}-{version}.tar.gz")
    return Published(version, d, archive, sha256_file(archive), archive.stat().st_size)


def write_index(out_dir: Path, channels: dict[str, Published], versions: list[Published] = ()) -> Path:
    doc = {
        "channels": {ch: p.entry() for ch, p in channels.items()},
        "versions": {p.version: {k: v for k, v in p.entry().items() if k != "version"} for p in versions},
    }
    path = out_dir / "index.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


@dataclass
class Request:
    path: str
    range: str | None
    time: float
    status: int = 0


@dataclass
class Faults:
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes; one-shot each
    delay_s: float = 0.0
    redirect: dict[str, str] = field(default_factory=dict)  # path -> Location (302)
    trickle_s: float = 0.0  # send the body one byte at a time, this far apart
    trickle_headers_s: float = 0.0  # send endless header lines, this far apart


class BundleServer:
    """Serves ``root`` over HTTP on a free port; ``url`` is its base URL (ends with '/')."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.requests: list[Request] = []
        self.faults = Faults()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                req = Request(self.path, self.headers.get("Range"), time.monotonic())
                with server._lock:
                    server.requests.append(req)
                if server.faults.delay_s:
                    time.sleep(server.faults.delay_s)
                rel = self.path.split("?", 1)[0].lstrip("/")
                if server.faults.trickle_headers_s:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    for _ in range(10_000):
                        self.wfile.write(b"X-Pad: a\r\n")
                        self.wfile.flush()
                        time.sleep(server.faults.trickle_headers_s)
                    return
                target = server.faults.redirect.get("/" + rel)
                if target is not None:
                    req.status = 302
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                f = (server.root / rel).resolve()
                if not str(f).startswith(str(server.root.resolve())) or not f.is_file():
                    req.status = 404
                    self.send_error(404)
                    return
                data = f.read_bytes()
                start, status = 0, 200
                m = re.fullmatch(r"bytes=(\d+)-", req.range or "")
                if m:
                    start = int(m.group(1))
                    if start >= len(data):
                        req.status = 416
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                req.status = status
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                cut = server.faults.cut_after.pop("/" + rel, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if server.faults.trickle_s:
                    try:
                        for i in range(len(body)):
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(server.faults.trickle_s)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the client gave up on the trickle, as the test wants it to
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> BundleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def hits(self, suffix: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith(suffix)]


def make_device(tmp_path: Path) -> dict:
    """A device (state dir with 1.0.0 active, trusted keys) and a server directory."""
    keys = make_keys(tmp_path / "keys")
    srv = tmp_path / "srv"
    srv.mkdir()
    v1 = publish_bundle(tmp_path / "work", srv, "1.0.0", keys.private)
    state = tmp_path / "state"
    store = ModelStore(state / "models")
    store.install(v1.archive, trusted_keys=None, verify=False)  # verified installs are tested elsewhere
    store.activate("1.0.0")
    return {"tmp": tmp_path, "keys": keys, "srv": srv, "state": state, "store": store, "v1": v1}


def make_cfg(env, url=None, **update) -> Config:
    settings = {"jitter_s": 0.0, "min_free_mb": 0.0, "health_timeout_s": 20.0, **update}
    u = UpdateConfig(url=url, trusted_keys_dir=str(env["keys"].public_dir), **settings)
    return Config(state_dir=str(env["state"]), mqtt=MqttConfig(enabled=False), update=u)


def command_endpoint(env, broker_port: int, device: str = "dev1"):
    """The daemon's MQTT side for update commands (a Publisher on the broker, not started) and a
    Subscriber on the device's events topic; the caller starts, stops and attaches handlers."""
    from edge.mqtt.outbox import Outbox
    from edge.mqtt.publisher import Publisher
    from tests.support.broker import Subscriber

    mcfg = MqttConfig(host="127.0.0.1", port=broker_port, device_id=device, reconnect_min_s=0.1,
                      reconnect_max_s=0.5, keepalive_s=5)
    pub = Publisher(mcfg, Outbox(env["tmp"] / "outbox.sqlite"), device)
    return pub, Subscriber(broker_port, f"sonotrap/{device}/events")


def write_cli_config(env, url: str, **update) -> Path:
    """A config.toml for ``sonotrap update`` / ``sonotrap model`` run as separate processes."""
    settings = {"url": url, "trusted_keys_dir": str(env["keys"].public_dir), "jitter_s": 0.0,
                "min_free_mb": 0.0, "health_timeout_s": 20.0, **update}
    lines = [f'state_dir = "{env["state"]}"', "[mqtt]", "enabled = false", "[update]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    path = env["tmp"] / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class StandinDaemon:
    """The stand-in daemon process (real model, status.json, SIGHUP reload)."""

    def __init__(self, state: Path, *extra: str) -> None:
        self.state = state
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.standin_daemon", str(state), *extra],
                                     cwd=REPO)
        deadline = time.monotonic() + 30
        while not (state / "status.json").exists():
            assert self.proc.poll() is None, "stand-in daemon died"
            assert time.monotonic() < deadline, "stand-in daemon never wrote status.json"
            time.sleep(0.05)

    def status(self) -> dict:
        return json.loads((self.state / "status.json").read_text())

    def assert_serving(self, version: str) -> None:
        """The daemon runs ``version`` and is still processing hops."""
        first = self.status()
        time.sleep(0.3)
        later = self.status()
        assert later["model"]["version"] == version
        assert later["last_hop_epoch"] > first["last_hop_epoch"]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def events() -> tuple[list[tuple[str, dict]], object]:
    """(list of reported events, reporter callable that appends to it)."""
    seen: list[tuple[str, dict]] = []
    return seen, lambda kind, data: seen.append((kind, data))
