"""Rescue the readable rows of a damaged or unwritable outbox file, and copy rows between files.

Why a module of its own: a field recorder's SD card or a power cut can damage the outbox, and
the daemon must still start without throwing away detections that are still readable. The
outbox moves the damaged file (with its ``-wal`` and ``-shm``) aside, so it is kept for manual
salvage, reads what it can from there and starts a fresh file with those rows.

Reading: a truncated file still claims its old length in the header, which makes SQLite refuse
even the schema; a temporary copy with the page count fixed to what is really there is read
instead (the moved-aside original stays untouched). Then a plain scan in id order; when it hits a damaged page the scan resumes with single-id
probes until the next readable row, so one bad page costs only the rows stored on it. The
number of probes is bounded, so a damaged sequence number cannot make the start take forever.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("sonotrap.mqtt")

_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
MAX_PROBES = 200_000  # single-id probes after a damaged page (microseconds each)


def is_corruption(err: BaseException) -> bool:
    """True when SQLite says the file itself is damaged (not a full disk or a permission)."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPT_CODES
    text = str(err)
    return "malformed" in text or "not a database" in text


@dataclass
class Salvage:
    rows: list = field(default_factory=list)  # (id, topic, payload, qos, created)
    dropped: int = 0
    last_id: int = 0
    error: str | None = None  # why some or all rows could not be read


def move_aside(path: Path) -> Path:
    """Rename ``path`` and its ``-wal``/``-shm`` to ``<name>.corrupt-<UTC stamp>`` (same folder).

    SQLite finds a WAL by appending ``-wal`` to the database name, so the pair stays readable.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    if path.exists():
        os.replace(path, target)
    return target


def read_rows(path: Path) -> Salvage:
    """Every row that can still be read from the outbox file at ``path``, oldest first."""
    fixed = _truncation_fixed_copy(path)
    try:
        return _read(fixed or path)
    finally:
        if fixed is not None:
            fixed.unlink(missing_ok=True)


def _truncation_fixed_copy(path: Path) -> Path | None:
    """A copy of a truncated file whose header page count matches its length, else None."""
    try:
        data = bytearray(path.read_bytes())
    except OSError:
        return None
    if len(data) < 100 or not data.startswith(b"SQLite format 3\x00"):
        return None
    page = struct.unpack(">H", data[16:18])[0]
    page = 65536 if page == 1 else page
    if page < 512:
        return None
    have = len(data) // page
    if struct.unpack(">I", data[28:32])[0] <= have or have < 1:
        return None
    data[28:32] = struct.pack(">I", have)
    copy = path.with_name(path.name + ".readable")
    try:
        copy.write_bytes(bytes(data[: have * page]))
    except OSError:
        return None
    return copy


def _read(path: Path) -> Salvage:
    out = Salvage()
    conn = None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:  # e.g. a WAL file on a read-only file system: read the main file as is
        if conn is not None:
            conn.close()
        try:
            conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        except sqlite3.Error as err:
            out.error = f"cannot open ({err})"
            return out
    try:
        out.dropped = _scalar(conn, "SELECT value FROM meta WHERE key = 'dropped'")
        out.last_id = _scalar(conn, "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
        _scan(conn, out)
    finally:
        conn.close()
    if out.rows:
        out.last_id = max(out.last_id, out.rows[-1][0])
    return out


def _scalar(conn: sqlite3.Connection, sql: str) -> int:
    try:
        row = conn.execute(sql).fetchone()
    except sqlite3.Error:
        return 0
    try:
        return int(row[0]) if row else 0
    except (TypeError, ValueError):
        return 0


_COLS = "SELECT id, topic, payload, qos, created FROM outbox"


def _scan(conn: sqlite3.Connection, out: Salvage) -> None:
    after = 0
    try:
        top = int(conn.execute("SELECT MAX(id) FROM outbox").fetchone()[0] or 0)
    except (sqlite3.Error, TypeError, ValueError):
        top = out.last_id
    probes = 0
    while True:
        try:
            for row in conn.execute(f"{_COLS} WHERE id > ? ORDER BY id", (after,)):
                if _valid(row):
                    out.rows.append(row)
                after = row[0]
            return
        except sqlite3.Error as err:
            out.error = f"damaged after id {after} ({err})"
        # probe single ids past the damaged page until one reads, then scan on from there
        limit = max(top, out.last_id)
        while True:
            after += 1
            probes += 1
            if after > limit or probes > MAX_PROBES:
                return
            try:
                row = conn.execute(f"{_COLS} WHERE id = ?", (after,)).fetchone()
            except sqlite3.Error:
                continue
            if row is not None:
                if _valid(row):
                    out.rows.append(row)
                break


def _valid(row: tuple) -> bool:
    rid, topic, payload, qos, created = row
    return (
        isinstance(rid, int)
        and isinstance(topic, str)
        and isinstance(payload, (bytes, str))
        and qos in (0, 1, 2)
        and isinstance(created, (int, float))
    )


def copy_rows(conn: sqlite3.Connection, rows: list, dropped: int, last_id: int, transaction: bool = True) -> None:
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
