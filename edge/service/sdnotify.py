"""systemd's sd_notify protocol, spoken directly over ``$NOTIFY_SOCKET``.

A no-op when the daemon is not started by systemd (no ``NOTIFY_SOCKET``), so the same code
runs from a terminal, in tests and under ``Type=notify``. ``WATCHDOG=1`` must be sent from
the processing loop itself so that a stuck pipeline stops petting the watchdog and systemd
restarts the service.

Logging under systemd: when stderr is the journal (``$JOURNAL_STREAM`` names it), each line
is prefixed with its syslog priority (``<3>`` error ... ``<7>`` debug; the units keep
``SyslogLevelPrefix=yes``) and the timestamp is left to journald, so
``journalctl -u sonotrap -p warning`` shows exactly the warnings and errors.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("sonotrap.service")


_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def journal_connected(fd: int = 2) -> bool:
    """True when ``fd`` (stderr) is the journal stream systemd set up (``$JOURNAL_STREAM`` dev:inode)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message`` on every line (tracebacks keep the record's priority)."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 3 if record.levelno > logging.ERROR else 6)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines() or [""])


def configure_logging(level: int | str = logging.INFO) -> None:
    """Root logging to stderr: journald priorities under systemd, timestamps on a terminal.

    Like ``logging.basicConfig``, does nothing when the root logger already has handlers
    (an embedding application or pytest configured logging).
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JournalFormatter() if journal_connected() else logging.Formatter(CONSOLE_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)


class Notifier:
    """Sends ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1`` to systemd."""

    def __init__(self, address: str | None = None) -> None:
        self._address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        if self._address:
            if self._address.startswith("@"):  # abstract namespace socket
                self._address = "\0" + self._address[1:]
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings systemd expects (half of WatchdogSec), or None."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 1e6 / 2.0
        except ValueError:
            return None

    def notify(self, *lines: str) -> bool:
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
            return True
        except OSError as err:  # systemd gone or socket full: never crash the daemon over it
            log.debug("sd_notify failed: %s", err)
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
