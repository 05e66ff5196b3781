"""Home Assistant MQTT discovery: an event entity per label and a status sensor.

A detection is something that happens, not a level, so each label is an MQTT ``event``
entity (``event_types: ["detected"]``): its ``value_template`` renders this label's ended
detections into ``{"event_type": "detected", "score": ..., ...}`` and every other message
into an empty string, which Home Assistant skips without logging an error. Each detection
fires an event, repeated equal scores included, so automations trigger every time. A
diagnostic ``sensor`` shows the daemon's state (``running``, ``waiting for device``,
``offline``) with the status fields as attributes; the events' availability follows the
retained ``.../status`` (Last Will included).

Configs are retained. The set of config topics announced is recorded in the state
directory (``homeassistant.json``), so a restart with another model, or another
discovery prefix, removes the configs of labels that are gone (an empty retained payload
deletes an entity), and ``sonotrap ha-cleanup`` removes them all. Pure functions except
the small record helpers: the publisher sends what :func:`discovery_messages` returns.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from edge import __version__

log = logging.getLogger("sonotrap.mqtt")

RECORD_FILE = "homeassistant.json"
ORIGIN = {"name": "sonotrap", "sw_version": __version__, "support_url": "https://github.com/sonotrap/sonotrap"}
EVENT_TYPE = "detected"
# Fields of a detection payload passed on as event attributes (docs/mqtt.md).
EVENT_FIELDS = ("id", "label", "name", "score", "mean_score", "start", "end", "duration_s", "offset", "model")


def object_id(device: str, label: str) -> str:
    """Home Assistant object ids allow ``[a-zA-Z0-9_-]`` only."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", f"{device}_{label}")


def _entity_id(domain: str, device: str, label: str) -> str:
    """``event.sonotrap_rec_01_erirub_song``: entity ids are lower case ``[a-z0-9_]``."""
    return f"{domain}.sonotrap_{re.sub(r'[^a-z0-9_]', '_', object_id(device, label).lower())}"


def event_topic(prefix: str, device: str, label: str) -> str:
    return f"{prefix}/event/{object_id(device, label)}/config"


def status_topic_config(prefix: str, device: str) -> str:
    return f"{prefix}/sensor/{object_id(device, 'status')}/config"


def legacy_sensor_topic(prefix: str, device: str, label: str) -> str:
    """Where sonotrap before the event entities announced a label (a numeric sensor)."""
    return f"{prefix}/sensor/{object_id(device, label)}/config"


def device_block(device: str) -> dict[str, Any]:
    return {
        "identifiers": [f"sonotrap_{object_id(device, '')[:-1]}"],
        "name": f"sonotrap {device}",
        "manufacturer": "sonotrap",
        "model": "animal-call detector",
        "sw_version": __version__,
    }


def _event_template(label: str) -> str:
    quoted = label.replace("\\", "\\\\").replace("'", "\\'")
    fields = ", ".join(f"'{f}': value_json.{f}" for f in EVENT_FIELDS if f != "offset")
    return (
        f"{{% if value_json.label == '{quoted}' and value_json.state == 'ended' %}}"
        f"{{{{ dict({{'event_type': '{EVENT_TYPE}', {fields}}}, offset=value_json.offset | default(none)) | tojson }}}}"
        "{% endif %}"
    )


def event_config(device: str, label: str, name: str, *, detections_topic: str, status_topic: str) -> dict[str, Any]:
    """The discovery config of one label's event entity."""
    oid = object_id(device, label)
    return {
        "name": name or label,
        "unique_id": f"sonotrap_{oid}",
        "default_entity_id": _entity_id("event", device, label),
        "state_topic": detections_topic,
        "value_template": _event_template(label),
        "event_types": [EVENT_TYPE],
        "icon": "mdi:bird",
        "qos": 1,
        "availability": [{
            "topic": status_topic,
            "value_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }],
        "device": device_block(device),
        "origin": ORIGIN,
    }


def status_config(device: str, *, status_topic: str) -> dict[str, Any]:
    """The diagnostic sensor: the daemon's own state, ``offline`` when stopped or gone."""
    oid = object_id(device, "status")
    return {
        "name": "Status",
        "unique_id": f"sonotrap_{oid}",
        "default_entity_id": _entity_id("sensor", device, "status"),
        "state_topic": status_topic,
        "value_template": "{{ value_json.daemon_state | default(value_json.state) }}",
        "json_attributes_topic": status_topic,
        "entity_category": "diagnostic",
        "icon": "mdi:microphone",
        "qos": 1,
        "device": device_block(device),
        "origin": ORIGIN,
    }


def discovery_messages(
    discovery_prefix: str,
    device: str,
    labels: dict[str, str],
    *,
    detections_topic: str,
    status_topic: str,
    previous: set[str] | None = None,
) -> tuple[list[tuple[str, dict[str, Any] | None]], set[str]]:
    """``([(topic, payload or None to delete)], config topics now announced)``.

    ``previous``: the config topics announced before (from the record); those not announced
    now get an empty retained payload. Without a record, the old per-label sensor topics of
    the current labels are cleared too (an upgrade from the sensor layout).
    """
    msgs: list[tuple[str, dict[str, Any] | None]] = []
    announced: set[str] = set()
    for label, name in sorted(labels.items()):
        topic = event_topic(discovery_prefix, device, label)
        msgs.append((topic, event_config(device, label, name, detections_topic=detections_topic,
                                         status_topic=status_topic)))
        announced.add(topic)
    topic = status_topic_config(discovery_prefix, device)
    msgs.append((topic, status_config(device, status_topic=status_topic)))
    announced.add(topic)
    if previous is None:
        stale = {legacy_sensor_topic(discovery_prefix, device, label) for label in labels} - announced
    else:
        stale = set(previous) - announced
    msgs.extend((topic, None) for topic in sorted(stale))
    return msgs, announced


def removal_messages(topics: set[str]) -> list[tuple[str, None]]:
    """Empty retained payloads that delete every config in ``topics`` (``sonotrap ha-cleanup``)."""
    return [(t, None) for t in sorted(topics)]


def read_record(path: Path) -> set[str] | None:
    """The config topics announced last time; None when nothing was recorded (first run)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return set()  # unreadable: announce afresh; ha-cleanup can still remove by label
    topics = data.get("topics") if isinstance(data, dict) else None
    return {t for t in topics if isinstance(t, str)} if isinstance(topics, list) else set()


def write_record(path: Path, topics: set[str]) -> None:
    """Record the announced config topics (atomically: a power cut leaves the old or the new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"topics": sorted(topics)}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class Announced:
    """Which Home Assistant config topics this device has announced, kept across restarts.

    :meth:`plan` returns the messages for the current labels (new configs, and empty retained
    payloads that remove configs of labels no longer there); :meth:`commit` records the set
    once they were handed to the broker. Without a record file the set lives in memory only.
    """

    def __init__(self, prefix: str, device: str, record: Path | None) -> None:
        self.prefix = prefix
        self.device = device
        self.record = record
        self._announced: set[str] | None = None  # None = not yet read from the record
        self._planned: set[str] = set()

    def plan(self, labels: dict[str, str], *, detections_topic: str, status_topic: str) -> list[tuple[str, Any]]:
        previous = self._announced
        if previous is None and self.record is not None:
            previous = read_record(self.record)
        msgs, self._planned = discovery_messages(
            self.prefix, self.device, labels,
            detections_topic=detections_topic, status_topic=status_topic, previous=previous,
        )
        return msgs

    def commit(self) -> None:
        self._announced = self._planned
        if self.record is None:
            return
        try:
            write_record(self.record, self._planned)
        except OSError as err:
            log.warning("mqtt: cannot record the Home Assistant configs in %s (%s); configs of labels "
                        "a later model drops may stay in Home Assistant", self.record, err.strerror or err)
