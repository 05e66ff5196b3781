"""``cmd/update`` inside the running daemon: updates in a worker thread, reported as events.

The MQTT network thread only hands the payload over; the procedure (download, verify in a
subprocess, health check) runs in its own thread so MQTT and audio keep flowing.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from edge.config import Config
from edge.models.store import CURRENT, store_root
from edge.models.update.daemon_control import InProcessDaemon
from edge.models.update.procedure import Updater


def attach_mqtt_updates(cfg: Config, daemon: Any, publisher: Any, config_path: str | Path | None = None) -> Updater:
    """Subscribe ``cmd/update`` on ``publisher`` and act on it against the in-process ``daemon``."""
    model_path = cfg.model.bundle or str(store_root(cfg.state_dir) / CURRENT)
    updater = Updater(cfg, daemon=InProcessDaemon(daemon, model_path), report=publisher.publish_event,
                      config_path=config_path)

    def on_message(_topic: str, payload: bytes) -> None:
        if updater.busy():
            updater.report("update_rejected", reason="another update is in progress; try again later")
            return
        threading.Thread(target=updater.run_command, args=(payload,), name="sonotrap-update", daemon=True).start()

    publisher.subscribe("cmd/update", on_message)
    return updater
