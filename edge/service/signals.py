"""Signals of the daemon process: SIGTERM/SIGINT stop it cleanly, SIGHUP reloads the model.

Only the main thread may install handlers (Python's rule); a daemon run from another thread
(tests, an embedding application) is controlled through :class:`edge.contracts.DaemonControl`
instead. Handlers only set flags or start a thread: nothing slow runs inside a signal handler.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from edge.contracts import DaemonControl

log = logging.getLogger("sonotrap.daemon")


def install_signal_handlers(daemon: DaemonControl) -> list[tuple[signal.Signals, Any]]:
    """Install the handlers; returns what to restore afterwards (nothing off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return []
    restore: list[tuple[signal.Signals, Any]] = []

    def stop(signum, _frame):
        log.info("received %s, shutting down", signal.Signals(signum).name)
        daemon.request_stop()

    def hup(_signum, _frame):
        log.info("received SIGHUP, reloading the model")
        threading.Thread(target=daemon.reload_model, name="model-reload", daemon=True).start()

    for sig, handler in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, hup)):
        restore.append((sig, signal.signal(sig, handler)))
    return restore
