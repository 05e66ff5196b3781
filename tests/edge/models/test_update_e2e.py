"""Acceptance: the running daemon is updated mid-stream and keeps publishing without a gap.

Real parts end to end: ``sonotrap run`` (file source replayed in real time, looping) publishes
to a real Mosquitto; a stdlib HTTP server offers signed bundles; ``sonotrap update`` (a
separate process, as the systemd timer runs it) and the MQTT ``cmd/update`` command (handled
inside the daemon) switch models. Afterwards the hop log must be continuous -- every hop
index once, window ends exactly hop_s apart -- with the model version changing only forward
at the switch points, and detections published after each switch carry the new version.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from edge.models.update.command_auth import sign_command
from edge.models.update.lock import UpdateLock
from tests.support.broker import Subscriber
from tests.support.daemon_helpers import LOW, read_jsonl, write_tones
from tests.support.paths import REPO
from tests.support.process import Spawned
from tests.support.update_server import BundleServer, make_device, publish_bundle, write_index
from tests.support.waiting import wait_for

HOP = 0.5
DEVICE = "e2e-recorder"


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _versions(msgs) -> list[str]:
    return [m.json()["model"]["version"] for m in msgs if m.topic.endswith("/detections")]


def _events(msgs) -> list[str]:
    return [m.json()["event"] for m in msgs if m.topic.endswith("/events")]


@pytest.mark.slow
def test_daemon_is_updated_mid_stream_without_a_gap(tmp_path, mosquitto):
    dev = make_device(tmp_path)
    work, srv, key = tmp_path / "work", dev["srv"], dev["keys"].private
    v11 = publish_bundle(work, srv, "1.1.0", key)
    v12 = publish_bundle(work, srv, "1.2.0", key)
    write_index(srv, {"stable": v12})
    wav = write_tones(tmp_path / "calls.wav", [(None, 2.5), (LOW, 0.5)])  # a call every 3 s
    with BundleServer(srv) as server:
        cfg = tmp_path / "config.toml"
        cfg.write_text(f"""
state_dir = "{dev['state']}"
[model]
bundle = "{dev['state'] / 'models' / 'current'}"
hop_s = {HOP}
[mqtt]
host = "127.0.0.1"
port = {mosquitto.port}
device_id = "{DEVICE}"
[update]
url = "{server.url}"
allowed_base_urls = ["{server.url}"]
trusted_keys_dir = "{dev['keys'].public_dir}"
jitter_s = 0.0
min_free_mb = 0.0
health_timeout_s = 30.0
""")
        with Subscriber(mosquitto.port, f"sonotrap/{DEVICE}/#") as sub:
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            env.pop("NOTIFY_SOCKET", None)
            daemon = Spawned(
                [sys.executable, "-m", "edge", "run", "--config", str(cfg), "--file", str(wav), "--realtime",
                 "--loop", "--hops-jsonl", str(tmp_path / "hops.jsonl")],
                cwd=REPO, env=env,
            )
            try:
                sub.wait_for(lambda ms: "1.0.0" in _versions(ms), timeout=40)

                # 1) signed MQTT command naming a URL outside the allowed base: refused, nothing fetched
                sub.client.publish(f"sonotrap/{DEVICE}/cmd/update",
                                   sign_command(key, DEVICE, {"url": "http://203.0.113.9/evil.tar.gz"}), qos=1)
                sub.wait_for(lambda ms: "update_rejected" in _events(ms), timeout=30)

                # 2) MQTT command naming 1.1.0 by URL: handled inside the daemon (in-process swap)
                sub.client.publish(f"sonotrap/{DEVICE}/cmd/update",
                                   sign_command(key, DEVICE, {"url": server.url + v11.archive.name,
                                                              "sha256": v11.sha256}), qos=1)
                sub.wait_for(lambda ms: "update_succeeded" in _events(ms), timeout=60)
                sub.wait_for(lambda ms: "1.1.0" in _versions(ms), timeout=30)

                # 3) the timer's path: `sonotrap update` in its own process -> 1.2.0 via SIGHUP,
                # once the daemon's worker has let go of the update lock (one activity at a time)
                wait_for(lambda: UpdateLock(dev["state"]).holder() == {}, timeout=10)
                proc = _cli("update", "--config", str(cfg), "--no-jitter")
                assert proc.returncode == 0, proc.stdout + proc.stderr
                assert "updated 1.1.0 -> 1.2.0" in proc.stdout
                sub.wait_for(lambda ms: "1.2.0" in _versions(ms), timeout=30)

                # 4) operator rollback: back to 1.1.0, hot-swapped as well
                proc = _cli("model", "rollback", "--config", str(cfg))
                assert proc.returncode == 0, proc.stdout + proc.stderr
                n = len(_versions(sub.messages))
                sub.wait_for(lambda ms: "1.1.0" in _versions(ms)[n:], timeout=30)
                listed = _cli("model", "list", "--config", str(cfg), "--json")
                state = {m["version"]: (m["current"], m["previous"]) for m in json.loads(listed.stdout)}
                assert state == {"1.0.0": (False, False), "1.1.0": (True, False), "1.2.0": (False, True)}
                # status (file and retained MQTT) shows current/previous and the last update's result
                want = {"current": "1.1.0", "previous": "1.2.0"}

                def status_ok(ms):
                    st = [m.json() for m in ms if m.topic.endswith("/status") and m.json().get("models")]
                    return st and {k: st[-1]["models"][k] for k in want} == want

                sub.wait_for(status_ok, timeout=40)
                # "check now": 1.2.0 is still on offer, but the operator rolled it back -> not re-applied
                sub.client.publish(f"sonotrap/{DEVICE}/cmd/update", sign_command(key, DEVICE, {}), qos=1)
                sub.wait_for(lambda ms: "update_up_to_date" in _events(ms), timeout=30)
                models = json.loads((dev["state"] / "status.json").read_text())["models"]
                assert models["last_update"]["result"] == "updated" and models["current"] == "1.1.0"
                daemon.send_signal(signal.SIGTERM)
                _out, err = daemon.communicate(timeout=30)
            finally:
                daemon.kill()
            assert daemon.returncode == 0, err[-2000:]
            msgs = list(sub.messages)

    # --- no gap: every hop once, window ends exactly HOP apart, across all three swaps
    hops = read_jsonl(tmp_path / "hops.jsonl")
    ks = [h["hop"] for h in hops]
    assert ks == list(range(ks[0], ks[0] + len(ks))), "a hop was skipped or repeated"
    steps = {round(b["sample_end"] - a["sample_end"]) for a, b in zip(hops, hops[1:], strict=False)}
    assert len(steps) == 1, f"hop spacing changed: {steps}"
    dt = [b["t_end"] - a["t_end"] for a, b in zip(hops, hops[1:], strict=False)]
    assert max(abs(d - HOP) for d in dt) < 0.01, "audio time jumped"
    runs = [v for i, v in enumerate(h["model_version"] for h in hops) if i == 0 or hops[i - 1]["model_version"] != v]
    assert runs == ["1.0.0", "1.1.0", "1.2.0", "1.1.0"], runs
    # --- detections kept flowing and carry the model that produced them
    versions = _versions(msgs)
    det_runs = [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]
    assert det_runs == ["1.0.0", "1.1.0", "1.2.0", "1.1.0"], det_runs
    # --- every step reported on .../events (daemon and both updater paths)
    events = _events(msgs)
    for kind in ("update_rejected", "update_started", "update_downloaded", "update_verified", "model_activated",
                 "update_succeeded", "model_changed", "model_rolled_back"):
        assert kind in events, (kind, events)
    status = json.loads((dev["state"] / "update-status.json").read_text())
    assert (status["current"], status["previous"]) == ("1.1.0", "1.2.0")
    assert status["last_update"]["result"] == "updated"
