"""`sonotrap run` -> real Mosquitto -> real subscriber: schema, retained status, broker down at boot."""

from __future__ import annotations

import json
import sqlite3

from tests.support.broker import Mosquitto, Subscriber, free_port
from tests.support.daemon_helpers import HIGH, LOW, read_jsonl, run_cli, write_tones

DETECTION_FIELDS = {"schema_version", "id", "device", "label", "name", "state", "score", "mean_score", "hops",
                    "start", "end", "start_epoch", "end_epoch", "duration_s", "model", "hop_s", "window_s"}


def run_fast(tmp_path, wav, model, port, *extra, state="state"):
    return run_cli("run", "--file", str(wav), "--fast", "--model", str(model), "--broker", f"127.0.0.1:{port}",
                   "--device-id", "field-1", "--state-dir", str(tmp_path / state),
                   "--jsonl", str(tmp_path / f"{state}.jsonl"), *extra, timeout=90)


def test_detections_and_status_arrive_over_mqtt(tmp_path, tiny_bundle, mosquitto):
    wav = write_tones(tmp_path / "t.wav", [(None, 3), (LOW, 2), (None, 3), (HIGH, 2), (None, 3)])
    with Subscriber(mosquitto.port, "sonotrap/field-1/#") as sub:
        r = run_fast(tmp_path, wav, tiny_bundle, mosquitto.port)
        assert r.returncode == 0, r.stderr
        dets = sub.wait_for(lambda ms: [m for m in ms if m.topic == "sonotrap/field-1/detections"][:2]
                            if len([m for m in ms if m.topic.endswith("/detections")]) >= 2 else None)
        sub.wait_for(lambda ms: any(m.topic.endswith("/status") and m.json()["state"] == "offline" for m in ms))
    payloads = [m.json() for m in dets]
    assert [p["label"] for p in payloads] == ["tone_low", "tone_high"]
    for p in payloads:
        assert DETECTION_FIELDS <= set(p), DETECTION_FIELDS - set(p)
        assert p["device"] == "field-1" and p["state"] == "ended" and p["score"] > 0.9
        assert p["model"] == {"name": "tiny-band-detector", "version": "1.0.0"}
    assert payloads == read_jsonl(tmp_path / "state.jsonl")  # --jsonl carries the very same payloads
    online = [m.json() for m in sub.on_topic("/status") if m.json()["state"] != "offline"]
    assert online, "no online status seen"
    st = online[-1]
    assert st["model"]["version"] == "1.0.0" and "uptime_s" in st and "inference_ms" in st
    assert "backlog_hops" in st and "overflows" in st["audio"] and "outbox_depth" in st["outbox"]


def test_retained_status_seen_by_a_late_subscriber(tmp_path, tiny_bundle, mosquitto):
    wav = write_tones(tmp_path / "t.wav", [(None, 3)])
    assert run_fast(tmp_path, wav, tiny_bundle, mosquitto.port).returncode == 0
    with Subscriber(mosquitto.port, "sonotrap/field-1/status") as sub:
        (msg,) = sub.wait_for(lambda ms: ms[:1] or None)
    assert msg.retain and msg.json()["state"] == "offline"


def test_broker_down_at_boot_keeps_detections_in_the_outbox_until_it_is_up(tmp_path, tiny_bundle):
    port = free_port()
    wav = write_tones(tmp_path / "t.wav", [(None, 3), (LOW, 2), (None, 3)])
    r = run_fast(tmp_path, wav, tiny_bundle, port)
    assert r.returncode == 0, r.stderr  # the daemon runs without a broker
    (det,) = read_jsonl(tmp_path / "state.jsonl")
    with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
        payloads = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox ORDER BY id")]
    assert det["id"] in [p.get("id") for p in payloads]
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["outbox"]["outbox_depth"] >= 1 and not status["outbox"]["connected"]
    # Broker comes up; the next start drains the backlog (the detection arrives once, by id).
    with Mosquitto(tmp_path / "mq", port=port) as broker, Subscriber(broker.port, "sonotrap/field-1/detections") as sub:
        quiet = write_tones(tmp_path / "q.wav", [(None, 3)])
        assert run_fast(tmp_path, quiet, tiny_bundle, port).returncode == 0
        got = sub.wait_for(lambda ms: [m.json() for m in ms] or None)
    assert [g["id"] for g in got] == [det["id"]]


def test_sigterm_publishes_the_open_event_then_offline_and_exits_0(tmp_path, tiny_bundle, mosquitto):
    """Clean shutdown with a real broker: stop audio, finish in-flight windows, flush the outbox, go offline."""
    import signal

    from tests.support.daemon_helpers import sonotrap
    from tests.support.waiting import wait_for

    wav = write_tones(tmp_path / "t.wav", [(LOW, 30)])  # the call is still going on at SIGTERM
    with Subscriber(mosquitto.port, "sonotrap/field-1/#") as sub:
        proc = sonotrap("run", "--file", str(wav), "--realtime", "--loop", "--model", str(tiny_bundle),
                        "--broker", f"127.0.0.1:{mosquitto.port}", "--device-id", "field-1",
                        "--state-dir", str(tmp_path / "state"))
        try:
            status = tmp_path / "state" / "status.json"
            wait_for(lambda: status.is_file() and json.loads(status.read_text()).get("hops", 0) >= 3, timeout=30)
            assert sub.on_topic("/detections") == []  # the event has not ended yet
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        sub.wait_for(lambda ms: any(json.loads(m.payload).get("state") == "offline"
                                    for m in ms if m.topic.endswith("/status")), timeout=10)
        det = [json.loads(m.payload) for m in sub.on_topic("/detections")]
        assert [(d["label"], d["state"]) for d in det] == [("tone_low", "ended")]
        statuses = [json.loads(m.payload) for m in sub.on_topic("/status")]
        assert statuses[-1]["state"] == "offline" and statuses[-1]["reason"] == "shutdown"
    rows = sqlite3.connect(tmp_path / "state" / "outbox.sqlite").execute("SELECT COUNT(*) FROM outbox").fetchone()
    assert rows == (0,)  # nothing left behind
    assert "Traceback" not in err
