"""The in-flight window between the outbox and the MQTT client: order kept, rows deleted on ack.

Why it is its own piece: the delivery guarantee lives here. Outbox rows go to the client
oldest-first, at most ``size`` unacknowledged, and a row leaves the outbox only when its
acknowledgement arrives (a broker's rejection is logged, counted and dropped, so one bad
message cannot block the queue forever). Acknowledgements arrive on paho's network thread and
are only queued there; they are applied on the sender thread, so no lock is ever held across
a call into paho (that deadlocks).

Order across a reconnect: paho re-sends the rows that were in flight when the connection
dropped, but only after it has run ``on_connect``, so a row handed to it from the sender thread
in between goes out first and can overtake them. So after a drop no newer row is sent until
every row carried over is acknowledged (or, should one never be, ``CARRIED_WAIT_S`` after the
reconnect, with a warning: a stalled queue loses more than an out-of-order one).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from edge.mqtt.connection import PUBLISH_QUEUED
from edge.mqtt.outbox import Outbox, OutboxRow

log = logging.getLogger("sonotrap.mqtt")
CARRIED_WAIT_S = 30.0  # longest wait for the re-sent rows' acks before newer rows go out anyway


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
        self._carried: set[int] = set()  # message ids paho re-sends after a reconnect
        self._carried_deadline = 0.0

    def connected(self) -> None:
        """paho's ``on_connect``: whatever is in flight now, paho re-sends right after; newer rows wait for it."""
        with self._lock:
            self._carried = set(self._inflight)
            self._carried_deadline = time.monotonic() + CARRIED_WAIT_S

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
                self._carried.discard(mid)
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
        if self._waiting_for_carried():
            return
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

    def _waiting_for_carried(self) -> bool:
        with self._lock:
            if not self._carried:
                return False
            if time.monotonic() < self._carried_deadline:
                return True
            log.warning("mqtt: %d messages re-sent after the reconnect are still unacknowledged after %.0f s; "
                        "sending newer detections anyway (order may differ)", len(self._carried), CARRIED_WAIT_S)
            self._carried.clear()
            return False
