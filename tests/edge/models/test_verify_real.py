"""Verification runs what the daemon will run; a model that fails anywhere never stays current.

Before: a signed bundle with n_fft 2**31 or window_s 1e7 passed verification; installed over
MQTT the MemoryError killed the update thread with ``current`` on the bad model, and the next
start exited 1 (a restart loop under systemd).
"""

from __future__ import annotations

import json

import pytest

from edge.config import Config, ModelConfig
from edge.errors import SonotrapError
from edge.models.store import store_root
from edge.models.update.procedure import Updater
from edge.models.update.startup import load_startup_bundle
from edge.models.verify import verify_in_subprocess
from tests.support.update_server import (
    BundleServer,
    events,
    make_cfg,
    publish_bundle,
    write_index,
)


def _frontend(**changes):
    def mutate(d):
        m = json.loads((d / "manifest.json").read_text())
        m["frontend"].update(changes)
        (d / "manifest.json").write_text(json.dumps(m))
    return mutate


@pytest.mark.parametrize("changes, field", [
    ({"n_fft": 2**31}, "n_fft"),
    ({"window_s": 1e7}, "window_s"),
    ({"hop_length": "500"}, "hop_length"),
])
def test_absurd_signed_frontend_is_refused_by_verification(env, changes, field):
    v2 = publish_bundle(env["tmp"] / "work", env["srv"], "1.1.0", env["keys"].private, mutate=_frontend(**changes))
    write_index(env["srv"], {"stable": v2})
    seen, report = events()
    with BundleServer(env["srv"]) as server:
        res = Updater(make_cfg(env, server.url), report=report).update()
    assert res.result == "rejected" and field in res.reason and "\n" not in res.reason, res
    assert env["store"].current().version == "1.0.0"
    assert [k for k, _ in seen].count("update_rejected") == 1


def test_verification_runs_under_a_memory_limit(env):
    # 64 MB of address space cannot even hold onnxruntime: the child fails, the caller gets one line
    with pytest.raises(SonotrapError) as exc:
        verify_in_subprocess(env["v1"].dir, trusted_keys=env["keys"].public_dir, allow_unsigned=False,
                             memory_mb=64)
    assert "\n" not in str(exc.value)
    # the same bundle passes with the default limit
    assert verify_in_subprocess(env["v1"].dir, trusted_keys=env["keys"].public_dir, allow_unsigned=False).version == "1.0.0"


class FailingSwap:
    """A daemon whose in-process swap dies the way a huge frontend did (MemoryError)."""

    def __init__(self) -> None:
        self.swaps = 0

    def running(self) -> bool:
        return True

    def swap(self) -> None:
        self.swaps += 1
        if self.swaps == 1:
            raise MemoryError("cannot allocate")

    def status(self) -> dict:
        return {"model_version": "1.0.0", "last_hop_epoch": float(self.swaps)}


def test_a_swap_that_dies_leaves_the_previous_model_current(env):
    v2 = publish_bundle(env["tmp"] / "work", env["srv"], "1.1.0", env["keys"].private)
    write_index(env["srv"], {"stable": v2})
    seen, report = events()
    with BundleServer(env["srv"]) as server:
        res = Updater(make_cfg(env, server.url, health_timeout_s=2.0), daemon=FailingSwap(), report=report).update()
    assert res.result == "rolled-back" and "MemoryError" in res.reason, res
    assert env["store"].current().version == "1.0.0"
    assert [k for k, _ in seen].count("update_rolled_back") == 1


def test_start_with_a_broken_current_falls_back_to_previous(env):
    v2 = publish_bundle(env["tmp"] / "work", env["srv"], "1.1.0", env["keys"].private)
    env["store"].install(v2.archive, trusted_keys=None, verify=False)
    env["store"].activate("1.1.0")
    current = store_root(env["state"]) / "current"
    (current.resolve() / "model.onnx").write_bytes(b"damaged on disk")
    cfg = Config(state_dir=str(env["state"]), model=ModelConfig(bundle=str(current)))
    bundle, note = load_startup_bundle(cfg, current)
    assert bundle.version == "1.0.0"
    assert note["from"] == "1.1.0" and note["to"] == "1.0.0" and "sha256" in note["reason"]
    assert env["store"].current().version == "1.0.0"
    status = json.loads((env["state"] / "update-status.json").read_text())
    assert status["last_update"]["result"] == "rolled-back" and status["failed"]["1.1.0"]["blocked"]
