"""The field in a box: the real daemon against a real broker that keeps restarting, a disk
that fills up, and SIGKILL at random moments. "Committed" detections are what the daemon wrote
to its ``--jsonl`` sink (after the outbox commit): every one must arrive, once, in order."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.mqtt.outbox import Outbox
from edge.service.status import read_status
from tests.support.broker import Mosquitto, Subscriber, free_port
from tests.support.daemon_helpers import HIGH, LOW, REPO, read_jsonl, sonotrap, write_tones
from tests.support.disk import fill_fs
from tests.support.process import Spawned
from tests.support.tiny_model import make_tiny_bundle
from tests.support.waiting import wait_for

DEVICE = "fault-01"
FAST_MQTT = ["--set", "mqtt.reconnect_min_s=0.2", "--set", "mqtt.reconnect_max_s=1.0",
             "--set", "mqtt.keepalive_s=5", "--set", "mqtt.status_interval_s=1"]


def ids(path: Path) -> list[str]:
    return [d["id"] for d in read_jsonl(path)]


def _in_order_per_label(got: list[dict], expected: list[dict]) -> None:
    for label in {d["label"] for d in expected}:
        want = [d["id"] for d in expected if d["label"] == label]
        have = [d["id"] for d in got if d["label"] == label]
        assert have == want, f"{label}: order or content differs"


@pytest.fixture
def daemon_env(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle")
    wav = write_tones(tmp_path / "tones.wav", [(LOW, 0.5), (None, 1.0), (HIGH, 0.5), (None, 1.0)])
    return bundle, wav


@pytest.fixture
def separate_calls(tmp_path):
    """Calls 5 s apart (one detection each), replayed as fast as the daemon goes: hundreds of
    detections in flight across every broker restart."""
    bundle = make_tiny_bundle(tmp_path / "bundle")
    wav = write_tones(tmp_path / "calls.wav", [(LOW, 0.6), (None, 4.4), (HIGH, 0.6), (None, 4.4)])
    return bundle, wav


def _launch(bundle, wav, port, state, jsonl, *extra, realtime: bool = True):
    return sonotrap("run", "--model", str(bundle), "--file", str(wav), "--realtime" if realtime else "--fast", "--loop",
                    "--broker", f"127.0.0.1:{port}", "--device-id", DEVICE, "--state-dir", str(state),
                    "--jsonl", str(jsonl), *FAST_MQTT, *extra)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    return err


def _flapping_broker_run(tmp_path, daemon_env, *, every_s: float, for_s: float, qos: int, realtime: bool = True):
    """The real daemon streams audio while the broker is down 1 s every ``every_s`` seconds for
    ``for_s`` seconds; returns (committed detections, received payloads, restarts, daemon log)."""
    bundle, wav = daemon_env
    # QoS 2 keeps order only with one message in flight per hop: the recorder does that itself,
    # the broker to this subscriber by its max_inflight_messages
    broker = Mosquitto(tmp_path / "broker", persistence=True, max_inflight=1 if qos == 2 else None).start()
    sub = Subscriber(broker.port, f"sonotrap/{DEVICE}/detections", client_id="flap-sub", persistent=True, qos=qos)
    proc = _launch(bundle, wav, broker.port, tmp_path / "state", tmp_path / "d.jsonl", "--set", f"mqtt.qos={qos}",
                   "--set", 'mqtt.protocol="5"' if qos == 2 else 'mqtt.protocol="3.1.1"',
                   realtime=realtime)
    restarts = 0
    try:
        wait_for(lambda: sub.on_topic("/detections"), 40)
        end = time.monotonic() + for_s
        while time.monotonic() < end:
            time.sleep(every_s - 1.0)
            broker.stop()
            time.sleep(1.0)
            broker.start()
            restarts += 1

        def missing() -> list[str]:
            have = {m.json()["id"] for m in sub.on_topic("/detections")}
            return [i for i in ids(tmp_path / "d.jsonl") if i not in have]

        try:
            # stop only once the daemon is connected again: what the shutdown flushes is then
            # delivered too (while the broker is down it stays in the outbox for the next start)
            try:
                wait_for(lambda: (read_status(tmp_path / "state").get("outbox") or {}).get("connected"), 30)
            except AssertionError:
                raise AssertionError(f"not connected again: {read_status(tmp_path / 'state').get('outbox')}; "
                                     f"broker log: {broker.log()[-1500:]}") from None
            time.sleep(3.0)
        finally:
            err = _stop(proc)
        expected = read_jsonl(tmp_path / "d.jsonl")
        with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
            left = {json.loads(p).get("id") for (p,) in db.execute("SELECT payload FROM outbox")}
        # what the stop could not flush in time stays committed on disk for the next start
        want = {d["id"] for d in expected} - left
        try:
            wait_for(lambda: not set(missing()) - left, 30)
        except AssertionError:
            gone = missing()
            raise AssertionError(f"{len(gone)} of {len(want)} never arrived; log: {err[-3000:]}") from None
        time.sleep(1.0)  # a late duplicate would show up here
        got = [m.json() for m in sub.on_topic("/detections")]
        assert {d["id"] for d in got} - left == want, "delivered != produced"
        assert len(left) <= 20, f"{len(left)} detections left in the outbox after a clean stop"
        return [d for d in expected if d["id"] not in left], got, restarts, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sub.stop()
        broker.stop()


@pytest.mark.slow
def test_broker_restarting_every_10_s_for_2_minutes_delivers_each_detection_once(tmp_path, separate_calls) -> None:
    """QoS 2 (the default) end to end with a persistent broker and subscriber: every detection
    arrives exactly once, in order per label, through a dozen broker restarts."""
    expected, got, restarts, err = _flapping_broker_run(tmp_path, separate_calls, every_s=10, for_s=120, qos=2,
                                                         realtime=False)
    got_ids = [d["id"] for d in got]
    dups = len(got_ids) - len(set(got_ids))
    print(f"broker restarting every 10 s for 2 min: {restarts} restarts, {len(expected)} detections produced, "
          f"{len(set(got_ids))} delivered, {dups} duplicates")
    assert dups == 0, f"{dups} detections arrived twice"
    _in_order_per_label(got, expected)
    assert restarts >= 11 and len(expected) >= 200, (restarts, len(expected), err[-1500:])


@pytest.mark.slow
def test_broker_restarting_every_few_seconds_with_qos_1_delivers_at_least_once(tmp_path, separate_calls) -> None:
    """``mqtt.qos = 1`` (brokers without QoS 2): every detection arrives; a copy is possible only
    when a restart swallowed an acknowledgement, and it is the identical payload (same id)."""
    expected, got, restarts, err = _flapping_broker_run(tmp_path, separate_calls, every_s=4, for_s=24, qos=1,
                                                         realtime=False)
    first: dict[str, dict] = {}
    for d in got:
        assert first.setdefault(d["id"], d) == d, "two different detections share an id"
    assert len(got) - len(first) <= restarts * 20, "more re-sends than restarts explain"
    _in_order_per_label(list(first.values()), expected)
    assert restarts >= 5 and len(expected) >= 50, (restarts, len(expected), err[-1500:])
    print(f"broker flapping (QoS 1): {restarts} restarts, {len(expected)} detections produced, "
          f"{len(first)} delivered, {len(got) - len(first)} re-sends")


@pytest.mark.slow
def test_sigkill_at_random_points_never_corrupts_the_outbox_or_loses_a_commit(tmp_path) -> None:
    """The real Publisher + Outbox in a process killed -9 at 12 random moments, broker up or down."""
    rng = random.Random(12)
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    sub = Subscriber(broker.port, "sonotrap/proc-01/detections", client_id="kill-sub", persistent=True)
    outbox, jsonl = tmp_path / "outbox.sqlite", tmp_path / "committed.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        for round_ in range(12):
            up = round_ % 3 != 2
            if up and not broker.running:
                broker.start()
            elif not up and broker.running:
                broker.stop()
            proc = Spawned(
                [sys.executable, "-m", "tests.support.publisher_proc", "--port", str(broker.port),
                 "--outbox", str(outbox), "--jsonl", str(jsonl), "--every", "0.003"],
                cwd=REPO, env=env)
            start = len(ids(jsonl))  # kill at a random moment once it is publishing (slow start on a busy CI)
            wait_for(lambda p=proc, n=start: len(ids(jsonl)) > n or p.poll() is not None, 60)
            time.sleep(rng.uniform(0.0, 0.8))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            with sqlite3.connect(outbox) as db:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", f"round {round_}"
            box = Outbox(outbox)
            assert box.recovered is None and box.mode == "disk"
            box.close()
        broker.start()
        proc = Spawned(  # a clean run drains what the killed ones left behind
            [sys.executable, "-m", "tests.support.publisher_proc", "--port", str(broker.port),
             "--outbox", str(outbox), "--jsonl", str(jsonl), "--every", "0.05", "--count", "1"],
            cwd=REPO, env=env)
        committed = ids(jsonl)
        assert len(committed) > 50
        wait_for(lambda: set(committed) <= {m.json()["id"] for m in sub.on_topic("/detections")}, 40)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
        print(f"SIGKILL: 12 kills, {len(committed)} detections committed, all delivered, outbox intact each time")
    finally:
        sub.stop()
        broker.stop()


def _status(sub: Subscriber) -> list[dict]:
    return [m.json() for m in sub.on_topic("/status") if m.json().get("state") == "online"]


@pytest.mark.slow
def test_disk_full_for_clips_and_outbox_then_space_returns(tmp_path, daemon_env, small_fs) -> None:
    bundle, wav = daemon_env
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    sub = Subscriber(broker.port, [f"sonotrap/{DEVICE}/#"], client_id="full-sub", persistent=True)
    state = small_fs / "state"
    proc = _launch(bundle, wav, broker.port, state, tmp_path / "d.jsonl", "--set", "clips.enabled=true",
                   "--set", "clips.pre_s=0.2", "--set", "clips.post_s=0.2", "--set", "outbox.retry_s=1",
                   "--set", "detector.max_event_s=2",  # short events: one clip (<= 154 KB) fits the 600 KiB disk
                   "--set", "clips.quota_mb=0.25")  # ... and once space is back, clips cannot fill it again
    filler = small_fs / "filler"
    try:
        wait_for(lambda: len(list((state / "clips").glob("*.wav"))) >= 1, 40)
        fill_fs(small_fs)  # to the last byte
        before = len(ids(tmp_path / "d.jsonl"))
        wait_for(lambda: any(s["outbox"].get("outbox_mode") == "memory" for s in _status(sub)), 30)
        wait_for(lambda: len(ids(tmp_path / "d.jsonl")) >= before + 4, 30)
        events = [m.json() for m in sub.on_topic("/events")]
        assert any(e.get("event") == "clip_failed" or e.get("kind") == "clip_failed" for e in events) or \
            "clip_failed" in json.dumps(events), events
        assert proc.poll() is None, "the daemon died on a full disk"
        clips_full = {p.name for p in (state / "clips").glob("*.wav")}
        filler.unlink()  # space comes back
        wait_for(lambda: {p.name for p in (state / "clips").glob("*.wav")} - clips_full, 30)  # a new clip
        wait_for(lambda: (_status(sub) or [{}])[-1].get("outbox", {}).get("outbox_mode") == "disk", 30)
        _stop(proc)
        want = set(ids(tmp_path / "d.jsonl"))
        wait_for(lambda: want <= {m.json()["id"] for m in sub.on_topic("/detections")}, 30)
        with sqlite3.connect(state / "outbox.sqlite") as db:
            assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    finally:
        filler.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sub.stop()
        broker.stop()


def test_the_daemon_starts_on_a_damaged_outbox_and_says_so(tmp_path, daemon_env) -> None:
    bundle, _ = daemon_env
    wav = write_tones(tmp_path / "short.wav", [(None, 1.0), (LOW, 1.0), (None, 1.0)])
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.sqlite").write_bytes(b"\0garbage" * 4096)
    port = free_port()  # broker down: the event waits in the fresh outbox
    r = subprocess.run([sys.executable, "-m", "edge", "run", "--model", str(bundle), "--file", str(wav), "--fast",
                        "--broker", f"127.0.0.1:{port}", "--device-id", DEVICE, "--state-dir", str(state)],
                       cwd=REPO, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "is damaged" in r.stderr and "Traceback" not in r.stderr
    status = json.loads((state / "status.json").read_text())
    assert status["outbox"]["outbox_recovered"]["moved_to"].startswith(str(state / "outbox.sqlite.corrupt-"))
    with sqlite3.connect(state / "outbox.sqlite") as db:
        payloads = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox ORDER BY id")]
    assert "outbox_recovered" in json.dumps(payloads[0])
