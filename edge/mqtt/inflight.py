"""The in-flight window between the outbox and the MQTT client: order kept, rows deleted on ack.

Why it is its own piece: the delivery guarantee lives here. Outbox rows go to the client
oldest-first, at most ``size`` unacknowledged, and a row leaves the outbox only when its
acknowledgement arrives (a broker's rejection is logged, counted and dropped, so one bad
message cannot block the queue forever). Acknowledgements arrive on paho's network thread and
are only queued there; they are applied on the sender thread, so no lock is ever held across
a call into paho (that deadlocks).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from edge.mqtt.connection import PUBLISH_QUEUED
from edge.mqtt.outbox import Outbox, OutboxRow

log = logging.getLogger("sonotrap.mqtt")


class InflightWindow:
    """Hands outbox rows to ``send`` and deletes them as their acknowledgements come back."""

    def __init__(self, outbox: Outbox, size: int) -> None:
        self.outbox = outbox
        self.size = size
        self.published = 0  # rows the broker acknowledged
        self.rejected = 0  # rows the broker refused (dropped)
        self._acks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _inflight for readers on other threads (stats)
        self._inflight: dict[int, int] = {}  # client message id -> outbox row id
        self._last_sent_id = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._inflight)

    def acknowledged(self, mid: int, reason_code: Any) -> None:
        """paho's ``on_publish`` (its network thread): queue the ack, nothing else."""
        self._acks.put((mid, reason_code))

    def apply_acks(self) -> None:
        """Delete every acknowledged row received so far, in one transaction."""
        done: list[int] = []
        while True:
            try:
                mid, reason_code = self._acks.get_nowait()
            except queue.Empty:
                break
            with self._lock:
                row_id = self._inflight.pop(mid, None)
            if row_id is None:
                continue  # status / discovery / offline messages
            if getattr(reason_code, "is_failure", False):
                log.error("mqtt: broker rejected outbox message %d (%s); dropping it", row_id, reason_code)
                self.rejected += 1
            else:
                self.published += 1
            done.append(row_id)
        self.outbox.ack_many(done)

    def fill(self, send: Callable[[OutboxRow], Any], stop: threading.Event) -> None:
        """Hand the oldest unsent rows to ``send`` (returns paho's message info) while there is room."""
        while not stop.is_set():
            room = self.size - len(self)
            if room <= 0:
                return
            rows = self.outbox.pending(after_id=self._last_sent_id, limit=room)
            if not rows:
                return
            for row in rows:
                info = send(row)
                if info.rc not in PUBLISH_QUEUED:
                    log.warning("mqtt: publish of outbox row %d failed (%s); will retry", row.id, info.rc)
                    return
                with self._lock:
                    self._inflight[info.mid] = row.id
                self._last_sent_id = row.id
