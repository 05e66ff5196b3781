"""Update events from outside the daemon (``sonotrap update``, ``sonotrap model``) over MQTT.

Best effort: an unreachable broker only costs a log line (the journal has every step). The
client comes from :mod:`edge.mqtt.connection`, like the daemon's: same credential file
checks, TLS verification and connect timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

from edge.config import Config
from edge.mqtt.connection import connect_blocking
from edge.mqtt.payloads import encode, event_payload
from edge.util.identity import device_id

log = logging.getLogger("sonotrap.update")


class MqttEvents:
    """Out-of-process reporter: a short-lived MQTT client publishing to ``.../events``."""

    def __init__(self, cfg: Config, timeout_s: float = 5.0) -> None:
        self.cfg = cfg
        self.device = device_id(cfg.mqtt.device_id)
        self.topic = f"{cfg.mqtt.prefix}/{self.device}/events"
        self.timeout_s = timeout_s
        self._client: Any = None
        self._pending: list = []
        if cfg.mqtt.enabled:
            try:
                self._client = connect_blocking(cfg.mqtt, f"sonotrap-update-{self.device}-{os.getpid()}")
            except Exception as err:  # network/TLS errors of every kind: events are best effort
                log.warning("update events will not reach MQTT (%s:%s): %s", cfg.mqtt.host, cfg.mqtt.port, err)

    def __call__(self, kind: str, data: dict) -> None:
        if self._client is None:
            return
        info = self._client.publish(self.topic, encode(event_payload(self.device, kind, data)), qos=1)
        self._pending.append(info)

    def close(self) -> None:
        if self._client is None:
            return
        deadline = time.monotonic() + self.timeout_s
        for info in self._pending:
            with contextlib.suppress(Exception):
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None
