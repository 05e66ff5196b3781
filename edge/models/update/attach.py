"""``cmd/update`` inside the running daemon: signed commands only, one update at a time.

The MQTT callback thread checks the command (:mod:`.command_auth`: signed by a fleet key,
addressed to this device, fresh, small), takes the device's update lock (:mod:`.lock`) and
hands both to one worker thread; the procedure (download, verify in a subprocess, health
check) runs there so MQTT and audio keep flowing. While any update activity runs -- this
daemon's worker, or ``sonotrap update`` / ``sonotrap model`` in another process -- further
commands are refused at once (the reason names the holder) rather than queued, so a flood
of commands never makes more than one thread. Refused commands are counted in
``update-status.json`` (``commands``) and reported as a ``command_rejected`` event at most once
per ``REPORT_INTERVAL_S`` -- the reason only, never the payload.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.config import Config
from edge.models.store import CURRENT, store_root
from edge.models.update.command_auth import CommandGate, CommandRefused
from edge.models.update.daemon_control import InProcessDaemon
from edge.models.update.lock import Lease, UpdateBusy
from edge.models.update.procedure import Updater

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 60.0


class RefusalCounter:
    """Counts refused commands; reports the first of each interval, with how many were suppressed."""

    def __init__(self, updater: Updater, interval_s: float = REPORT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.updater = updater
        self.interval_s = interval_s
        self.clock = clock
        self.refused = 0
        self.accepted = 0
        self._suppressed = 0
        self._last_report: float | None = None
        self._lock = threading.Lock()

    def refuse(self, reason: str) -> None:
        reason = reason[:200]
        with self._lock:
            self.refused += 1
            now = self.clock()
            self._record(reason)  # a small fixed-size record: the count stays exact, the file bounded
            if self._last_report is not None and now - self._last_report < self.interval_s:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last_report = self._suppressed, 0, now
        self.updater.report("command_rejected", reason=reason, refused_total=self.refused, suppressed=suppressed)

    def accept(self) -> None:
        with self._lock:
            self.accepted += 1
            self._record(None)

    def _record(self, reason: str | None) -> None:
        doc: dict[str, Any] = {"accepted": self.accepted, "refused": self.refused}
        if reason is not None:
            doc["last_refused"] = {"time": time.time(), "reason": reason}
        try:
            self.updater.status.set_commands(doc)
        except OSError as err:
            log.warning("could not record command counts: %s", err)


class CommandHandler:
    """``cmd/update`` -> verified command -> the one update worker thread."""

    def __init__(self, updater: Updater, gate: CommandGate, topic: str = "update") -> None:
        self.updater = updater
        self.gate = gate
        self.topic = topic
        self.counter = RefusalCounter(updater)
        self.worker: threading.Thread | None = None

    def __call__(self, _topic: str, payload: bytes) -> None:
        try:
            cmd = self.gate.check(payload, self.topic)
        except CommandRefused as err:
            self.counter.refuse(str(err))
            return
        try:  # held until the worker ends: at most one worker, and no other process updates
            lease = self.updater.lock.acquire("MQTT cmd/update")
        except UpdateBusy as err:
            self.counter.refuse(str(err))
            return
        try:
            self.counter.accept()
            body = json.dumps(cmd.command).encode()
            self.worker = threading.Thread(target=self._run, args=(body, lease), name="sonotrap-update", daemon=True)
            self.worker.start()
        except BaseException:
            lease.release()
            raise

    def _run(self, body: bytes, lease: Lease) -> None:
        try:
            self.updater.run_command(body, lease=lease)
        except Exception as err:  # the worker must never die silently: the old model keeps running
            log.exception("update command failed")
            self.updater.report("update_failed", reason=f"internal error: {type(err).__name__}: {str(err)[:200]}")
        finally:
            lease.release()


def attach_mqtt_updates(cfg: Config, daemon: Any, publisher: Any, config_path: str | Path | None = None) -> Updater:
    """Subscribe ``cmd/update`` on ``publisher`` and act on signed commands against ``daemon``."""
    model_path = cfg.model.bundle or str(store_root(cfg.state_dir) / CURRENT)
    updater = Updater(cfg, daemon=InProcessDaemon(daemon, model_path), report=publisher.publish_event,
                      config_path=config_path)
    gate = CommandGate(publisher.device, updater.trusted_keys, cfg.state_dir, window_s=cfg.update.command_window_s)
    publisher.subscribe("cmd/update", CommandHandler(updater, gate))
    return updater
