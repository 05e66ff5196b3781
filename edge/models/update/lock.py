"""One update activity at a time per device, across processes: ``<state_dir>/update.lock``.

Updates start from several processes -- the daemon's MQTT ``cmd/update``, ``sonotrap update``
by hand or from ``sonotrap-update.timer``, ``sonotrap model activate|rollback|install`` -- and
two at once would mean two downloads, two verifications and interleaved status and events.
So the whole activity (check, download, verify, install, switch, health check, rollback)
holds an exclusive ``flock`` on one file in the state directory. It is taken without waiting:
a second activity is refused at once with :class:`UpdateBusy`, whose one-line message names
the holder (pid, activity, start time -- the holder writes them into the lock file).

``flock`` belongs to the open file, so it also excludes a second thread of the same process
(each acquisition opens the file anew), and the kernel drops it when the holder dies: a
crashed or SIGKILLed update never leaves a stale lock behind, only stale text in the file,
which the next holder overwrites and nobody reads while the lock is free.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from edge.errors import SonotrapError

LOCK_FILE = "update.lock"
BUSY_EXIT_STATUS = 75  # EX_TEMPFAIL (sysexits.h): try again later


class UpdateBusy(SonotrapError):
    """Another update activity holds the device's update lock; ``str(err)`` names it."""

    exit_status = BUSY_EXIT_STATUS


class Lease:
    """A held update lock; :meth:`release` (or leaving the ``with`` block) frees it."""

    def __init__(self, fd: int, activity: str) -> None:
        self._fd: int | None = fd
        self.activity = activity

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # still ours here: nobody reads a half-written holder
        os.close(fd)  # drops the flock

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class UpdateLock:
    """The device's update lock file; :meth:`acquire` never waits."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE

    def acquire(self, activity: str) -> Lease:
        """Take the lock for ``activity`` or raise :class:`UpdateBusy` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UpdateBusy(self._busy_message(activity)) from None
        except BaseException:
            os.close(fd)
            raise
        holder = {"pid": os.getpid(), "activity": activity[:80], "started": time.time()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError:  # a full disk must not stop an update: the lock itself is held
            pass
        return Lease(fd, activity)

    @contextlib.contextmanager
    def hold(self, activity: str) -> Iterator[Lease]:
        """``with lock.hold("update"):`` -- the activity, refused at once when another runs."""
        lease = self.acquire(activity)
        try:
            yield lease
        finally:
            lease.release()

    def holder(self) -> dict:
        """What the holder wrote (pid, activity, started); only meaningful while the lock is held.

        Read without touching the lock (even a shared probe could refuse a third activity).
        The holder writes right after taking the lock, so an empty file is read again briefly.
        """
        text = b""
        with contextlib.suppress(OSError):
            for _ in range(5):
                text = self.path.read_bytes()[:512]
                if text.strip():
                    break
                time.sleep(0.02)
        try:
            doc = json.loads(text)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def _busy_message(self, activity: str) -> str:
        holder = self.holder()
        what = str(holder.get("activity") or "another update activity")[:80]
        pid = holder.get("pid")
        started = holder.get("started")
        since = ""
        if isinstance(started, (int, float)):
            since = (f", started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(started))}"
                     f", {max(0.0, time.time() - started):.0f} s ago")
        who = f" (pid {pid}{since})" if isinstance(pid, int) else ""
        return (f"{activity} refused: {what}{who} holds the update lock {self.path}; "
                "try again when it has finished")
