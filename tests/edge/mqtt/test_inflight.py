"""The in-flight window on a real outbox: order, the window bound, delete on ack, rejections.

No broker here: ``send`` is a recorder that answers like paho's ``publish`` (a message info
with ``rc`` and ``mid``); the broker-backed behaviour is in test_publisher.py.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge.mqtt.inflight import InflightWindow
from edge.mqtt.outbox import Outbox, OutboxRow


@dataclass
class _Info:
    rc: MQTTErrorCode
    mid: int


class _Client:
    def __init__(self) -> None:
        self.sent: list[OutboxRow] = []
        self.refuse = False

    def send(self, row: OutboxRow) -> _Info:
        if self.refuse:
            return _Info(MQTTErrorCode.MQTT_ERR_QUEUE_SIZE, 0)
        self.sent.append(row)
        return _Info(MQTTErrorCode.MQTT_ERR_SUCCESS, 100 + len(self.sent))


def _ok() -> ReasonCode:
    return ReasonCode(PacketTypes.PUBACK, identifier=0)


def test_rows_go_out_oldest_first_within_the_window_and_leave_the_outbox_on_ack(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    ids = [box.put("t", f"m{i}".encode()) for i in range(5)]
    window, client, stop = InflightWindow(box, 2), _Client(), threading.Event()
    window.fill(client.send, stop)
    assert [r.id for r in client.sent] == ids[:2] and len(window) == 2  # the bound holds
    window.fill(client.send, stop)
    assert len(client.sent) == 2  # nothing new until an ack frees room
    window.acknowledged(101, _ok())
    window.acknowledged(999, _ok())  # not an outbox message (status, discovery): ignored
    assert box.depth() == 5  # acks are applied on the sender's thread, not on arrival
    window.apply_acks()
    assert box.depth() == 4 and [r.id for r in box.pending()] == ids[1:] and window.published == 1
    window.fill(client.send, stop)
    assert [r.id for r in client.sent] == ids[:3]


def test_a_rejected_row_is_dropped_and_a_refused_send_is_retried_later(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    ids = [box.put("t", f"m{i}".encode()) for i in range(3)]
    window, client, stop = InflightWindow(box, 5), _Client(), threading.Event()
    client.refuse = True
    window.fill(client.send, stop)
    assert len(window) == 0 and box.depth() == 3  # paho's queue refused: nothing lost, nothing in flight
    client.refuse = False
    window.fill(client.send, stop)
    assert [r.id for r in client.sent] == ids
    window.acknowledged(101, ReasonCode(PacketTypes.PUBACK, identifier=135))  # not authorised
    window.acknowledged(102, _ok())
    window.apply_acks()
    assert (window.rejected, window.published) == (1, 1) and [r.id for r in box.pending()] == ids[2:]
    stop.set()
    box.put("t", b"late")
    window.fill(client.send, stop)
    assert len(client.sent) == 3  # a stopping sender hands nothing more to the client


def test_after_a_reconnect_newer_rows_wait_until_the_re_sent_ones_are_acknowledged(tmp_path: Path) -> None:
    """paho re-sends what was in flight only after ``on_connect``: a newer row handed over in
    between would overtake it, so the window holds newer rows until the carried ones are acked."""
    box = Outbox(tmp_path / "o.sqlite")
    ids = [box.put("t", f"m{i}".encode()) for i in range(3)]
    window, client, stop = InflightWindow(box, 3), _Client(), threading.Event()
    window.connected()  # first connect: nothing in flight, nothing held
    window.fill(client.send, stop)
    window.acknowledged(101, _ok())
    window.apply_acks()
    window.connected()  # the connection dropped and came back with rows 2 and 3 in flight
    newer = [box.put("t", f"n{i}".encode()) for i in range(2)]
    window.fill(client.send, stop)
    assert [r.id for r in client.sent] == ids  # room for 1 more, but row 2 and 3 are not acked yet
    window.acknowledged(102, _ok())
    window.apply_acks()
    window.fill(client.send, stop)
    assert len(client.sent) == 3
    window.acknowledged(103, _ok())
    window.apply_acks()
    window.fill(client.send, stop)
    assert [r.id for r in client.sent] == ids + newer


def test_a_carried_row_that_is_never_acknowledged_holds_the_queue_only_for_a_while(tmp_path, monkeypatch, caplog):
    from edge.mqtt import inflight

    box = Outbox(tmp_path / "o.sqlite")
    first = box.put("t", b"m0")
    window, client, stop = InflightWindow(box, 5), _Client(), threading.Event()
    window.fill(client.send, stop)
    monkeypatch.setattr(inflight, "CARRIED_WAIT_S", 60.0)
    window.connected()
    later = box.put("t", b"m1")
    window.fill(client.send, stop)
    assert [r.id for r in client.sent] == [first]
    monkeypatch.setattr(inflight, "CARRIED_WAIT_S", 0.0)
    window.connected()
    with caplog.at_level("WARNING", logger="sonotrap.mqtt"):
        window.fill(client.send, stop)
    assert [r.id for r in client.sent] == [first, later]
    assert "still unacknowledged" in caplog.text
