"""Publisher + outbox against a real Mosquitto and a real paho subscriber (no mocks)."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from edge.config import MqttConfig
from edge.inference.detector import DetectionEvent
from edge.mqtt.connection import backoff_delay
from edge.mqtt.outbox import Outbox
from edge.mqtt.payloads import SCHEMA_VERSION, MessageContext, detection_payload
from edge.mqtt.publisher import CONNECT_STATUS_GRACE_S, Publisher
from tests.support.broker import Mosquitto, Subscriber

DEVICE = "rec-01"
CTX = MessageContext(DEVICE, "tiny-tones", "1.2.0", 0.5, 2.0)
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def event(i: int, label: str = "tone_low", state: str = "ended") -> DetectionEvent:
    start = 1_764_000_000.0 + 10 * i
    return DetectionEvent(uuid.uuid4().hex, label, label.replace("_", " "), state, start, start + 2.5,
                          0.98, 0.95, 2)


def cfg_for(broker: Mosquitto, **kw) -> MqttConfig:
    base = dict(host="127.0.0.1", port=broker.port, device_id=DEVICE, reconnect_min_s=0.1, reconnect_max_s=0.5,
                status_interval_s=60.0, keepalive_s=5)
    base.update(kw)
    cfg = MqttConfig(**base)
    cfg.validate()
    return cfg


@pytest.fixture
def make_pub(tmp_path: Path):
    made: list[Publisher] = []

    def make(cfg: MqttConfig, outbox: Outbox | None = None, **outbox_kw) -> Publisher:
        box = outbox or Outbox(tmp_path / f"outbox{len(made)}.sqlite", **outbox_kw)
        pub = Publisher(cfg, box, cfg.device_id or DEVICE)
        made.append(pub)
        return pub

    yield make
    for p in made:
        p.stop(timeout=1.0)
        p.outbox.close()


def subscriber_waiting_for(broker: Mosquitto, topics: str) -> Subscriber:
    """A persistent QoS-1 session registered on a (persistent) broker that is then stopped:
    it receives everything published after the broker comes back, however fast that is."""
    broker.start()
    sub = Subscriber(broker.port, topics, client_id=f"waiting-{id(broker)}", persistent=True)
    broker.stop()
    return sub


def detections(sub: Subscriber) -> list[dict]:
    return [m.json() for m in sub.on_topic(f"/{DEVICE}/detections")]


def wait_detections(sub: Subscriber, n: int, timeout: float = 15.0) -> list[dict]:
    sub.wait_for(lambda ms: sum(m.topic.endswith("/detections") for m in ms) >= n, timeout)
    return detections(sub)


def test_detections_arrive_with_the_documented_schema(mosquitto: Mosquitto, make_pub) -> None:
    sub = Subscriber(mosquitto.port, "sonotrap/#")
    pub = make_pub(cfg_for(mosquitto))
    pub.start()
    events = [event(0), event(1, "tone_high"), event(2, state="started")]
    before = time.time()
    for ev in events:
        pub.publish_detection(detection_payload(ev, CTX))
    got = wait_detections(sub, 3)
    assert [g["id"] for g in got] == [ev.id for ev in events]
    msgs = sub.on_topic("/detections")
    assert all(m.topic == f"sonotrap/{DEVICE}/detections" and not m.retain for m in msgs)
    for ev, p in zip(events, got, strict=True):
        assert set(p) == {
            "schema_version", "id", "device", "label", "name", "state", "score", "mean_score", "hops", "start",
            "end", "start_epoch", "end_epoch", "duration_s", "model", "hop_s", "window_s", "published_at",
        }
        assert p["schema_version"] == SCHEMA_VERSION == 1
        assert p["device"] == DEVICE and p["label"] == ev.label and p["name"] == ev.name
        assert p["state"] == ev.state
        assert p["score"] == pytest.approx(0.98) and p["mean_score"] == pytest.approx(0.95) and p["hops"] == 2
        assert p["start_epoch"] == pytest.approx(ev.start) and p["end_epoch"] == pytest.approx(ev.end)
        assert p["duration_s"] == pytest.approx(2.5)
        for key in ("start", "end", "published_at"):
            assert ISO.match(p[key]), p[key]
        assert datetime.fromisoformat(p["start"]).timestamp() == pytest.approx(ev.start, abs=1e-3)
        assert datetime.fromisoformat(p["end"]).timestamp() == pytest.approx(ev.end, abs=1e-3)
        assert datetime.fromisoformat(p["published_at"]).timestamp() >= before - 1
        assert p["model"] == {"name": "tiny-tones", "version": "1.2.0"}
        assert p["hop_s"] == 0.5 and p["window_s"] == 2.0
    # acknowledged rows leave the outbox
    sub.wait_for(lambda _: pub.stats()["outbox_depth"] == 0, 5)
    assert pub.stats()["published"] == 3
    sub.stop()


def test_publish_detection_never_waits_for_a_missing_broker_and_delivers_once_it_starts(
    tmp_path: Path, make_pub
) -> None:
    broker = Mosquitto(tmp_path / "later", persistence=True)
    sub = subscriber_waiting_for(broker, f"sonotrap/{DEVICE}/#")  # broker is down: the device boots first
    pub = make_pub(cfg_for(broker))
    pub.start()
    sent = []
    for i in range(20):
        t0 = time.perf_counter()
        pub.publish_detection(detection_payload(event(i), CTX))
        sent.append(time.perf_counter() - t0)
    assert max(sent) < 0.2, f"publish_detection blocked for {max(sent):.3f} s"
    time.sleep(0.8)
    st = pub.stats()
    assert not st["connected"] and st["outbox_depth"] == 20
    assert st["failed_attempts"] >= 2, "first connect at boot is retried"
    assert "Connection refused" in st["last_error"] and "broker running" in st["last_error"]
    with broker:
        got = wait_detections(sub, 20)
        assert [g["start_epoch"] for g in got] == sorted(g["start_epoch"] for g in got)
        assert len({g["id"] for g in got}) == 20
        sub.wait_for(lambda _: pub.stats()["outbox_depth"] == 0, 5)
        assert pub.stats()["last_error"] is None
        sub.stop()


def test_backlog_from_a_previous_run_drains_oldest_first_with_a_bounded_window(
    tmp_path: Path, mosquitto: Mosquitto, make_pub
) -> None:
    path = tmp_path / "prev.sqlite"
    box = Outbox(path)
    ids = [uuid.uuid4().hex for _ in range(150)]
    for i, pid in enumerate(ids):
        box.put(f"sonotrap/{DEVICE}/detections", json.dumps({"id": pid, "n": i}).encode())
    box.close()  # "the daemon died"; the next run opens the same file
    sub = Subscriber(mosquitto.port, f"sonotrap/{DEVICE}/detections")
    pub = make_pub(cfg_for(mosquitto, max_inflight=4), outbox=Outbox(path))
    peak = 0
    pub.start()
    deadline = time.monotonic() + 20
    while len(sub.on_topic("detections")) < 150 and time.monotonic() < deadline:
        peak = max(peak, pub.stats()["inflight"])
        time.sleep(0.001)
    got = [m.json()["id"] for m in sub.on_topic("detections")]
    assert got == ids
    assert peak <= 4
    sub.wait_for(lambda _: pub.stats()["outbox_depth"] == 0, 5)


def test_drop_oldest_policy_is_counted_and_reported_in_status(tmp_path: Path, make_pub) -> None:
    broker = Mosquitto(tmp_path / "b", persistence=True)
    sub = subscriber_waiting_for(broker, f"sonotrap/{DEVICE}/#")
    pub = make_pub(cfg_for(broker), max_messages=10)
    pub.set_status_provider(lambda: {"uptime_s": 1.0})
    pub.start()
    events = [event(i) for i in range(25)]
    for ev in events:
        pub.publish_detection(detection_payload(ev, CTX))
    assert pub.stats()["dropped"] == 15 and pub.stats()["outbox_depth"] == 10
    with broker:
        got = wait_detections(sub, 10)
        time.sleep(0.3)
        assert [g["id"] for g in detections(sub)] == [ev.id for ev in events[15:]]
        status = sub.wait_for(lambda ms: [m.json() for m in ms if m.topic.endswith("/status")])[-1]
        assert status["outbox_dropped"] == 15
        assert len(got) == 10
        sub.stop()


def test_retained_online_status_reaches_a_late_subscriber_and_offline_on_stop(
    mosquitto: Mosquitto, make_pub
) -> None:
    pub = make_pub(cfg_for(mosquitto))
    pub.set_status_provider(lambda: {
        "state": "running", "model": {"name": "tiny-tones", "version": "1.2.0"}, "uptime_s": 12.5,
        "audio": {"overflows": 3}, "inference_ms": {"p50": 4.0, "p99": 9.5}, "backlog_hops": 0,
    })
    pub.start()
    Subscriber(mosquitto.port, "x").wait_for(lambda _: pub.connected, 5)
    time.sleep(CONNECT_STATUS_GRACE_S + 0.5)  # the first status waits that long for the daemon's "ready"
    late = Subscriber(mosquitto.port, f"sonotrap/{DEVICE}/status")
    msg = late.wait_for(lambda ms: ms)[0]
    assert msg.retain
    st = msg.json()
    assert st["state"] == "online" and st["daemon_state"] == "running" and st["device"] == DEVICE
    assert st["model"] == {"name": "tiny-tones", "version": "1.2.0"}
    assert st["audio"]["overflows"] == 3 and st["inference_ms"]["p99"] == 9.5
    assert st["outbox_depth"] == 0 and "mqtt" in st and ISO.match(st["ts"])
    pub.stop(timeout=2)
    off = late.wait_for(lambda ms: [m.json() for m in ms if m.json()["state"] == "offline"])[0]
    assert off["reason"] == "shutdown"
    later = Subscriber(mosquitto.port, f"sonotrap/{DEVICE}/status")
    assert later.wait_for(lambda ms: ms)[0].json()["state"] == "offline"
    late.stop()
    later.stop()


def test_events_commands_and_resubscribe_after_a_broker_restart(mosquitto: Mosquitto, make_pub) -> None:
    pub = make_pub(cfg_for(mosquitto))
    got: list[tuple[str, bytes]] = []
    pub.subscribe("cmd/update", lambda topic, payload: got.append((topic, payload)))
    pub.start()
    sub = Subscriber(mosquitto.port, f"sonotrap/{DEVICE}/events")
    pub.publish_event("model_changed", {"from": "1.0", "to": "1.1"})
    ev = sub.wait_for(lambda ms: ms)[0].json()
    assert ev["event"] == "model_changed" and ev["data"] == {"from": "1.0", "to": "1.1"}
    assert ev["device"] == DEVICE and ev["schema_version"] == 1 and len(ev["id"]) == 32
    cmd = Subscriber(mosquitto.port, "none")
    cmd.wait_for(lambda _: pub.connected, 5)
    cmd.client.publish(f"sonotrap/{DEVICE}/cmd/update", b'{"version": "2"}', qos=1)
    cmd.wait_for(lambda _: got, 5)
    assert got[0] == (f"sonotrap/{DEVICE}/cmd/update", b'{"version": "2"}')
    mosquitto.restart()  # persistence off: the broker forgot our subscription
    cmd.wait_for(lambda _: pub.stats()["reconnects"] >= 1 and cmd.connected.is_set(), 15)
    time.sleep(0.3)
    cmd.client.publish(f"sonotrap/{DEVICE}/cmd/update", b"again", qos=1)
    cmd.wait_for(lambda _: len(got) == 2, 5)
    cmd.stop()
    sub.stop()


def test_mqtt5_session_and_home_assistant_discovery(mosquitto: Mosquitto, make_pub) -> None:
    pub = make_pub(cfg_for(mosquitto, protocol="5", homeassistant=True))
    sub = Subscriber(mosquitto.port, ["homeassistant/#", f"sonotrap/{DEVICE}/detections"])
    pub.start()
    pub.announce_discovery({"tone_low": "low tone", "tone_high": "high tone"})
    cfgs = sub.wait_for(lambda ms: [m for m in ms if m.topic.startswith("homeassistant/")] if len(
        [m for m in ms if m.topic.startswith("homeassistant/") and m.payload]) >= 3 else None)
    assert len([m for m in cfgs if m.payload]) == 3  # two event entities + the status sensor
    late = Subscriber(mosquitto.port, "homeassistant/#")  # retained: Home Assistant may start later
    by_topic = {m.topic: m for m in late.wait_for(lambda ms: ms if len(ms) >= 3 else None)}
    late.stop()
    topic = f"homeassistant/event/{DEVICE}_tone_low/config"
    assert topic in by_topic and by_topic[topic].retain
    c = by_topic[topic].json()
    assert c["state_topic"] == f"sonotrap/{DEVICE}/detections" and c["event_types"] == ["detected"]
    assert c["availability"][0]["topic"] == f"sonotrap/{DEVICE}/status"
    assert c["unique_id"] and c["device"]["identifiers"] and c["name"] == "low tone"
    assert "tone_low" in c["value_template"]
    # a model without tone_high removes that entity (empty retained config)
    pub.announce_discovery({"tone_low": "low tone"})
    sub.wait_for(lambda ms: any(m.topic.endswith("_tone_high/config") and m.payload == b"" for m in ms))
    pub.publish_detection(detection_payload(event(0), CTX))
    assert wait_detections(sub, 1)[0]["label"] == "tone_low"
    sub.stop()


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    import random

    rng = random.Random(1)
    for attempt, cap in [(0, 1.0), (1, 2.0), (3, 8.0), (10, 60.0)]:
        values = [backoff_delay(attempt, 1.0, 60.0, rng) for _ in range(200)]
        assert cap / 2 <= min(values) and max(values) <= cap
        assert max(values) - min(values) > cap / 4, "jitter spreads reconnects"


def test_qos_2_is_used_and_a_broker_offering_only_qos_1_gets_qos_1(tmp_path: Path, make_pub, caplog) -> None:
    """``mqtt.qos = 2`` reaches the subscriber as QoS 2; a broker whose CONNACK says Maximum
    QoS 1 (brokers without QoS 2) gets QoS 1 instead of a refused publish, and a warning."""
    for max_qos, want in ((None, 2), (1, 1)):
        broker = Mosquitto(tmp_path / f"broker-{max_qos}", max_qos=max_qos).start()
        got: list[int] = []
        sub = Subscriber(broker.port, f"sonotrap/{DEVICE}/detections", qos=2, connect=False)
        sub.client.on_message = lambda c, u, m, got=got: got.append(m.qos)
        sub.start()
        try:
            pub = make_pub(cfg_for(broker, protocol="5", qos=2))
            pub.start()
            pub.publish_detection(detection_payload(event(0), CTX))
            deadline = time.monotonic() + 15
            while not got and time.monotonic() < deadline:
                time.sleep(0.05)
            assert got == [want], (max_qos, got)
        finally:
            sub.stop()
            broker.stop()
    assert "accepts QoS 1 at most" in caplog.text


@pytest.mark.parametrize(("kw", "needle"), [
    (dict(qos=0), "must be 1 or 2"),
    (dict(qos=2), 'needs mqtt.protocol = "5"'),
])
def test_qos_setting_is_checked(kw, needle) -> None:
    from edge.errors import SonotrapError

    with pytest.raises(SonotrapError, match=needle):
        MqttConfig(host="localhost", **kw).validate()
