"""TLS and passwords against a real Mosquitto: what works connects, what is wrong says why and retries."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from edge.config import MqttConfig
from edge.errors import SonotrapError
from edge.mqtt.connection import check_broker
from edge.mqtt.outbox import Outbox
from edge.mqtt.publisher import Publisher
from tests.support.broker import Mosquitto, Subscriber, make_pki

DEVICE = "secure-01"
USERS = {"recorder": "s3cret-pw", "reader": "r3ad"}


@pytest.fixture
def secure(mosquitto_factory) -> Mosquitto:
    return mosquitto_factory(users=USERS, tls=True)


def tls_cfg(broker: Mosquitto, **kw) -> MqttConfig:
    assert broker.pki is not None and broker.tls_port is not None
    base = dict(host="localhost", port=broker.tls_port, device_id=DEVICE, tls=True, ca_file=str(broker.pki.ca_cert),
                username="recorder", password="s3cret-pw", reconnect_min_s=0.1, reconnect_max_s=0.4)
    base.update(kw)
    cfg = MqttConfig(**base)
    cfg.validate()
    return cfg


def reader(broker: Mosquitto) -> Subscriber:
    assert broker.pki is not None and broker.tls_port is not None
    return Subscriber(broker.tls_port, f"sonotrap/{DEVICE}/#", username="reader", password="r3ad",
                      ca_file=broker.pki.ca_cert)


def run_publisher(cfg: MqttConfig, tmp_path: Path, seconds: float = 0.0) -> Publisher:
    pub = Publisher(cfg, Outbox(tmp_path / f"{uuid.uuid4().hex}.sqlite"), DEVICE)
    pub.start()
    time.sleep(seconds)
    return pub


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_tls_with_password_file_delivers(secure: Mosquitto, tmp_path: Path, protocol: str) -> None:
    pw = tmp_path / "mqtt.pw"
    pw.write_text("s3cret-pw\n")
    sub = reader(secure)
    pub = run_publisher(tls_cfg(secure, password=None, password_file=str(pw), protocol=protocol), tmp_path)
    try:
        pub.publish_detection({"id": "abc", "label": "tone_low"})
        msg = sub.wait_for(lambda ms: [m for m in ms if m.topic.endswith("/detections")])[0]
        assert msg.json() == {"id": "abc", "label": "tone_low"}
        assert pub.stats()["connected"]
    finally:
        pub.stop(1)
        sub.stop()
    assert "over TLS" in check_broker(tls_cfg(secure), DEVICE)


def test_client_certificate_is_presented(mosquitto_factory, tmp_path: Path) -> None:
    broker = mosquitto_factory(tls=True, require_client_cert=True)
    pki = broker.pki
    with pytest.raises(SonotrapError, match="closed the connection during the handshake.*cert_file"):
        check_broker(MqttConfig(host="localhost", port=broker.tls_port, tls=True, ca_file=str(pki.ca_cert)), DEVICE)
    cfg = MqttConfig(host="localhost", port=broker.tls_port, device_id=DEVICE, tls=True, ca_file=str(pki.ca_cert),
                     cert_file=str(pki.client_cert), key_file=str(pki.client_key), reconnect_min_s=0.1)
    cfg.validate()
    nocert = run_publisher(MqttConfig(host="localhost", port=broker.tls_port, device_id="nocert", tls=True,
                                      ca_file=str(pki.ca_cert), reconnect_min_s=0.1), tmp_path, seconds=1.0)
    assert not nocert.connected and "client certificate" in (nocert.stats()["last_error"] or "")
    nocert.stop(0.5)
    pub = run_publisher(cfg, tmp_path)
    try:
        deadline = time.monotonic() + 10
        while not pub.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pub.connected, pub.stats()["last_error"]
    finally:
        pub.stop(1)


def test_wrong_password_is_a_clear_error_and_keeps_retrying(secure: Mosquitto, tmp_path: Path, caplog) -> None:
    pub = run_publisher(tls_cfg(secure, password="wrong"), tmp_path, seconds=1.5)
    try:
        st = pub.stats()
        assert not st["connected"]
        assert "refused the connection" in st["last_error"] and "mqtt.username" in st["last_error"]
        first = st["failed_attempts"]
        assert first >= 2, "it retries"
        pub.publish_detection({"id": "kept"})
        assert pub.stats()["outbox_depth"] == 1  # nothing lost while refused
    finally:
        pub.stop(0.5)
    assert any("refused the connection" in r.getMessage() for r in caplog.records)
    with pytest.raises(SonotrapError, match="refused the connection"):
        check_broker(tls_cfg(secure, password="wrong"), DEVICE)


def test_untrusted_server_certificate_is_a_clear_error(secure: Mosquitto, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other-ca", name="other")
    pub = run_publisher(tls_cfg(secure, ca_file=str(other.ca_cert)), tmp_path, seconds=1.0)
    try:
        st = pub.stats()
        assert not st["connected"] and st["failed_attempts"] >= 2
        assert "certificate verify failed" in st["last_error"] and "mqtt.ca_file" in st["last_error"]
    finally:
        pub.stop(0.5)
    with pytest.raises(SonotrapError, match="not trusted.*mqtt.ca_file"):
        check_broker(tls_cfg(secure, ca_file=str(other.ca_cert)), DEVICE)


def test_plain_client_on_the_tls_port_and_missing_files(secure: Mosquitto, tmp_path: Path) -> None:
    with pytest.raises(SonotrapError, match="mqtt.ca_file .* does not exist"):
        Publisher(tls_cfg(secure, ca_file=str(tmp_path / "nope.crt")), Outbox(None), DEVICE)
    with pytest.raises(SonotrapError, match="password_file .* cannot be read"):
        Publisher(tls_cfg(secure, password=None, password_file=str(tmp_path / "nope")), Outbox(None), DEVICE)
    bad = tmp_path / "bad.crt"
    bad.write_text("not a certificate")
    with pytest.raises(SonotrapError, match="TLS files cannot be loaded"):
        Publisher(tls_cfg(secure, ca_file=str(bad)), Outbox(None), DEVICE)
    with pytest.raises(SonotrapError, match="mqtt.username"):
        MqttConfig(password="x").validate()
    # anonymous access is off: the plain listener refuses us too, with the same clear message
    with pytest.raises(SonotrapError, match="refused the connection"):
        check_broker(MqttConfig(host="127.0.0.1", port=secure.port), DEVICE)
