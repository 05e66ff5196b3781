"""Subscription callbacks run on their own thread, so a slow handler (an update command that
downloads a model) never blocks paho's network thread, and with it every PUBACK and ping."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("sonotrap.mqtt")

Handler = Callable[[str, bytes], None]


class Dispatcher:
    """One worker thread calling ``handler(topic, payload)`` in arrival order."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Handler, str, bytes] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="mqtt-callbacks", daemon=True)
        self._thread.start()

    def put(self, handler: Handler, topic: str, payload: bytes) -> None:
        """Queue one message for its handler (called from paho's thread: never blocks)."""
        self._queue.put((handler, topic, payload))

    def stop(self, timeout: float) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            handler, topic, payload = item
            try:
                handler(topic, payload)
            except Exception:  # noqa: BLE001 - a handler's bug must not stop the others
                log.exception("mqtt: handler for %s failed", topic)
