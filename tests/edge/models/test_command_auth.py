"""A device obeys ``cmd/update`` only when its operator signed the command for it, just now.

Before, any client on the broker could downgrade or roll back a device and have multi-MB
payloads echoed into its logs, events and status files. Now commands must be signed by a
trusted fleet key, addressed to the device, fresh (timestamp + nonce, replays refused even
after a restart) and small; refusals are counted and reported once, never echoed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from edge.models.update.attach import attach_mqtt_updates
from edge.models.update.command_auth import MAX_COMMAND_BYTES, CommandGate, CommandRefused, sign_command
from tests.support.broker import Mosquitto
from tests.support.paths import REPO
from tests.support.update_server import (
    BundleServer,
    command_endpoint,
    make_cfg,
    make_keys,
    write_index,
)

DEVICE = "rec-auth"


def _gate(env, clock=time.time) -> CommandGate:
    return CommandGate(DEVICE, env["keys"].public_dir, env["state"], window_s=60, clock=clock)


def test_signed_fresh_addressed_command_is_accepted_once(env):
    payload = sign_command(env["keys"].private, DEVICE, {"version": "1.1.0"})
    assert _gate(env).check(payload, "update").command == {"version": "1.1.0"}
    with pytest.raises(CommandRefused, match="replay"):
        _gate(env).check(payload, "update")  # a new gate = a restarted daemon: the nonce is on disk


@pytest.mark.parametrize("case, why", [
    ("unsigned", "not signed"),
    ("rogue key", "not trusted"),
    ("other device", "another device"),
    ("other topic", "another topic"),
    ("stale", "outside the 60 s window"),
    ("future", "outside the 60 s window"),
    ("tampered", "does not verify"),
    ("huge", f"over the {MAX_COMMAND_BYTES}-byte limit"),
    ("not json", "not JSON"),
])
def test_everything_else_is_refused(env, case, why):
    key = env["keys"].private
    payload = {
        "unsigned": lambda: json.dumps({"version": "0.9.0"}).encode(),
        "rogue key": lambda: sign_command(make_keys(env["tmp"] / "rogue", "rogue").private, DEVICE, {}),
        "other device": lambda: sign_command(key, "rec-other", {}),
        "other topic": lambda: sign_command(key, DEVICE, {}, topic="reboot"),
        "stale": lambda: sign_command(key, DEVICE, {}, now=time.time() - 120),
        "future": lambda: sign_command(key, DEVICE, {}, now=time.time() + 120),
        "tampered": lambda: sign_command(key, DEVICE, {"version": "1.1.0"}).replace(b"1.1.0", b"0.9.0"),
        "huge": lambda: b"{" + b" " * 5_000_000 + b"}",
        "not json": lambda: b"\xff\xfe garbage",
    }[case]()
    with pytest.raises(CommandRefused, match=why) as exc:
        _gate(env).check(payload, "update")
    assert "0.9.0" not in str(exc.value) and len(str(exc.value)) < 300


def test_seen_nonces_are_bounded_by_the_window(env):
    now = [1_800_000_000.0]
    gate = _gate(env, clock=lambda: now[0])
    for _ in range(20):
        gate.check(sign_command(env["keys"].private, DEVICE, {}, now=now[0]), "update")
        now[0] += 10
    kept = json.loads((env["state"] / "command-nonces.json").read_text())["nonces"]
    assert 5 <= len(kept) <= 7  # only those still inside the 60 s window


def test_cli_signs_a_command_the_device_accepts(env):
    out = subprocess.run(
        [sys.executable, "-m", "edge", "command", "sign", "--key", str(env["keys"].private), "--device", DEVICE,
         "--json", '{"action": "rollback"}'], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["topic"] == f"sonotrap/{DEVICE}/cmd/update"
    assert _gate(env).check(doc["payload"].encode(), "update").command == {"action": "rollback"}


def test_on_a_real_broker_only_signed_commands_act_and_refusals_are_counted_once(env, mosquitto: Mosquitto):
    write_index(env["srv"], {"stable": env["v1"]})
    with BundleServer(env["srv"]) as server:
        cfg = make_cfg(env, server.url)
        pub, sub = command_endpoint(env, mosquitto.port, DEVICE)
        try:
            attach_mqtt_updates(cfg, None, pub)
            pub.start()
            time.sleep(1.0)  # subscribed
            threads_before = threading.active_count()
            topic = f"sonotrap/{DEVICE}/cmd/update"
            sub.client.publish(topic, json.dumps({"version": "0.9.0"}), qos=1)  # the old downgrade
            sub.client.publish(topic, b'{"url": "' + b"A" * 5_000_000 + b'"}', qos=1)
            for _ in range(100):
                sub.client.publish(topic, b"{}", qos=1)
            good = sign_command(env["keys"].private, DEVICE, {})
            sub.client.publish(topic, good, qos=1)
            sub.wait_for(lambda ms: any(m.json().get("event") == "update_up_to_date" for m in ms), timeout=30)
            sub.client.publish(topic, good, qos=1)  # replay
            deadline = time.monotonic() + 20
            status = {}
            while time.monotonic() < deadline:
                status = json.loads((env["state"] / "update-status.json").read_text()).get("commands", {})
                if status.get("refused", 0) >= 103:
                    break
                time.sleep(0.2)
            assert status["refused"] == 103 and status["accepted"] == 1, status
            assert threading.active_count() <= threads_before + 1
            time.sleep(0.5)
            kinds = [m.json().get("event") for m in sub.messages]
            assert kinds.count("command_rejected") == 1, kinds  # rate-limited: one report
            assert env["store"].current().version == "1.0.0"
        finally:
            pub.stop(timeout=1.0)
            pub.outbox.close()
            sub.stop()
    everything = "".join(p.read_text(errors="replace") for p in env["state"].rglob("*") if p.is_file()
                         and p.suffix in (".json", ".jsonl"))
    assert "AAAA" not in everything and "0.9.0" not in everything
