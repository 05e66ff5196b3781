"""The outbox's SQLite file: schema, pragmas (WAL, synchronous), integrity check, small helpers.

Kept apart from :mod:`edge.mqtt.outbox` (the queue's behaviour: bounds, acks, disk trouble)
so that how the file is opened and checked is visible in one place.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL DEFAULT 1,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def open_db(synchronous: str, target: str) -> sqlite3.Connection:
    """A connection with the schema; on disk in WAL mode with ``synchronous`` (normal|full)."""
    conn = sqlite3.connect(target, check_same_thread=False, isolation_level=None, timeout=5.0)
    if target != ":memory:":
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise sqlite3.OperationalError(f"journal_mode is {mode}, WAL not available")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.executescript(SCHEMA)
    return conn


def open_checked(path: Path | None, synchronous: str) -> sqlite3.Connection:
    """Open the file and make sure SQLite can read all of it (a damaged page raises)."""
    assert path is not None
    conn = open_db(synchronous, str(path))
    try:
        result = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        if result != ["ok"]:
            raise sqlite3.DatabaseError(f"database disk image is malformed: {'; '.join(result[:3])}")
    except BaseException:
        conn.close()
        raise
    return conn


def read_dropped(conn: sqlite3.Connection) -> int:
    """How many rows the bound has dropped so far (persisted with the rows)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
    return int(row[0]) if row else 0


def as_bytes(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass
