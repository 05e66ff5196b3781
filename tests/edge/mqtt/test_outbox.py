"""The SQLite outbox on real files: durability, order, drop-oldest, disk full / read-only."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge.errors import SonotrapError
from edge.mqtt.outbox import Outbox
from tests.support.disk import fill_fs
from tests.support.paths import REPO


def test_put_commits_in_wal_mode_and_rows_come_back_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, synchronous="full")
    ids = [box.put("t/detections", f"m{i}".encode()) for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    # a second, independent connection sees the committed rows (nothing buffered in Python)
    other = sqlite3.connect(path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 5
    other.close()
    assert [r.payload for r in box.pending()] == [f"m{i}".encode() for i in range(5)]
    assert [r.payload for r in box.pending(after_id=ids[2])] == [b"m3", b"m4"]
    assert box.ack(ids[0]) and not box.ack(ids[0])
    assert box.depth() == 4
    box.close()
    again = Outbox(path)
    assert [r.id for r in again.pending()] == ids[1:]
    assert again.depth() == 4
    again.close()


def test_a_row_survives_sigkill_right_after_put(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    code = (
        "import os, signal, sys; from edge.mqtt.outbox import Outbox; "
        f"b = Outbox({str(path)!r}); b.put('t', b'survivor'); os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True)
    assert proc.returncode == -9
    box = Outbox(path)
    assert [r.payload for r in box.pending()] == [b"survivor"]


def test_drop_oldest_when_full_is_counted_and_persisted(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_messages=3)
    for i in range(7):
        box.put("t", str(i).encode())
    assert [r.payload for r in box.pending()] == [b"4", b"5", b"6"]
    assert box.dropped == 4 and box.depth() == 3
    assert box.stats()["dropped"] == 4
    box.close()
    box = Outbox(path, max_messages=3)
    assert box.dropped == 4
    box.put("t", b"7")
    assert box.dropped == 5
    assert [r.payload for r in box.pending()] == [b"5", b"6", b"7"]


def test_ids_are_never_reused_even_after_the_newest_row_is_deleted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_messages=1)
    a = box.put("t", b"a")
    b = box.put("t", b"b")  # drops a
    box.ack(b)
    c = box.put("t", b"c")
    assert a < b < c


def test_concurrent_puts_and_acks_from_many_threads(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", synchronous="normal")
    got: list[int] = []
    lock = threading.Lock()

    def writer(k: int) -> None:
        for i in range(50):
            rid = box.put("t", f"{k}-{i}".encode())
            with lock:
                got.append(rid)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    acked = 0
    while any(t.is_alive() for t in threads) or box.pending(limit=1):
        for row in box.pending(limit=10):
            acked += box.ack(row.id)
    for t in threads:
        t.join()
    assert len(set(got)) == 200 and acked == 200 and box.depth() == 0


def test_bad_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SonotrapError, match="synchronous"):
        Outbox(tmp_path / "a.sqlite", synchronous="off")
    with pytest.raises(SonotrapError, match="max_messages"):
        Outbox(tmp_path / "a.sqlite", max_messages=0)


def test_disk_full_falls_back_to_memory_reports_it_and_returns_to_disk(small_fs: Path) -> None:
    path = small_fs / "outbox.sqlite"
    box = Outbox(path, retry_s=0.0)
    filler = fill_fs(small_fs)
    payload = os.urandom(3000)
    ids = []
    for _ in range(200):  # enough that SQLite must grow the file / WAL
        ids.append(box.put("t", payload))
        if box.mode == "memory":
            break
    assert box.mode == "memory", "never hit disk full"
    assert "cannot write" in box.stats()["error"]
    more = [box.put("t", b"after") for _ in range(3)]  # keeps accepting messages
    assert box.depth() == len(ids) + 3
    assert [r.id for r in box.pending(limit=1000)] == ids + more
    # space comes back: the next put moves everything back to disk, ids intact
    filler.unlink()
    last = box.put("t", b"disk again")
    assert box.mode == "disk" and box.stats()["error"] is None
    box.close()
    reopened = Outbox(path)
    assert [r.id for r in reopened.pending(limit=1000)] == ids + more + [last]


def test_read_only_file_system_keeps_running_in_memory_with_the_pending_rows(small_fs: Path) -> None:
    path = small_fs / "outbox.sqlite"
    box = Outbox(path)
    first = box.put("t", b"before")
    box.close()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        box = Outbox(path, retry_s=3600)
        rid = box.put("t", b"while read-only")
        assert box.mode == "memory"
        assert str(path) in box.stats()["error"]
        assert [r.payload for r in box.pending()] == [b"before", b"while read-only"]
        assert rid > first
        assert box.ack(first) and box.ack(rid) and box.depth() == 0
        fresh = Outbox(small_fs / "new" / "outbox.sqlite")  # cannot even create the directory
        assert fresh.mode == "memory" and "cannot open" in fresh.stats()["error"]
        fresh.put("t", b"x")
        assert fresh.depth() == 1
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)


def test_ack_many_deletes_in_one_go_and_ignores_dropped_rows(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_messages=1000, synchronous="normal")
    ids = [box.put("t", b"x") for _ in range(1200)]  # the first 200 were dropped
    assert box.ack_many(ids[:700]) == 500
    assert box.depth() == 500 and [r.id for r in box.pending(limit=1)] == [ids[700]]
    assert box.ack_many([]) == 0
