"""One clean progress bar for batch analysis, with log lines printed above it, not through it.

A line written to stderr while a bar is drawn leaves half a bar behind on every line;
:meth:`Progress.capture_logging` routes the ``sonotrap`` log records through the bar so the
terminal keeps one bar at the bottom and whole lines above it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator


class _BarHandler(logging.Handler):
    def __init__(self, bar: Progress) -> None:
        super().__init__()
        self.bar = bar

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.bar.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the analysis
            self.handleError(record)


class Progress:
    """tqdm when installed (the ``train`` extra), else a plain one-line stderr bar."""

    def __init__(self, total: float, enabled: bool = True, unit: str = "s audio") -> None:
        self.total = max(total, 1e-9)
        self.done = 0.0
        self.enabled = enabled
        self._bar = None
        self._last = 0.0
        self._t0 = time.monotonic()
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=round(total, 1), unit=unit, file=sys.stderr, dynamic_ncols=True,
                             bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}]")
        except ImportError:
            self._bar = None

    def update(self, seconds: float) -> None:
        self.done += seconds
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(seconds)
            return
        now = time.monotonic()
        if now - self._last >= 0.2 or self.done >= self.total:
            self._last = now
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            speed = self.done / max(1e-9, now - self._t0)
            sys.stderr.write(f"\r[{bar:<30}] {frac * 100:5.1f}% {self.done:.0f}/{self.total:.0f} s audio, {speed:.0f}x")
            sys.stderr.flush()

    def write(self, line: str) -> None:
        """A whole line above the bar."""
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            if self.enabled:
                sys.stderr.write("\r\033[K")
            sys.stderr.write(line + "\n")

    @contextlib.contextmanager
    def capture_logging(self, logger: str = "sonotrap") -> Iterator[None]:
        """Print ``logger``'s records through the bar (and not also through the root's handlers)."""
        log = logging.getLogger(logger)
        root_handlers = logging.getLogger().handlers
        handler = _BarHandler(self)
        if root_handlers and root_handlers[0].formatter is not None:
            handler.setFormatter(root_handlers[0].formatter)
        propagate = log.propagate
        log.addHandler(handler)
        log.propagate = False
        try:
            yield
        finally:
            log.removeHandler(handler)
            log.propagate = propagate

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
