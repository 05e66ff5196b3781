"""A small real process that behaves like the daemon towards the updater.

It runs the model in ``<state>/models/current`` on a real tone window every hop, writes
``<state>/status.json`` ({pid, model.version, last_hop_epoch}: the daemon's schema, written
with the daemon's own :func:`edge.service.status.write_status`) atomically, and re-loads the
model on SIGHUP between two hops -- the contract the updater relies on. ``--ignore-hup``
simulates a daemon that never comes back healthy on the new model. Used by the updater tests
that must not depend on the full audio pipeline; the end-to-end test uses the real daemon.

    python -m tests.support.standin_daemon STATE_DIR [--hop 0.05] [--ignore-hup]
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

import numpy as np

from edge.inference.frontend import compute
from edge.models.bundle import load_bundle
from edge.service.status import write_status
from tests.support.tiny_model import tone


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("state")
    ap.add_argument("--hop", type=float, default=0.05)
    ap.add_argument("--ignore-hup", action="store_true")
    args = ap.parse_args()
    state = Path(args.state)
    reload = {"pending": False}
    stop = {"now": False}
    signal.signal(signal.SIGHUP, lambda *_: reload.__setitem__("pending", not args.ignore_hup))
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("now", True))
    bundle = load_bundle(state / "models" / "current", self_test=False)
    session = bundle.create_session(1)
    x = compute(tone(1200.0, 2.0, 32000), 32000, bundle.frontend)[None].astype(np.float32)
    while not stop["now"]:
        if reload["pending"]:
            reload["pending"] = False
            try:
                bundle = load_bundle(state / "models" / "current", self_test=False)
                session = bundle.create_session(1)
            except Exception as err:  # keep the old model, like the real daemon
                print(f"reload failed: {err}", flush=True)
        session.run(None, {"input": x})
        write_status(state, {"pid": os.getpid(), "model": {"name": bundle.name, "version": bundle.version},
                             "last_hop_epoch": time.time()})
        time.sleep(args.hop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
