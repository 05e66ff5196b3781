"""The updater's out-of-process event reporter uses the shared MQTT set-up: it reaches a real
broker with a password, and a bad credential file or a dead broker costs a warning, not a crash."""

from __future__ import annotations

import logging

from edge.config import Config, MqttConfig
from edge.models.update.events import MqttEvents
from tests.support.broker import Subscriber


def _cfg(port: int, **kw) -> Config:
    cfg = Config()
    cfg.mqtt = MqttConfig(host="127.0.0.1", port=port, device_id="upd-01", **kw)
    return cfg


def test_events_reach_a_password_protected_broker(mosquitto_factory, tmp_path):
    broker = mosquitto_factory(users={"dev": "s3cret"})
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)
    with Subscriber(broker.port, "sonotrap/upd-01/events", username="dev", password="s3cret") as sub:
        events = MqttEvents(_cfg(broker.port, username="dev", password_file=str(pw)))
        events("update_started", {"version": "1.2.3"})
        events.close()
        msg = sub.wait_for(lambda ms: ms and ms[-1])
    body = msg.json()
    assert body["event"] == "update_started" and body["data"]["version"] == "1.2.3"


def test_missing_password_file_or_dead_broker_is_a_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    events = MqttEvents(_cfg(9, username="dev", password_file=str(tmp_path / "missing")))
    events("update_started", {})  # no client: silently dropped, the journal has the step
    events.close()
    assert "password_file" in caplog.text
    events = MqttEvents(_cfg(9, connect_timeout_s=1.0))
    events.close()
    assert "will not reach MQTT" in caplog.text
