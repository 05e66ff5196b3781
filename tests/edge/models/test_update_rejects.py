"""Bad updates are rejected before the switch, and the old model keeps running.

Each case is a real bundle served over HTTP with one defect; the device (1.0.0, stand-in
daemon process serving hops) must end with 1.0.0 current and still serving, the bad bundle
absent from the store, and an ``update_rejected`` event naming the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.models.signing import sign_bundle
from edge.models.update.procedure import Updater
from edge.util.hashing import sha256_file
from tests.support.update_server import (
    BundleServer,
    events,
    make_cfg,
    make_keys,
    publish_bundle,
    write_index,
)


def _bad_labels(d: Path) -> None:
    m = json.loads((d / "manifest.json").read_text())
    m["labels"].append({"code": "tone_mid", "name": "tone mid"})
    (d / "manifest.json").write_text(json.dumps(m))


def _bad_frontend(d: Path) -> None:
    m = json.loads((d / "manifest.json").read_text())
    m["frontend"]["n_mels"] = 64
    (d / "manifest.json").write_text(json.dumps(m))


def _crashing_model(d: Path) -> None:
    (d / "model.onnx").write_bytes(b"\x08\x07this is not an onnx protobuf" * 50)
    m = json.loads((d / "manifest.json").read_text())
    m["model_sha256"] = sha256_file(d / "model.onnx")
    m["files"]["model.onnx"] = {"size": (d / "model.onnx").stat().st_size, "sha256": m["model_sha256"]}
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    "case, reason",
    [
        ("corrupt download", "sha256"),
        ("bad signature", "not among the trusted keys"),
        ("tampered after signing", "bad signature"),
        ("unsigned", "not signed"),
        ("wrong labels", "labels"),
        ("wrong frontend", "frontend"),
        ("crashes at load", "does not load in onnxruntime"),
    ],
)
def test_bad_update_is_rejected_and_old_model_keeps_running(env, daemon, case, reason):
    work, srv, key = env["tmp"] / "work", env["srv"], env["keys"].private
    if case == "bad signature":
        v2 = publish_bundle(work, srv, "1.1.0", make_keys(env["tmp"] / "rogue", "rogue").private)
    elif case == "unsigned":
        v2 = publish_bundle(work, srv, "1.1.0", None)
    elif case == "tampered after signing":
        def lower_thresholds(d):
            sign_bundle(d, key)
            m = json.loads((d / "manifest.json").read_text())
            m["thresholds"] = {k: 0.01 for k in m["thresholds"]}
            (d / "manifest.json").write_text(json.dumps(m))
        v2 = publish_bundle(work, srv, "1.1.0", None, mutate=lower_thresholds)
    else:
        mutate = {"wrong labels": _bad_labels, "wrong frontend": _bad_frontend,
                  "crashes at load": _crashing_model}.get(case)
        v2 = publish_bundle(work, srv, "1.1.0", key, mutate=mutate)
    write_index(srv, {"stable": v2})
    if case == "corrupt download":  # flip bytes on the server after the index was written
        data = bytearray(v2.archive.read_bytes())
        data[len(data) // 2] ^= 0xFF
        v2.archive.write_bytes(bytes(data))
    seen, report = events()
    with BundleServer(srv) as server:
        res = Updater(make_cfg(env, server.url), report=report).update()
    assert res.result == "rejected", res
    assert reason in res.reason, res.reason
    assert env["store"].current().version == "1.0.0"
    assert [m.version for m in env["store"].list()] == ["1.0.0"], "a rejected bundle never enters the store"
    daemon.assert_serving("1.0.0")
    assert seen[-1][0] == "update_rejected" and reason in seen[-1][1]["reason"]
    assert "model_activated" not in [k for k, _ in seen]
    status = json.loads((env["state"] / "update-status.json").read_text())
    assert status["last_update"]["result"] == "rejected" and status["current"] == "1.0.0"
