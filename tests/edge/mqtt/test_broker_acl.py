"""docs/broker/acl.conf on a real Mosquitto: a recorder is confined to its own topic tree.

MQTT 3.1.1 brokers drop a denied publish silently (the PUBACK still comes), so every "cannot"
below is checked by absence: the same client then publishes an allowed sentinel, and once the
sentinel has arrived the denied message would have arrived before it (per-client order)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.broker import Subscriber
from tests.support.daemon_helpers import HIGH, LOW, run_cli, write_tones

REPO = Path(__file__).resolve().parents[3]
ACL = REPO / "docs" / "broker" / "acl.conf"
USERS = {"field-1": "pw-one", "field-2": "pw-two", "operator": "pw-op", "dashboard": "pw-dash"}


@pytest.fixture
def acl_broker(mosquitto_factory):
    return mosquitto_factory(users=USERS, acl_file=ACL)


class Client:
    """A plain paho publisher logged in as one user."""

    def __init__(self, port: int, user: str) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4().hex[:6]}")
        self.c.username_pw_set(user, USERS[user])
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def pub(self, topic: str, payload: bytes | str) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _got(sub: Subscriber, payload: bytes) -> bool:
    return any(m.payload == payload for m in sub.messages)


def test_a_recorder_cannot_command_or_write_into_another_recorder(acl_broker) -> None:
    port = acl_broker.port
    watch = Subscriber(port, "sonotrap/#", username="operator", password=USERS["operator"])
    b_cmds = Subscriber(port, "sonotrap/field-2/cmd/#", username="field-2", password=USERS["field-2"])
    a = Client(port, "field-1")
    try:
        a.pub("sonotrap/field-2/cmd/update", b"forged-by-a")  # A commands B: denied
        a.pub("sonotrap/field-2/detections", b"spoofed-detection")  # A writes into B: denied
        a.pub("sonotrap/field-2/status", b"spoofed-status")
        a.pub("sonotrap/field-1/cmd/update", b"self-command")  # not even itself
        a.pub("sonotrap/field-1/detections", b"a-own-detection")  # allowed: the sentinel
        a.pub("sonotrap/field-1/status", b"a-own-status")
        a.pub("sonotrap/field-1/events", b"a-own-event")
        watch.wait_for(lambda ms: _got(watch, b"a-own-event"))
        assert _got(watch, b"a-own-detection") and _got(watch, b"a-own-status")
        for denied in (b"forged-by-a", b"spoofed-detection", b"spoofed-status", b"self-command"):
            assert not _got(watch, denied), denied
        assert not b_cmds.messages
        op = Client(port, "operator")  # the operator's command does reach B
        op.pub("sonotrap/field-2/cmd/update", b"from-operator")
        b_cmds.wait_for(lambda ms: _got(b_cmds, b"from-operator"))
        assert [m.payload for m in b_cmds.messages] == [b"from-operator"]
        op.close()
    finally:
        a.close()
        watch.stop()
        b_cmds.stop()


def test_a_recorder_cannot_read_others_and_the_dashboard_cannot_command(acl_broker) -> None:
    port = acl_broker.port
    a_sees = Subscriber(port, ["sonotrap/#", "#"], username="field-1", password=USERS["field-1"])
    dash = Subscriber(port, "sonotrap/#", username="dashboard", password=USERS["dashboard"])
    b_cmds = Subscriber(port, "sonotrap/field-2/cmd/#", username="field-2", password=USERS["field-2"])
    b = Client(port, "field-2")
    d = Client(port, "dashboard")
    try:
        b.pub("sonotrap/field-2/detections", b"b-detection")
        dash.wait_for(lambda ms: _got(dash, b"b-detection"))  # the dashboard reads detections
        d.pub("sonotrap/field-2/cmd/update", b"from-dashboard")  # denied
        b.pub("sonotrap/field-2/events", b"b-event")
        dash.wait_for(lambda ms: _got(dash, b"b-event"))
        assert not _got(dash, b"from-dashboard") and not b_cmds.messages
        assert not a_sees.messages, [m.topic for m in a_sees.messages]  # A reads nothing of B
    finally:
        for c in (b, d):
            c.close()
        for s in (a_sees, dash, b_cmds):
            s.stop()


def test_the_real_daemon_works_under_the_acl(tmp_path, tiny_bundle, acl_broker) -> None:
    secret = tmp_path / "field-1.pass"
    secret.write_text(USERS["field-1"] + "\n")
    secret.chmod(0o600)
    wav = write_tones(tmp_path / "t.wav", [(None, 3), (LOW, 2), (None, 3), (HIGH, 2), (None, 2)])
    with Subscriber(acl_broker.port, "sonotrap/#", username="operator", password=USERS["operator"]) as sub:
        r = run_cli("run", "--file", str(wav), "--fast", "--model", str(tiny_bundle),
                    "--broker", f"127.0.0.1:{acl_broker.port}", "--device-id", "field-1",
                    "--state-dir", str(tmp_path / "state"), "--set", "mqtt.username=\"field-1\"",
                    "--set", f"mqtt.password_file=\"{secret}\"", timeout=90)
        assert r.returncode == 0, r.stderr
        dets = sub.wait_for(lambda ms: [m for m in ms if m.topic == "sonotrap/field-1/detections"][:2]
                            if len([m for m in ms if m.topic.endswith("/detections")]) >= 2 else None)
        sub.wait_for(lambda ms: any(m.topic == "sonotrap/field-1/status" and m.json()["state"] == "offline"
                                    for m in ms))
    assert [json.loads(m.payload)["label"] for m in dets] == ["tone_low", "tone_high"]
