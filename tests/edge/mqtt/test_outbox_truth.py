"""Outbox truth: a damaged file is moved aside and its readable rows recovered; a full disk is
reported with the real number of messages on disk, never more."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from edge.config import MqttConfig
from edge.mqtt.outbox import Outbox
from edge.mqtt.publisher import Publisher
from tests.support.broker import free_port
from tests.support.disk import fill_fs


def _filled(path: Path, n: int = 2000, size: int = 200) -> list[int]:
    box = Outbox(path, synchronous="normal")
    ids = [box.put("sonotrap/d/detections", b"%06d" % i + b"x" * size) for i in range(n)]
    box.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return ids


def _asides(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.glob(path.name + ".corrupt-*") if not p.name.endswith(("-wal", "-shm")))


def test_a_corrupted_page_is_moved_aside_and_the_readable_rows_recovered(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    ids = _filled(path)
    with open(path, "r+b") as f:  # one damaged page in the middle of the table
        f.seek(4096 * 20)
        f.write(os.urandom(4096))
    box = Outbox(path)
    assert box.mode == "disk"
    rec = box.stats()["recovered"]
    (aside,) = _asides(path)
    assert rec["moved_to"] == str(aside) and aside.stat().st_size > 0  # kept for salvage
    got = [r.id for r in box.pending(limit=10_000)]
    assert rec["recovered_rows"] == len(got)
    assert len(got) >= len(ids) - 60, "one damaged page must cost only the rows on it"
    assert got == sorted(got) and set(got) <= set(ids)
    new = box.put("t", b"after")  # the fresh file takes new rows with ids never used before
    assert new > ids[-1]
    box.close()
    again = Outbox(path)
    assert again.recovered is None and again.depth() == len(got) + 1


def test_a_truncated_outbox_is_recovered_on_disk_not_run_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    ids = _filled(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    box = Outbox(path)
    assert box.mode == "disk" and box.stats()["unpersisted"] == 0
    got = [r.id for r in box.pending(limit=10_000)]
    assert 0 < len(got) < len(ids) and got == ids[: len(got)]  # the first half survives
    assert box.recovered["recovered_rows"] == len(got) and len(_asides(path)) == 1
    box.close()
    assert Outbox(path).depth() == len(got)  # on disk: the next start sees them again


def test_a_file_that_is_not_sqlite_is_moved_aside_and_the_outbox_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    box = Outbox(path)
    assert box.mode == "disk" and box.depth() == 0
    assert box.recovered["recovered_rows"] == 0 and "not a database" in box.recovered["error"]
    (aside,) = _asides(path)
    assert aside.read_bytes() == b"this is not sqlite" * 100


def test_the_publisher_reports_a_recovery_as_an_event_and_in_its_stats(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"garbage" * 1000)
    cfg = MqttConfig(host="127.0.0.1", port=free_port(), device_id="d1", reconnect_min_s=5, reconnect_max_s=5)
    pub = Publisher(cfg, Outbox(path), "d1")
    pub.start()
    try:
        assert pub.stats()["outbox_recovered"]["moved_to"].startswith(str(path) + ".corrupt-")
    finally:
        pub.stop(timeout=1.0)
    rows = Outbox(path).pending()
    assert [r.topic for r in rows] == ["sonotrap/d1/events"]
    assert b'"outbox_recovered"' in rows[0].payload


def test_disk_full_then_stop_logs_and_returns_the_true_count_on_disk(small_fs: Path, caplog) -> None:
    path = small_fs / "outbox.sqlite"
    box = Outbox(path, retry_s=3600)
    before = [box.put("t", b"on disk") for _ in range(5)]
    fill_fs(small_fs)
    payload = os.urandom(3000)
    n = 0
    while box.mode == "disk" and n < 500:
        box.put("t", payload)
        n += 1
    assert box.mode == "memory", "never hit disk full"
    for _ in range(100):
        box.put("t", payload)
    st = box.stats()
    assert st["unpersisted"] > 100 and st["depth"] == st["unpersisted"] + (st["depth"] - st["unpersisted"])
    with caplog.at_level(logging.INFO, logger="sonotrap.mqtt"):
        kept, lost = box.close()
    (small_fs / "filler").unlink()
    on_disk = Outbox(path).depth()
    assert kept == on_disk and lost == st["depth"] - on_disk and on_disk >= len(before)
    assert f"{on_disk} undelivered message(s) are on disk" in caplog.text
    assert f"{lost} held only in memory are lost" in caplog.text


def test_space_back_before_stop_puts_everything_on_disk(small_fs: Path) -> None:
    path = small_fs / "outbox.sqlite"
    box = Outbox(path, retry_s=3600)
    filler = fill_fs(small_fs)
    payload = os.urandom(3000)
    n = 0
    while box.mode == "disk" and n < 500:
        box.put("t", payload)
        n += 1
    assert box.mode == "memory"
    depth = box.depth()
    filler.unlink()
    assert box.close() == (depth, 0)  # the last try at close moved them back to disk
    assert Outbox(path).depth() == depth
