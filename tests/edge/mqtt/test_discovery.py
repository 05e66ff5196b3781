"""Home Assistant discovery as HA runs it: event entities per label, a status sensor, clean removal.

The allowed keys below are written down from Home Assistant's MQTT platform schemas of the
current release (homeassistant/components/mqtt: schemas.py MQTT_ENTITY_COMMON_SCHEMA and the
availability schemas, config.py MQTT_RO_SCHEMA, event.py and sensor.py _PLATFORM_SCHEMA_BASE).
Discovery drops unknown keys silently, so a key outside these lists is a silent no-op there.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from edge.config import MqttConfig
from edge.mqtt import discovery as ha
from edge.mqtt.outbox import Outbox
from edge.mqtt.payloads import FileOffset, MessageContext, detection_payload
from edge.mqtt.publisher import Publisher
from tests.support.broker import Subscriber
from tests.support.daemon_helpers import run_cli

RO = {"state_topic", "value_template", "qos", "encoding", "group"}
AVAILABILITY = {"availability", "availability_mode", "availability_template", "availability_topic",
                "payload_available", "payload_not_available"}
COMMON = AVAILABILITY | {"device", "entity_picture", "origin", "enabled_by_default", "entity_category", "icon",
                         "json_attributes_topic", "json_attributes_template", "default_entity_id",
                         "message_expiry_interval", "unique_id", "visible_by_default"}
PLATFORM = {
    "event": RO | COMMON | {"device_class", "name", "event_types"},
    "sensor": RO | COMMON | {"device_class", "expire_after", "force_update", "last_reset_value_template", "name",
                             "options", "suggested_display_precision", "state_class", "unit_of_measurement"},
}
REQUIRED = {"event": {"state_topic", "event_types"}, "sensor": {"state_topic"}}
AVAILABILITY_ITEM = {"topic", "payload_available", "payload_not_available", "value_template"}
DEVICE = {"identifiers", "connections", "manufacturer", "model", "model_id", "name", "hw_version", "serial_number",
          "sw_version", "via_device", "suggested_area", "configuration_url"}
ORIGIN = {"name", "sw_version", "support_url"}
LABELS = {"Erirub_song": "European Robin (Erithacus rubecula) song", "Sylmel_call": "Sardinian Warbler call"}
DEV = "rec-01"


def _messages(labels=LABELS, previous=None):
    return ha.discovery_messages("homeassistant", DEV, labels, detections_topic=f"sonotrap/{DEV}/detections",
                                 status_topic=f"sonotrap/{DEV}/status", previous=previous)


def test_configs_use_only_keys_home_assistant_accepts():
    msgs, announced = _messages(previous=set())
    assert len(msgs) == len(LABELS) + 1 and announced == {t for t, _ in msgs}
    platforms = []
    for topic, cfg in msgs:
        platform = topic.split("/")[1]
        platforms.append(platform)
        assert set(cfg) <= PLATFORM[platform], set(cfg) - PLATFORM[platform]
        assert REQUIRED[platform] <= set(cfg)
        assert "object_id" not in cfg  # dropped by HA 2026.4; default_entity_id replaces it
        domain, _, obj = cfg["default_entity_id"].partition(".")
        assert domain == platform and obj.replace("_", "").isalnum() and obj == obj.lower()
        assert set(cfg["device"]) <= DEVICE and cfg["device"]["identifiers"]
        assert set(cfg["origin"]) <= ORIGIN and cfg["origin"]["name"] == "sonotrap"
        for item in cfg.get("availability", []):
            assert set(item) <= AVAILABILITY_ITEM and item["topic"] == f"sonotrap/{DEV}/status"
        assert cfg["qos"] in (0, 1, 2)
    assert sorted(platforms) == ["event", "event", "sensor"]
    robin = dict(msgs)[f"homeassistant/event/{DEV}_Erirub_song/config"]
    assert robin["event_types"] == ["detected"] and robin["name"] == LABELS["Erirub_song"]
    assert "state_class" not in robin and "force_update" not in robin


def _render(template: str, payload: dict) -> str:
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.sandbox.ImmutableSandboxedEnvironment() if hasattr(jinja2, "sandbox") else jinja2.Environment()
    return env.from_string(template).render(value_json=payload)


def _payload(label, state="ended", offset=None):
    ev = type("E", (), dict(id=uuid.uuid4().hex, label=label, name=LABELS.get(label, label), state=state,
                             start=1.8e9, end=1.8e9 + 2.5, peak_score=0.91, mean_score=0.8, hops=3))
    return detection_payload(ev, MessageContext(DEV, "m", "1.0.0", 0.5, 2.0), offset=offset)


def test_an_event_fires_for_its_own_label_only_and_carries_score_time_and_offset():
    import jinja2.sandbox  # noqa: F401  (HA renders in a sandbox)

    msgs, _ = _messages()
    template = dict(msgs)[f"homeassistant/event/{DEV}_Erirub_song/config"]["value_template"]
    fired = json.loads(_render(template, _payload("Erirub_song", offset=FileOffset("dawn.wav", 12.5, 15.0))))
    assert fired["event_type"] == "detected" and fired["score"] == 0.91
    assert fired["start"].endswith("Z") and fired["offset"] == {"file": "dawn.wav", "start_s": 12.5, "end_s": 15.0}
    assert json.loads(_render(template, _payload("Erirub_song")))["offset"] is None  # live audio: no file offset
    # other labels and "started" messages render empty: HA skips those without an error
    assert _render(template, _payload("Sylmel_call")).strip() == ""
    assert _render(template, _payload("Erirub_song", state="started")).strip() == ""


def test_labels_that_disappear_are_removed_and_first_runs_clear_the_old_sensors():
    _, first = _messages()
    msgs, now = _messages({"Sylmel_call": "x"}, previous=first)
    removed = [t for t, p in msgs if p is None]
    assert removed == [f"homeassistant/event/{DEV}_Erirub_song/config"]
    assert now == {f"homeassistant/event/{DEV}_Sylmel_call/config", f"homeassistant/sensor/{DEV}_status/config"}
    msgs, _ = _messages(previous=None)  # no record: an upgrade from the per-label sensors
    assert {t for t, p in msgs if p is None} == {f"homeassistant/sensor/{DEV}_{lab}/config" for lab in LABELS}


def _publisher(port, tmp_path, n):
    cfg = MqttConfig(host="127.0.0.1", port=port, device_id=DEV, homeassistant=True, reconnect_min_s=0.1,
                     reconnect_max_s=0.5, status_interval_s=60.0, keepalive_s=5)
    return Publisher(cfg, Outbox(tmp_path / f"outbox{n}.sqlite"), DEV, ha_record=tmp_path / "state" / ha.RECORD_FILE)


def _live_configs(port) -> dict[str, bytes]:
    """What Home Assistant starting now would read: the retained, non-empty configs."""
    with Subscriber(port, "homeassistant/#") as late:
        time.sleep(0.7)
        return {m.topic: m.payload for m in late.messages if m.payload}


def test_a_restart_with_another_model_removes_gone_labels_and_ha_cleanup_removes_all(mosquitto, tmp_path):
    pub = _publisher(mosquitto.port, tmp_path, 1)
    pub.start()
    pub.announce_discovery(LABELS)
    with Subscriber(mosquitto.port, "homeassistant/#") as sub:
        sub.wait_for(lambda ms: len({m.topic for m in ms if m.payload}) >= 3)
    pub.stop(timeout=2.0)
    pub.outbox.close()
    assert json.loads((tmp_path / "state" / ha.RECORD_FILE).read_text())["topics"]
    # a new process (the record is all it remembers) with a model that lost Erirub_song
    pub = _publisher(mosquitto.port, tmp_path, 2)
    with Subscriber(mosquitto.port, "homeassistant/#") as sub:
        pub.start()
        pub.announce_discovery({"Sylmel_call": LABELS["Sylmel_call"]})
        sub.wait_for(lambda ms: any(m.topic.endswith("_Erirub_song/config") and m.payload == b"" for m in ms))
    pub.stop(timeout=2.0)
    pub.outbox.close()
    live = _live_configs(mosquitto.port)
    assert set(live) == {f"homeassistant/event/{DEV}_Sylmel_call/config", f"homeassistant/sensor/{DEV}_status/config"}
    r = run_cli("ha-cleanup", "--broker", f"127.0.0.1:{mosquitto.port}", "--device-id", DEV,
                "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 0, r.stderr
    assert "removed" in r.stdout
    assert _live_configs(mosquitto.port) == {}
    assert not (tmp_path / "state" / ha.RECORD_FILE).exists()
