"""A real Mosquitto broker for tests, and a real paho subscriber that records what arrives.

``Mosquitto`` writes its own ``mosquitto.conf`` in a temp dir: a plain listener on a free
port, optionally a password file (``mosquitto_passwd``) and an ACL file, a TLS listener with a CA, server and
client certificate generated with ``cryptography``, and optional persistence. ``stop()`` and
``start()`` again reuse the SAME port (outage tests). Fixtures: ``mosquitto`` (plain,
anonymous) and ``mosquitto_factory(**kwargs)``, registered in tests/conftest.py.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# ------------------------------------------------------------------ certificates


@dataclass
class Pki:
    """PEM files: a CA, a server cert for localhost/127.0.0.1 and a client cert, all signed by the CA."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path, name: str = "test") -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(k, path: Path) -> Path:
        path.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return path

    def write_cert(c, path: Path) -> Path:
        path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage, san: list | None):
        k = key()
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    s_key, s_cert = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    c_key, c_cert = leaf("sonotrap-test-client", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    return Pki(
        ca_cert=write_cert(ca, directory / "ca.crt"),
        ca_key=write_key(ca_key, directory / "ca.key"),
        server_cert=write_cert(s_cert, directory / "server.crt"),
        server_key=write_key(s_key, directory / "server.key"),
        client_cert=write_cert(c_cert, directory / "client.crt"),
        client_key=write_key(c_key, directory / "client.key"),
    )


# ------------------------------------------------------------------ broker


class Mosquitto:
    """One mosquitto process with its own config; restartable on the same ports."""

    def __init__(
        self,
        directory: Path,
        *,
        users: dict[str, str] | None = None,
        tls: bool = False,
        require_client_cert: bool = False,
        persistence: bool = False,
        port: int | None = None,
        acl_file: Path | None = None,
        max_qos: int | None = None,
        max_inflight: int | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.users = users or {}
        self.port = port or free_port()
        self.tls_port = free_port() if tls else None
        self.pki = make_pki(self.dir / "pki") if tls else None
        self.persistence = persistence
        self.log_path = self.dir / "mosquitto.log"
        self.conf_path = self.dir / "mosquitto.conf"
        self.proc: subprocess.Popen | None = None
        lines = ["per_listener_settings false", f"listener {self.port} 127.0.0.1"]
        if self.tls_port:
            assert self.pki is not None
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.pki.ca_cert}",
                f"certfile {self.pki.server_cert}",
                f"keyfile {self.pki.server_key}",
                f"require_certificate {'true' if require_client_cert else 'false'}",
            ]
        if self.users:
            pwfile = self.dir / "passwd"
            for i, (user, pw) in enumerate(self.users.items()):
                flags = ["-b", "-c"] if i == 0 else ["-b"]
                subprocess.run([MOSQUITTO_PASSWD, *flags, str(pwfile), user, pw], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines += ["allow_anonymous true"]
        if acl_file is not None:
            lines += [f"acl_file {acl_file}"]
        if max_inflight is not None:  # per client, both ways (MQTT 5: the Receive Maximum)
            lines += [f"max_inflight_messages {max_inflight}"]
        if max_qos is not None:
            lines += [f"max_qos {max_qos}"]  # like brokers without QoS 2 (MQTT 5 clients are told)
        if persistence:
            (self.dir / "data").mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {self.dir / 'data'}/", "autosave_interval 1"]
        else:
            lines += ["persistence false"]
        lines += [
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "max_queued_messages 100000",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # mosquitto would otherwise drop to 'mosquitto' and lose our tmp files
        self.conf_path.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        if self.running:
            return self
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        ports = [self.port] + ([self.tls_port] if self.tls_port else [])
        deadline = time.monotonic() + timeout
        for p in ports:
            if not wait_port(p, max(0.1, deadline - time.monotonic())):
                err = b""
                if self.proc.poll() is not None and self.proc.stderr:
                    err = self.proc.stderr.read()
                self.stop()
                raise RuntimeError(f"mosquitto did not listen on {p}: {err.decode(errors='replace')} {self.log()}")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (persistence is saved), SIGKILL if it hangs; the ports are free afterwards."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> Mosquitto:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def mosquitto(tmp_path: Path):
    """A running anonymous Mosquitto on a free localhost port."""
    broker = Mosquitto(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path):
    """``mosquitto_factory(users=..., acl_file=..., tls=..., persistence=...)`` -> a started broker, stopped at teardown."""
    brokers: list[Mosquitto] = []

    def make(**kwargs: Any) -> Mosquitto:
        b = Mosquitto(tmp_path / f"mosquitto{len(brokers)}", **kwargs).start()
        brokers.append(b)
        return b

    yield make
    for b in brokers:
        b.stop()


# ------------------------------------------------------------------ subscriber


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    t: float = field(default_factory=time.monotonic)  # monotonic receipt time

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A real paho client subscribed to ``topics`` (QoS ``qos``, default 1) that records every message.

    ``persistent=True`` uses a fixed client id and clean_session=False, so with a broker that
    has persistence the messages sent while it was reconnecting are still delivered.
    """

    def __init__(
        self,
        port: int,
        topics: str | list[str] = "#",
        *,
        client_id: str | None = None,
        persistent: bool = False,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        connect: bool = True,
        qos: int = 1,
    ) -> None:
        self.port = port
        self.qos = qos
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self.connected = threading.Event()
        cid = client_id or f"test-sub-{os.getpid()}-{id(self)}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=not persistent)
        if username:
            self.client.username_pw_set(username, password)
        if ca_file:
            self.client.tls_set(ca_certs=str(ca_file), cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self._suback = threading.Event()
        self.client.on_subscribe = lambda *a: self._suback.set()
        if connect:
            self.start()

    def start(self, timeout: float = 10.0) -> Subscriber:
        self.client.connect_async("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise RuntimeError(f"subscriber could not connect to port {self.port}")
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        self._suback.clear()
        client.subscribe([(t, self.qos) for t in self.topics])
        # mark connected only once subscribed, so tests do not race the SUBACK
        threading.Thread(target=self._mark_when_subscribed, daemon=True).start()

    def _mark_when_subscribed(self) -> None:
        if self._suback.wait(5):
            self.connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def on_topic(self, suffix: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(self, predicate: Callable[[list[Received]], Any], timeout: float = 10.0) -> Any:
        """Wait until ``predicate(messages)`` is truthy; returns its value, or raises AssertionError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(list(self.messages))
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = [(m.topic, m.payload[:200]) for m in self.messages[-5:]]
                    raise AssertionError(f"timed out after {timeout} s; {len(self.messages)} messages, last: {tail}")
                self._cond.wait(min(left, 0.2))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
