"""Detection sinks besides MQTT: JSON lines (a file or stdout) and an HTTP webhook.

Each is a :class:`edge.contracts.DetectionSink`; the daemon calls ``send_detection`` for every
message it publishes. They exist so that ``sonotrap run --jsonl -`` and a dashboard that
only speaks HTTP get exactly the payloads MQTT subscribers get.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("sonotrap.sinks")


class JsonLinesSink:
    """A JSON-lines sink: a path (appended) or '-' for stdout; flushed per line."""

    def __init__(self, target: str | Path | IO[str] | None) -> None:
        self._fh: IO[str] | None = None
        self._own = False
        if target is None:
            return
        if target == "-":
            self._fh = sys.stdout
        elif isinstance(target, str | Path):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(target, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._own = True
        else:
            self._fh = target

    def write(self, obj: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(obj, separators=(",", ":")) + "\n")
            self._fh.flush()

    def send_detection(self, payload: dict[str, Any]) -> None:
        self.write(payload)

    def close(self) -> None:
        if self._own and self._fh is not None:
            self._fh.close()
        self._fh = None


class WebhookSink:
    """POSTs each detection as JSON to ``url`` from its own thread (the audio loop never waits).

    Best effort with a bounded queue: a slow or dead endpoint costs dropped webhook calls
    (counted in :meth:`stats`), never audio or the MQTT outbox. ``max_queue`` bounds memory.
    """

    def __init__(self, url: str, *, timeout_s: float = 5.0, max_queue: int = 1000,
                 headers: dict[str, str] | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url {url!r} must start with http:// or https://")
        self.url = url
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self._stats = {"sent": 0, "failed": 0, "dropped": 0}
        self._thread = threading.Thread(target=self._main, name="webhook-sink", daemon=True)
        self._thread.start()

    def send_detection(self, payload: dict[str, Any]) -> None:
        try:
            self._q.put_nowait(payload)
        except queue.Full:
            self._stats["dropped"] += 1

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout``), then stop the thread."""
        try:
            self._q.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)

    def _main(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            body = json.dumps(item, separators=(",", ":")).encode()
            req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - http(s) checked
                    resp.read(1024)
                self._stats["sent"] += 1
            except (urllib.error.URLError, OSError, ValueError) as err:
                self._stats["failed"] += 1
                log.warning("webhook %s failed: %s", self.url, err)
