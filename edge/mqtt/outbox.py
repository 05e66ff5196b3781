"""Store-and-forward queue on disk: every outgoing QoS-1 message lives here until PUBACK.

SQLite in WAL mode. ``put`` commits before it returns, so a detection survives a crash or a
power cut from that moment; the publisher deletes a row only when the broker acknowledged
it (``ack``), so delivery is at-least-once and subscribers dedup by the payload ``id``.

Durability: ``synchronous=FULL`` by default. With WAL, NORMAL only loses transactions on a
*power cut* (not on a process crash), but a battery-powered field recorder losing power is
the normal way it dies, and detections are a few per minute, so one fsync per commit costs
nothing measurable. ``outbox.synchronous = "normal"`` is there for slow SD cards.

Bounded: at most ``max_messages`` rows; beyond that the *oldest* rows are deleted and
counted in ``dropped`` (persisted in the same transaction, reported in status).

In-flight bookkeeping is the publisher's (memory only): after a restart every row is re-sent.

Disk full, read-only or I/O error: the outbox logs one clear error, moves its rows into an
in-memory SQLite database and keeps going (``mode == "memory"``, ``error`` says why); every
``retry_s`` (and once more at ``close``) it tries to write everything back to disk and returns
to ``mode == "disk"``. It never claims more than is true: ``stats()["unpersisted"]`` counts the
pending rows that exist only in memory (lost if the process dies), and ``close`` logs how many
rows are on disk for the next start and how many are lost. Rows acked meanwhile may be sent
again after a restart (at-least-once, dedup by ``id``).

A damaged file (corrupted page, truncated, not SQLite at all) is never run in memory and never
fatal: it is moved aside as ``outbox.sqlite.corrupt-<stamp>`` (kept for manual salvage), its
readable rows are copied into a fresh file (``edge.mqtt.salvage``) and ``recovered`` says what
happened (the publisher turns it into an event; it is also in ``stats``).
Thread-safe: one connection guarded by a lock; every call is short.  File level:
:mod:`edge.mqtt.outbox_db`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge.config import OutboxConfig
from edge.errors import SonotrapError
from edge.mqtt.outbox_db import as_bytes, open_checked, open_db, read_dropped, rollback
from edge.mqtt.salvage import copy_rows, is_corruption, move_aside, read_rows

log = logging.getLogger("sonotrap.mqtt")

SYNCHRONOUS = ("normal", "full")


@dataclass
class OutboxRow:
    id: int  # strictly increasing (AUTOINCREMENT): id order is send order
    topic: str
    payload: bytes
    qos: int
    created: float  # epoch seconds when put() committed it


class Outbox:
    """Durable FIFO of MQTT messages; see the module docstring for the guarantees."""

    def __init__(
        self,
        path: str | Path | None,
        max_messages: int = 100_000,
        synchronous: str = "full",
        retry_s: float = 60.0,
    ) -> None:
        if max_messages < 1:
            raise SonotrapError(f"outbox: max_messages {max_messages} must be >= 1; raise it")
        if synchronous not in SYNCHRONOUS:
            raise SonotrapError(f"outbox: synchronous {synchronous!r} must be 'normal' or 'full'")
        self.path = Path(path) if path is not None else None
        self.max_messages = max_messages
        self.synchronous = synchronous
        self.retry_s = retry_s
        self._lock = threading.RLock()
        self._error: str | None = None
        self._next_retry = 0.0
        self._closed = False
        self._disk_high = 0
        self.recovered: dict | None = None  # set when a damaged file was moved aside
        if self.path is None:
            self._conn = open_db(self.synchronous, ":memory:")
            self._mode = "memory"
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = open_checked(self.path, self.synchronous)
                self._mode = "disk"
            except (OSError, sqlite3.Error) as err:
                self._conn, self._mode = self._open_fallback(err)
        self._depth = self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        self._dropped = read_dropped(self._conn)
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        self._last_id = int(row[0]) if row else 0
        # newest id committed to the file; in memory mode, rows above it exist only in memory
        if self._mode == "disk":
            self._disk_high = self._last_id

    @classmethod
    def from_config(cls, cfg: OutboxConfig, state_dir: str | Path) -> Outbox:
        """The daemon's outbox: ``outbox.path`` or ``<state_dir>/outbox.sqlite``."""
        path = cfg.path or Path(state_dir) / "outbox.sqlite"
        return cls(path, max_messages=cfg.max_messages, synchronous=cfg.synchronous, retry_s=cfg.retry_s)

    # ------------------------------------------------------------------ public

    def put(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """Append a message and commit it (durable on return); returns its row id."""
        with self._lock:
            self._maybe_back_to_disk()
            try:
                row_id = self._put(topic, payload, qos)
            except sqlite3.Error as err:
                if self._mode != "disk":
                    raise
                self._on_disk_error(err, f"cannot write {self.path} ({err})")
                row_id = self._put(topic, payload, qos)
            if self._mode == "disk":
                self._disk_high = row_id
            return row_id

    def pending(self, after_id: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Up to ``limit`` rows with ``id > after_id``, oldest first."""
        sql = "SELECT id, topic, payload, qos, created FROM outbox WHERE id > ? ORDER BY id LIMIT ?"
        with self._lock:
            try:
                rows = self._conn.execute(sql, (after_id, limit)).fetchall()
            except sqlite3.Error as err:
                if self._mode != "disk":
                    raise
                self._on_disk_error(err, f"cannot read {self.path} ({err})")
                rows = self._conn.execute(sql, (after_id, limit)).fetchall()
        return [OutboxRow(r[0], r[1], as_bytes(r[2]), r[3], r[4]) for r in rows]

    def ack(self, row_id: int) -> bool:
        """Delete a row the broker acknowledged; False if it was already gone (dropped)."""
        with self._lock:
            if self._closed:
                return False
            try:
                return self._delete(row_id)
            except sqlite3.Error as err:
                if self._mode != "disk":
                    raise
                self._on_disk_error(err, f"cannot delete from {self.path} ({err})")
                return self._delete(row_id)

    def ack_many(self, row_ids: list[int]) -> int:
        """Delete several acknowledged rows in one transaction (one fsync); returns how many existed."""
        if not row_ids:
            return 0
        with self._lock:
            if self._closed:
                return 0
            try:
                return self._delete_many(row_ids)
            except sqlite3.Error as err:
                if self._mode != "disk":
                    raise
                self._on_disk_error(err, f"cannot delete from {self.path} ({err})")
                return self._delete_many(row_ids)

    def depth(self) -> int:
        with self._lock:
            return self._depth

    @property
    def dropped(self) -> int:
        """Rows deleted unsent by the drop-oldest policy, over the outbox's whole life."""
        with self._lock:
            return self._dropped

    @property
    def mode(self) -> str:
        """``disk`` (durable) or ``memory`` (disk failed; see ``error``)."""
        return self._mode

    def unpersisted(self) -> int:
        """Pending rows that exist only in memory (lost if the process dies now)."""
        with self._lock:
            if self._mode == "disk" or self._closed:
                return 0
            if self.path is None:
                return self._depth
            return self._conn.execute("SELECT COUNT(*) FROM outbox WHERE id > ?", (self._disk_high,)).fetchone()[0]

    def stats(self) -> dict:
        unpersisted = self.unpersisted()
        with self._lock:
            out = {
                "depth": self._depth,
                "unpersisted": unpersisted,
                "dropped": self._dropped,
                "max_messages": self.max_messages,
                "mode": self._mode,
                "error": self._error,
                "path": str(self.path) if self.path else None,
            }
            if self.recovered is not None:
                out["recovered"] = dict(self.recovered)
            return out

    def close(self) -> tuple[int, int]:
        """Last try to get memory-only rows onto disk, then close; logs and returns the truth:
        ``(pending rows on disk for the next start, pending rows lost with this process)``."""
        with self._lock:
            if self._closed:
                return 0, 0
            if self._mode == "memory":
                self._next_retry = 0.0
                self._maybe_back_to_disk()
            lost = self.unpersisted()
            kept = self._depth - lost if self.path is not None else 0
            lost = lost if self.path is not None else self._depth
            self._closed = True
            self._conn.close()
        if lost:
            log.error(
                "outbox: %d undelivered message(s) are on disk and are sent on the next start; %d held only "
                "in memory are lost (%s)", kept, lost, self._error or "no outbox file")
        elif kept:
            log.info("outbox: %d undelivered message(s) are on disk and are sent on the next start", kept)
        return kept, lost

    # ---------------------------------------------------------------- internals

    def _open_fallback(self, err: BaseException) -> tuple[sqlite3.Connection, str]:
        """The file could not be opened: recover a damaged one, else run in memory (salvaged)."""
        if isinstance(err, sqlite3.Error) and is_corruption(err):
            try:
                return self._recover(err), "disk"
            except (OSError, sqlite3.Error) as again:
                err = again
        self._fail(f"cannot open {self.path} ({err})")
        self._conn = open_db(self.synchronous, ":memory:")
        self._salvage()
        return self._conn, "memory"

    def _recover(self, err: BaseException) -> sqlite3.Connection:
        """Move a damaged file aside, copy its readable rows into a fresh file, say so."""
        assert self.path is not None
        aside = move_aside(self.path)
        got = read_rows(aside)
        conn = open_db(self.synchronous, str(self.path))
        rows = [(r[0], r[1], sqlite3.Binary(as_bytes(r[2])), r[3], r[4]) for r in got.rows[-self.max_messages:]]
        copy_rows(conn, rows, got.dropped, got.last_id)
        self.recovered = {"error": str(err), "moved_to": str(aside), "recovered_rows": len(rows),
                          "unreadable": got.error}
        log.error(
            "outbox: %s is damaged (%s); moved it to %s and recovered %d pending message(s) into a fresh "
            "file%s", self.path, err, aside, len(rows), f" ({got.error})" if got.error else "")
        return conn

    def _on_disk_error(self, err: sqlite3.Error, what: str) -> None:
        """A disk write/read failed: a damaged file is replaced, anything else goes to memory."""
        if is_corruption(err):
            self._conn.close()
            self._conn = self._recover(err)
            self._depth = self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            self._disk_high = self._last_id = max(self._last_id, self._recovered_seq())
            return
        self._to_memory(what)

    def _recovered_seq(self) -> int:
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    def _put(self, topic: str, payload: bytes, qos: int) -> int:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            excess = self._depth + 1 - self.max_messages
            dropped_now = 0
            if excess > 0:
                cur = conn.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,)
                )
                dropped_now = cur.rowcount
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES('dropped', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                    (dropped_now,),
                )
            cur = conn.execute(
                "INSERT INTO outbox(topic, payload, qos, created) VALUES (?, ?, ?, ?)",
                (topic, sqlite3.Binary(payload), qos, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        if dropped_now:
            self._dropped += dropped_now
            self._depth -= dropped_now
            log.warning(
                "outbox full (%d messages): dropped the %d oldest (%d dropped in total)",
                self.max_messages,
                dropped_now,
                self._dropped,
            )
        self._depth += 1
        assert cur.lastrowid is not None  # an INSERT always sets it
        self._last_id = int(cur.lastrowid)
        return self._last_id

    def _delete(self, row_id: int) -> bool:
        cur = self._conn.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
        if cur.rowcount:
            self._depth -= 1
            return True
        return False

    def _salvage(self) -> None:
        """Copy the pending rows of an unwritable outbox file into memory (read-only open)."""
        if self.path is None or not self.path.is_file():
            return
        got = read_rows(self.path)
        if got.error:
            log.error("outbox: cannot read all pending messages in %s either (%s)", self.path, got.error)
        rows = [(r[0], r[1], sqlite3.Binary(as_bytes(r[2])), r[3], r[4]) for r in got.rows]
        copy_rows(self._conn, rows, got.dropped, got.last_id)
        self._disk_high = max((r[0] for r in rows), default=0)  # these are still in the file
        log.warning("outbox: %d pending message(s) from %s are now held in memory", len(rows), self.path)

    def _delete_many(self, row_ids: list[int]) -> int:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            n = 0
            for i in range(0, len(row_ids), 500):
                chunk = row_ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                n += conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk).rowcount
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        self._depth -= n
        return n

    def _fail(self, what: str) -> None:
        self._error = what
        self._next_retry = time.monotonic() + self.retry_s
        log.error(
            "outbox: %s; keeping messages in memory (lost if the process dies) and retrying the disk "
            "every %.0f s — free disk space or fix permissions of outbox.path",
            what,
            self.retry_s,
        )

    def _to_memory(self, what: str) -> None:
        """Disk write failed: copy what we can read into memory and continue there."""
        self._fail(what)
        mem = open_db(self.synchronous, ":memory:")
        try:
            rows = self._conn.execute("SELECT id, topic, payload, qos, created FROM outbox").fetchall()
            dropped = read_dropped(self._conn)
        except sqlite3.Error as err:
            log.error("outbox: cannot read %s either (%s); pending messages there wait for a restart",
                      self.path, err)
            rows, dropped = [], self._dropped
        copy_rows(mem, rows, dropped, self._last_id)
        try:
            self._conn.close()
        except sqlite3.Error:
            pass
        self._conn = mem
        self._mode = "memory"
        self._depth = len(rows)
        self._dropped = dropped

    def _maybe_back_to_disk(self) -> None:
        if self._mode != "memory" or self.path is None or time.monotonic() < self._next_retry:
            return
        self._next_retry = time.monotonic() + self.retry_s
        try:
            disk = open_db(self.synchronous, str(self.path))
            rows = self._conn.execute("SELECT id, topic, payload, qos, created FROM outbox").fetchall()
            disk.execute("BEGIN IMMEDIATE")
            try:
                disk.execute("DELETE FROM outbox")
                copy_rows(disk, rows, self._dropped, self._last_id, transaction=False)
                disk.execute("COMMIT")
            except BaseException:
                rollback(disk)
                disk.close()
                raise
        except (OSError, sqlite3.Error) as err:
            log.warning("outbox: disk %s still not writable (%s); staying in memory", self.path, err)
            return
        self._conn.close()
        self._conn = disk
        self._mode = "disk"
        self._error = None
        self._disk_high = self._last_id
        log.warning("outbox: back on disk at %s with %d pending messages", self.path, len(rows))
