"""MQTT side of the daemon: outbox -> broker, status, events, commands.

Threads and why:
- the caller (detector/inference thread) only *writes the outbox* in ``publish_detection``
  and sets an Event, so a dead broker never stalls audio or inference;
- paho's network thread (``loop_start``) does socket I/O, connects and reconnects (also when
  the very first connect at boot fails) with our exponential backoff + jitter;
- one sender thread owns the in-flight window (``edge.mqtt.inflight``): it hands outbox rows
  to paho oldest-first, at most ``max_inflight`` unacknowledged, and deletes a row when its
  PUBACK arrives (PUBACKs come from paho's thread through a queue);
- one callback thread runs ``subscribe`` callbacks so a slow handler never blocks MQTT I/O.

Delivery is at-least-once, in order: paho keeps in-flight messages across a reconnect and
re-sends them (same packet ids), and the window holds newer rows back until those are
acknowledged. After a crash or restart nothing is in flight, so every row in the outbox is sent
again oldest-first. Subscribers dedup by the payload ``id``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.config import MqttConfig
from edge.mqtt.connection import (
    Client,
    backoff_delay,
    connect_async,
    connect_error_hint,
    new_client,
    refusal_hint,
)
from edge.mqtt.discovery import Announced
from edge.mqtt.dispatch import Dispatcher
from edge.mqtt.inflight import InflightWindow
from edge.mqtt.outbox import Outbox, OutboxRow
from edge.mqtt.payloads import encode, event_payload, offline_payload, status_fields, status_payload
from edge.util.jsonio import json_safe

log = logging.getLogger("sonotrap.mqtt")
# After a (re)connect the retained status waits this long for the daemon's own "ready" status,
# so a listener sees one status line at start-up, not one per trigger.
CONNECT_STATUS_GRACE_S = 1.0


class Publisher:
    """Durable, non-blocking MQTT publisher for one device (see the module docstring)."""

    def __init__(self, cfg: MqttConfig, outbox: Outbox, device_id: str, ha_record: Path | None = None) -> None:
        self.cfg = cfg
        self.ha_record = ha_record  # Home Assistant config topics announced (edge.mqtt.discovery)
        self.outbox = outbox
        self.device = device_id
        self.base = f"{cfg.prefix}/{device_id}"
        self.detections_topic = f"{self.base}/detections"
        self.status_topic = f"{self.base}/status"
        self.events_topic = f"{self.base}/events"
        self.client_id = cfg.client_id or f"sonotrap-{device_id}"

        self._status_provider: Callable[[], dict] | None = None
        self._subs: dict[str, Callable[[str, bytes], None]] = {}
        self._discovery_labels: dict[str, str] | None = None
        self._discovery = Announced(cfg.discovery_prefix, device_id, ha_record)
        self._lock = threading.Lock()  # our own state only; never held while calling paho
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._status_due = threading.Event()
        self._connected_status = threading.Event()  # a (re)connect: status within the grace period
        self._discovery_due = threading.Event()
        self._connected = threading.Event()
        self._max_qos = 2  # lowered by an MQTT 5 broker's Maximum QoS (CONNACK)
        # QoS 2 re-sends after a reconnect mix PUBREL and PUBLISH, which can release a window
        # out of order: exactly once AND in order needs one message in flight at a time
        self._window = InflightWindow(outbox, 1 if cfg.qos == 2 else cfg.max_inflight)
        self._attempt = 0
        self._refused = False
        self._next_delay = cfg.reconnect_min_s
        self._rng = random.Random()
        self._stats = dict.fromkeys(("connects", "failed_attempts", "disconnects", "lost"), 0)
        self._last_error: str | None = None
        self._started_at = time.monotonic()
        self._sender: threading.Thread | None = None
        self._dispatcher = Dispatcher()
        self._client = self._make_client()

    # ------------------------------------------------------------------ public API

    def set_status_provider(self, fn: Callable[[], dict]) -> None:
        """``fn()`` returns the daemon's status fields (model, uptime, overflows, latency, backlog)."""
        self._status_provider = fn

    def start(self) -> None:
        """Connect in the background (retrying with backoff) and start sending; returns at once."""
        cfg = self.cfg
        connect_async(self._client, cfg, persistent_session=True)
        self._set_retry_delay()
        log.info("mqtt: connecting to %s:%d as %s (device %s)", cfg.host, cfg.port, self.client_id, self.device)
        self._client.loop_start()
        if self.outbox.recovered is not None:
            self.publish_event("outbox_recovered", self.outbox.recovered)
        self._sender = threading.Thread(target=self._sender_main, name="mqtt-sender", daemon=True)
        self._sender.start()
        self._dispatcher.start()

    def publish_detection(self, payload: dict) -> int | None:
        """Commit the detection to the outbox and wake the sender; returns the outbox row id.

        Never raises into the caller and never waits for the network.
        """
        return self._enqueue(self.detections_topic, payload)

    def publish_event(self, kind: str, data: dict) -> int | None:
        """A daemon event (``model_changed``, ``audio_error`` ...) on ``.../events``, via the outbox."""
        return self._enqueue(self.events_topic, event_payload(self.device, kind, data))

    def publish_status(self) -> None:
        """Publish the retained online status now (it is also sent every ``status_interval_s``)."""
        self._status_due.set()
        self._wake.set()

    def announce_discovery(self, labels: dict[str, str]) -> None:
        """Home Assistant discovery for ``{label: display name}`` (no-op unless mqtt.homeassistant)."""
        if not self.cfg.homeassistant:
            return
        with self._lock:
            self._discovery_labels = dict(labels)
        self._discovery_due.set()
        self._wake.set()

    def subscribe(self, suffix: str, callback: Callable[[str, bytes], None]) -> None:
        """Call ``callback(topic, payload)`` for messages on ``<prefix>/<device>/<suffix>``.

        Subscribed with QoS 1 and again on every reconnect; callbacks run on a dedicated thread.
        """
        topic = f"{self.base}/{suffix}"
        with self._lock:
            self._subs[topic] = callback
        if self._connected.is_set():
            self._client.subscribe(topic, qos=1)

    def stop(self, timeout: float = 5.0) -> None:
        """Drain the outbox while connected (at most ``timeout``), publish offline, disconnect."""
        deadline = time.monotonic() + timeout
        while self._connected.is_set() and self.outbox.depth() > 0 and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        self._stopping.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join(max(0.5, deadline - time.monotonic()))
        if self._connected.is_set():
            info = self._client.publish(
                self.status_topic, encode(offline_payload(self.device, "shutdown")), qos=1, retain=True
            )
            try:
                info.wait_for_publish(max(0.5, min(2.0, deadline - time.monotonic())))
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        # paho's thread may sit in a connect attempt (up to connect_timeout_s): bound the wait
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(max(1.0, deadline - time.monotonic()))
        self._connected.clear()
        self._dispatcher.stop(1.0)
        self.outbox.close()  # logs how many undelivered messages are on disk and how many are lost

    def stats(self) -> dict:
        """Counters for status and tests; ``last_error`` says why we are not connected."""
        ob = self.outbox.stats()
        with self._lock:
            return {
                "connected": self._connected.is_set(),
                "outbox_depth": ob["depth"],
                "dropped": ob["dropped"],
                "outbox_mode": ob["mode"],
                "outbox_error": ob["error"],
                "outbox_unpersisted": ob["unpersisted"],
                "outbox_recovered": ob.get("recovered"),
                "inflight": len(self._window),
                "reconnects": max(0, self._stats["connects"] - 1),
                "last_error": self._last_error,
                "published": self._window.published,
                "rejected": self._window.rejected,
                **self._stats,
            }

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # ------------------------------------------------------------------ client setup

    def _make_client(self) -> Client:
        cfg = self.cfg
        client = new_client(cfg, self.client_id, persistent_session=True)
        client.suppress_exceptions = True
        # paho caps everything in flight (detections + status + discovery) at the same bound, so
        # an MQTT 5 broker's Receive Maximum (mosquitto: 20) is never exceeded; extra QoS-1
        # messages wait in paho's FIFO, order kept
        client.max_inflight_messages_set(self._window.size)
        client.before_connect = self._set_will
        self._set_will(client)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _set_will(self, client: Client | None = None) -> None:
        """Last Will: retained offline status, refreshed before each connect so ``ts`` is recent."""
        (client or self._client).will_set(
            self.status_topic, encode(offline_payload(self.device, "connection lost")), qos=1, retain=True
        )

    def _set_retry_delay(self) -> None:
        delay = backoff_delay(self._attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng)
        self._attempt += 1
        # paho annotates int seconds but schedules with floats; sub-second delays matter in tests
        self._client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]
        self._next_delay = delay

    # ------------------------------------------------------------------ paho callbacks (paho's thread)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = True
            with self._lock:
                self._stats["failed_attempts"] += 1
            self._set_retry_delay()
            hint = refusal_hint(reason_code)
            self._error(f"broker {self.cfg.host}:{self.cfg.port} refused the connection ({reason_code}){hint}")
            return
        with self._lock:
            self._stats["connects"] += 1
            self._last_error = None
            topics = list(self._subs)
        self._attempt = 0
        self._set_retry_delay()
        max_qos = getattr(properties, "MaximumQoS", 2) if properties is not None else 2
        if max_qos < self.cfg.qos and max_qos != self._max_qos:
            log.warning("mqtt: the broker accepts QoS %d at most; detections are sent with QoS %d "
                        "(at least once: deduplicate by id)", max_qos, max_qos)
        self._max_qos = max(1, max_qos)
        recv_max = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        if recv_max is not None and recv_max < self.cfg.max_inflight:
            log.warning("mqtt: the broker accepts only %d messages in flight (Receive Maximum); "
                        "set mqtt.max_inflight <= %d", recv_max, recv_max)
        self._window.connected()
        self._connected_status.set()  # before _connected: the sender must see both together
        self._connected.set()
        log.info(
            "mqtt: connected to %s:%d (session present: %s)", self.cfg.host, self.cfg.port, flags.session_present
        )
        for topic in topics:
            client.subscribe(topic, qos=1)
        if self._discovery_labels is not None:
            self._discovery_due.set()
        self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        with self._lock:
            self._stats["failed_attempts"] += 1
        err = client.last_connect_error
        self._set_retry_delay()
        reason = f"{type(err).__name__}: {err}" if err else "unknown error"
        self._error(f"cannot connect to {self.cfg.host}:{self.cfg.port} ({reason}){connect_error_hint(err)}")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if self._stopping.is_set():
            return
        refused, self._refused = self._refused, False
        if not was and not refused:  # closed before CONNACK, e.g. TLS client certificate rejected
            with self._lock:
                self._stats["failed_attempts"] += 1
            self._set_retry_delay()
            self._error(
                f"{self.cfg.host}:{self.cfg.port} closed the connection before accepting it ({reason_code}); "
                "is it an MQTT port? check mqtt.port, mqtt.tls and the client certificate (mqtt.cert_file / key_file)"
            )
        if was:
            with self._lock:
                self._stats["disconnects"] += 1
            self._attempt = 0
            self._set_retry_delay()
            self._error(f"lost connection to {self.cfg.host}:{self.cfg.port} ({reason_code})")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._window.acknowledged(mid, reason_code)
        self._wake.set()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            cb = self._subs.get(message.topic)
        if cb is not None:
            self._dispatcher.put(cb, message.topic, bytes(message.payload))

    def _error(self, text: str) -> None:
        with self._lock:
            repeated = self._last_error == text
            self._last_error = text
        level = logging.DEBUG if repeated else logging.WARNING
        log.log(level, "mqtt: %s; retrying in %.1f s", text, self._next_delay)

    # ------------------------------------------------------------------ sender thread

    def _enqueue(self, topic: str, payload: dict) -> int | None:
        try:
            try:
                data = encode(payload)
            except ValueError:  # NaN/inf scores: still deliver, as JSON null
                data = encode(json_safe(payload))
            row_id = self.outbox.put(topic, data, qos=self.cfg.qos)
        except Exception:  # noqa: BLE001 - must never take the inference thread down
            log.exception("mqtt: could not queue a message for %s; it is lost", topic)
            with self._lock:
                self._stats["lost"] += 1
            return None
        self._wake.set()
        return row_id

    def _sender_main(self) -> None:
        next_status = float("inf")  # scheduled by the first connect
        while not self._stopping.is_set():
            self._wake.wait(timeout=max(0.0, min(1.0, next_status - time.monotonic())))
            self._wake.clear()
            if self._connected_status.is_set():
                self._connected_status.clear()
                next_status = min(next_status, time.monotonic() + CONNECT_STATUS_GRACE_S)
            try:
                self._window.apply_acks()
                if not self._connected.is_set():
                    continue
                if self._discovery_due.is_set():
                    self._discovery_due.clear()
                    self._send_discovery()
                if self._status_due.is_set() or time.monotonic() >= next_status:
                    self._status_due.clear()
                    self._send_status()
                    next_status = time.monotonic() + self.cfg.status_interval_s
                self._window.fill(self._send_row, self._stopping)
            except Exception:  # noqa: BLE001 - keep sending whatever happens
                log.exception("mqtt: sender error")
                time.sleep(0.5)
        self._window.apply_acks()

    def _send_row(self, row: OutboxRow):
        return self._client.publish(row.topic, row.payload, qos=min(row.qos, self._max_qos))

    def _send_status(self) -> None:
        fields: dict[str, Any] = {}
        if self._status_provider is not None:
            try:
                fields.update(self._status_provider() or {})
            except Exception:  # noqa: BLE001
                log.exception("mqtt: status provider failed")
        fields = status_fields(fields, self.stats())
        try:
            data = encode(status_payload(self.device, "online", fields))
        except (TypeError, ValueError):
            data = encode(json_safe(status_payload(self.device, "online", fields)))
        self._client.publish(self.status_topic, data, qos=1, retain=True)

    def _send_discovery(self) -> None:
        with self._lock:
            labels = dict(self._discovery_labels or {})
        msgs = self._discovery.plan(labels, detections_topic=self.detections_topic, status_topic=self.status_topic)
        for topic, payload in msgs:
            self._client.publish(topic, encode(payload) if payload is not None else b"", qos=1, retain=True)
        self._discovery.commit()
