"""``sonotrap update``'s event reporter reaches a real broker, and an absent one costs nothing."""

from __future__ import annotations

from edge.config import Config
from edge.models.update.events import MqttEvents
from tests.support.broker import Mosquitto, Subscriber, free_port


def _cfg(port: int) -> Config:
    cfg = Config()
    cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.device_id = "127.0.0.1", port, "rec-7"
    return cfg


def test_events_are_published_on_the_device_topic(mosquitto: Mosquitto):
    with Subscriber(mosquitto.port, "sonotrap/rec-7/events") as sub:
        events = MqttEvents(_cfg(mosquitto.port))
        events("update_started", {"version": "1.1.0"})
        events.close()
        (msg,) = sub.wait_for(lambda ms: ms, timeout=10)
    body = msg.json()
    assert body["device"] == "rec-7" and body["event"] == "update_started" and body["data"] == {"version": "1.1.0"}


def test_an_unreachable_broker_only_logs(caplog):
    events = MqttEvents(_cfg(free_port()))
    events("update_started", {"version": "1.1.0"})  # dropped, no exception
    events.close()
    assert "update events will not reach MQTT" in caplog.text
