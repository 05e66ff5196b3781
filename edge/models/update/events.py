"""Update events from outside the daemon (``sonotrap update``, ``sonotrap model``) over MQTT.

Best effort: an unreachable broker only costs a log line (the journal has every step). The
broker connection is made in :func:`connect_client` alone, the one place this package touches
paho, so it can be replaced by the shared MQTT connection set-up in one call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from edge.config import Config
from edge.mqtt.payloads import encode, event_payload
from edge.util.identity import device_id

log = logging.getLogger(__name__)


def connect_client(cfg: Config, client_id: str) -> Any:
    """A connected paho client with its network loop running (raises on any failure)."""
    import paho.mqtt.client as mqtt

    m = cfg.mqtt
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if m.protocol == "5" else mqtt.MQTTv311,
    )
    password = m.password
    if m.password_file:
        password = Path(m.password_file).read_text().strip()
    if m.username:
        client.username_pw_set(m.username, password)
    if m.tls:
        client.tls_set(ca_certs=m.ca_file, certfile=m.cert_file, keyfile=m.key_file)
        client.tls_insecure_set(m.tls_insecure)
    client.connect(m.host, m.port, keepalive=30)
    client.loop_start()
    return client


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
                self._client = connect_client(cfg, f"sonotrap-update-{self.device}-{os.getpid()}")
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
