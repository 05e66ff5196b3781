"""One update activity at a time per device, across processes, and no stale lock after a crash.

Before, only a ``threading.Lock`` inside one process kept updates apart: ``sonotrap update``
(by hand or from the timer) and the daemon's MQTT command could check, download and verify
at the same time. Now every activity holds ``<state_dir>/update.lock`` (flock): a second one
is refused at once with a line naming the holder, and a SIGKILLed holder frees it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from edge.models.update.attach import attach_mqtt_updates
from edge.models.update.command_auth import sign_command
from edge.models.update.lock import BUSY_EXIT_STATUS, UpdateBusy, UpdateLock
from edge.models.update.procedure import Updater
from tests.support.daemon_helpers import run_cli, sonotrap
from tests.support.update_server import (
    BundleServer,
    command_endpoint,
    make_cfg,
    publish_bundle,
    write_cli_config,
    write_index,
)
from tests.support.waiting import wait_for

DEVICE = "rec-lock"
TRICKLE_S = 0.2  # the index (a few hundred bytes) then takes about a minute: the holder holds


def _state_files(state) -> dict[str, int]:
    return {str(p.relative_to(state)): p.stat().st_size for p in state.rglob("*") if p.is_file()}


def _refused(state) -> int | None:
    path = state / "update-status.json"
    return json.loads(path.read_text()).get("commands", {}).get("refused") if path.exists() else None


def _start_holder(config, state):
    """A real ``sonotrap update`` stuck on the trickling index, holding the update lock."""
    proc = sonotrap("update", "--config", str(config), "--no-jitter")
    lock = UpdateLock(state)
    try:
        wait_for(lambda: proc.poll() is not None or lock.holder().get("pid") == proc.pid, timeout=60)
    except BaseException:
        proc.kill()
        raise
    assert proc.poll() is None, proc.communicate()
    return proc


def _kill(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def test_second_update_process_is_refused_and_a_killed_holder_frees_the_lock(env):
    v2 = publish_bundle(env["tmp"] / "work", env["srv"], "1.1.0", env["keys"].private)
    write_index(env["srv"], {"stable": v2})
    with BundleServer(env["srv"]) as server:
        config = write_cli_config(env, server.url)
        server.faults.trickle_s = TRICKLE_S
        holder = _start_holder(config, env["state"])
        try:
            before = _state_files(env["state"])
            t0 = time.monotonic()
            second = run_cli("update", "--config", str(config), "--no-jitter", timeout=40)
            refused_in = time.monotonic() - t0
            assert second.returncode == BUSY_EXIT_STATUS, (second.stdout, second.stderr)
            lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
            assert len(lines) == 1, second.stderr
            assert lines[0].startswith("error: update refused: update (pid ")
            assert f"pid {holder.pid}," in lines[0] and "update.lock" in lines[0], lines[0]
            assert second.stdout == ""
            # it wrote nothing and fetched nothing: the only index request is the holder's
            assert _state_files(env["state"]) == before
            assert len(server.hits("index.json")) == 1
            assert server.hits(v2.archive.name) == []
            rollback = run_cli("model", "rollback", "--config", str(config), timeout=40)  # the operator's path too
            assert rollback.returncode == BUSY_EXIT_STATUS and "rollback refused: update (pid" in rollback.stderr
            assert _state_files(env["state"]) == before
            # SIGKILL: no clean-up runs, the kernel drops the flock with the process
            holder.send_signal(signal.SIGKILL)
            holder.communicate(timeout=30)
        finally:
            _kill(holder)
        server.faults.trickle_s = 0.0
        third = run_cli("update", "--config", str(config), "--no-jitter", timeout=120)
    assert third.returncode == 0, (third.stdout, third.stderr)
    assert "installed 1.1.0" in third.stdout
    assert env["store"].current().version == "1.1.0"
    print(f"second update refused in {refused_in:.2f} s (process start included)")


def test_mqtt_command_is_refused_while_a_cli_update_holds_the_lock(env, mosquitto):
    write_index(env["srv"], {"stable": env["v1"]})  # nothing newer: a free check is "up to date"
    with BundleServer(env["srv"]) as server:
        config = write_cli_config(env, server.url)
        pub, sub = command_endpoint(env, mosquitto.port, DEVICE)
        server.faults.trickle_s = TRICKLE_S
        holder = _start_holder(config, env["state"])
        try:
            attach_mqtt_updates(make_cfg(env, server.url), None, pub)
            pub.start()
            time.sleep(1.0)  # subscribed
            threads_before = threading.active_count()
            topic = f"sonotrap/{DEVICE}/cmd/update"
            for _ in range(5):
                sub.client.publish(topic, sign_command(env["keys"].private, DEVICE, {}), qos=1)
            msg = sub.wait_for(lambda ms: next((m for m in ms if m.json().get("event") == "command_rejected"), None),
                               timeout=30)
            reason = msg.json()["data"]["reason"]
            assert f"pid {holder.pid}," in reason and "holds the update lock" in reason, reason
            wait_for(lambda: _refused(env["state"]) == 5, timeout=20)
            assert threading.active_count() <= threads_before  # refused in the callback: no worker
            assert len(server.hits("index.json")) == 1  # the holder's: the daemon fetched nothing
            kinds = [m.json().get("event") for m in sub.messages]
            assert kinds.count("command_rejected") == 1, kinds  # bounded: one report per interval
            _kill(holder)
            server.faults.trickle_s = 0.0
            sub.client.publish(topic, sign_command(env["keys"].private, DEVICE, {}), qos=1)
            sub.wait_for(lambda ms: any(m.json().get("event") == "update_up_to_date" for m in ms), timeout=30)
        finally:
            _kill(holder)
            pub.stop(timeout=1.0)
            pub.outbox.close()
            sub.stop()


def test_one_activity_per_process_too_and_the_holder_is_named(env):
    lock = UpdateLock(env["state"])
    with lock.hold("rollback"):
        with pytest.raises(UpdateBusy) as busy:
            lock.acquire("update")  # a second acquisition opens the file anew: refused in-process too
        assert lock.holder()["pid"] == os.getpid()
        msg = str(busy.value)
        assert msg.startswith(f"update refused: rollback (pid {os.getpid()}, started ")
        assert "\n" not in msg and len(msg) < 200 + len(str(lock.path))
        with pytest.raises(UpdateBusy):
            Updater(make_cfg(env)).update()
        assert not (env["state"] / "update-status.json").exists()  # a refused activity writes nothing
    assert lock.path.read_text() == ""  # released: no stale holder text
    lock.acquire("update").release()
