"""Home Assistant MQTT discovery: one sensor per label appears without manual config.

Each label gets ``<discovery_prefix>/sensor/<device>_<label>/config`` (retained). The sensor's
state is the peak score of the label's latest detection (read from ``.../detections``, other
labels keep the previous state), its attributes are that detection's payload, and its
availability follows the retained ``.../status`` (online/offline, Last Will). Labels that a
new model no longer has get an empty retained config, which removes them from Home Assistant.
Pure function: the publisher sends what it returns.
"""

from __future__ import annotations

import re
from typing import Any

from edge import __version__


def object_id(device: str, label: str) -> str:
    """Home Assistant object ids allow ``[a-zA-Z0-9_-]`` only."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", f"{device}_{label}")


def discovery_messages(
    discovery_prefix: str,
    device: str,
    labels: dict[str, str],
    *,
    detections_topic: str,
    status_topic: str,
    previous: set[str] | None = None,
) -> tuple[list[tuple[str, dict[str, Any] | None]], set[str]]:
    """``([(topic, payload or None to delete)], labels now announced)``."""
    msgs: list[tuple[str, dict[str, Any] | None]] = []
    device_block = {
        "identifiers": [f"sonotrap_{object_id(device, '')[:-1]}"],
        "name": f"sonotrap {device}",
        "manufacturer": "sonotrap",
        "model": "animal-call detector",
        "sw_version": __version__,
    }
    for label, name in sorted(labels.items()):
        oid = object_id(device, label)
        quoted = label.replace("\\", "\\\\").replace("'", "\\'")
        msgs.append(
            (
                f"{discovery_prefix}/sensor/{oid}/config",
                {
                    "name": name or label,
                    "unique_id": f"sonotrap_{oid}",
                    "object_id": f"sonotrap_{oid}",
                    "state_topic": detections_topic,
                    "value_template": (
                        f"{{% if value_json.label == '{quoted}' and value_json.state == 'ended' %}}"
                        "{{ value_json.score }}{% else %}{{ this.state }}{% endif %}"
                    ),
                    "json_attributes_topic": detections_topic,
                    "json_attributes_template": (
                        f"{{% if value_json.label == '{quoted}' %}}{{{{ value_json | tojson }}}}"
                        "{% else %}{{ this.attributes | tojson }}{% endif %}"
                    ),
                    "state_class": "measurement",
                    "icon": "mdi:bird",
                    "availability_topic": status_topic,
                    "availability_template": "{{ value_json.state }}",
                    "payload_available": "online",
                    "payload_not_available": "offline",
                    "device": device_block,
                },
            )
        )
    for label in sorted((previous or set()) - set(labels)):
        msgs.append((f"{discovery_prefix}/sensor/{object_id(device, label)}/config", None))
    return msgs, set(labels)
