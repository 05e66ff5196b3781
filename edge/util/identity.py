"""The device id in MQTT topics and payloads: one rule, so daemon, updater and checks agree.

The configured ``mqtt.device_id`` when set, else this machine's hostname. Characters MQTT
reserves in topic names (``/``, ``#``, ``+``) and spaces become ``_`` so the id is always
one topic level.
"""

from __future__ import annotations

import socket

_RESERVED = "/#+ "


def device_id(configured: str | None = None) -> str:
    """``configured`` (``mqtt.device_id``) or the hostname, safe as one MQTT topic level."""
    name = configured or socket.gethostname() or "sonotrap"
    return "".join("_" if c in _RESERVED else c for c in name)
