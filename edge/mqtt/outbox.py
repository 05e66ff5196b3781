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

In-flight bookkeeping is the publisher's and lives in memory only, so after a restart every
row is pending again and is re-sent oldest-first.

Disk full, read-only or I/O error: the outbox logs one clear error, moves its rows into an
in-memory SQLite database and keeps going (``mode == "memory"``, ``error`` says why); every
``retry_s`` it tries to write everything back to disk and returns to ``mode == "disk"``.
Rows held only in memory are lost if the process dies meanwhile; rows acked meanwhile may be
sent again after a restart (at-least-once, dedup by ``id``).

Thread-safe: one connection guarded by a lock; every call is short.
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

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL DEFAULT 1,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

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
        if self.path is None:
            self._conn = self._open(":memory:")
            self._mode = "memory"
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = self._open(str(self.path))
                self._mode = "disk"
            except (OSError, sqlite3.Error) as err:
                if isinstance(err, sqlite3.DatabaseError) and "not a database" in str(err):
                    raise SonotrapError(
                        f"outbox {self.path} is not an SQLite database ({err}); move it away or set outbox.path"
                    ) from None
                self._fail(f"cannot open {self.path} ({err})")
                self._conn = self._open(":memory:")
                self._mode = "memory"
                self._salvage()
        self._depth = self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        self._dropped = self._read_dropped(self._conn)
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        self._last_id = int(row[0]) if row else 0

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
                return self._put(topic, payload, qos)
            except sqlite3.Error as err:
                if self._mode != "disk":
                    raise
                self._to_memory(f"cannot write {self.path} ({err})")
                return self._put(topic, payload, qos)

    def pending(self, after_id: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Up to ``limit`` rows with ``id > after_id``, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, topic, payload, qos, created FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [OutboxRow(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    def ack(self, row_id: int) -> bool:
        """Delete a row the broker acknowledged; False if it was already gone (dropped)."""
        with self._lock:
            try:
                return self._delete(row_id)
            except sqlite3.Error as err:
                if self._mode != "disk":
                    raise
                self._to_memory(f"cannot delete from {self.path} ({err})")
                return self._delete(row_id)

    def ack_many(self, row_ids: list[int]) -> int:
        """Delete several acknowledged rows in one transaction (one fsync); returns how many existed."""
        if not row_ids:
            return 0
        with self._lock:
            try:
                return self._delete_many(row_ids)
            except sqlite3.Error as err:
                if self._mode != "disk":
                    raise
                self._to_memory(f"cannot delete from {self.path} ({err})")
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

    def stats(self) -> dict:
        with self._lock:
            return {
                "depth": self._depth,
                "dropped": self._dropped,
                "max_messages": self.max_messages,
                "mode": self._mode,
                "error": self._error,
                "path": str(self.path) if self.path else None,
            }

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    # ---------------------------------------------------------------- internals

    def _open(self, target: str) -> sqlite3.Connection:
        conn = sqlite3.connect(target, check_same_thread=False, isolation_level=None, timeout=5.0)
        if target != ":memory:":
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.close()
                raise sqlite3.OperationalError(f"journal_mode is {mode}, WAL not available")
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        conn.executescript(_SCHEMA)
        return conn

    @staticmethod
    def _read_dropped(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
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
            _rollback(conn)
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
        try:
            ro = sqlite3.connect(f"file:{self.path}?immutable=1", uri=True)
            try:
                rows = ro.execute("SELECT id, topic, payload, qos, created FROM outbox ORDER BY id").fetchall()
                dropped = self._read_dropped(ro)
                seq = ro.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            finally:
                ro.close()
        except sqlite3.Error as err:
            log.error("outbox: cannot read the pending messages in %s either (%s)", self.path, err)
            return
        _copy_rows(self._conn, rows, dropped, int(seq[0]) if seq else 0)
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
            _rollback(conn)
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
        mem = self._open(":memory:")
        try:
            rows = self._conn.execute("SELECT id, topic, payload, qos, created FROM outbox").fetchall()
            dropped = self._read_dropped(self._conn)
        except sqlite3.Error as err:
            log.error("outbox: cannot read %s either (%s); pending messages there wait for a restart",
                      self.path, err)
            rows, dropped = [], self._dropped
        _copy_rows(mem, rows, dropped, self._last_id)
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
            disk = self._open(str(self.path))
            rows = self._conn.execute("SELECT id, topic, payload, qos, created FROM outbox").fetchall()
            disk.execute("BEGIN IMMEDIATE")
            try:
                disk.execute("DELETE FROM outbox")
                _copy_rows(disk, rows, self._dropped, self._last_id, transaction=False)
                disk.execute("COMMIT")
            except BaseException:
                _rollback(disk)
                disk.close()
                raise
        except (OSError, sqlite3.Error) as err:
            log.warning("outbox: disk %s still not writable (%s); staying in memory", self.path, err)
            return
        self._conn.close()
        self._conn = disk
        self._mode = "disk"
        self._error = None
        log.warning("outbox: back on disk at %s with %d pending messages", self.path, len(rows))


def _copy_rows(conn: sqlite3.Connection, rows: list, dropped: int, last_id: int, transaction: bool = True) -> None:
    """Insert rows keeping their ids, the id sequence (ids are never reused, so in-flight ids
    stay valid) and the dropped counter."""
    if transaction:
        conn.execute("BEGIN")
    conn.executemany("INSERT INTO outbox(id, topic, payload, qos, created) VALUES (?, ?, ?, ?, ?)", rows)
    conn.execute(
        "INSERT INTO meta(key, value) VALUES('dropped', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (dropped,),
    )
    conn.execute("DELETE FROM sqlite_sequence WHERE name = 'outbox'")
    conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('outbox', ?)", (last_id,))
    if transaction:
        conn.execute("COMMIT")


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass
