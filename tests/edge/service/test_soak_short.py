"""CI-sized version of bench/soak.py: 24 minutes of audio pushed through the real daemon as
fast as it goes, broker restarting every second; memory, fds and threads stay flat, every
detection arrives and the outbox ends empty. The 24-hour figures are in docs/reliability.md."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_short_accelerated_soak(tmp_path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import soak
    finally:
        sys.path.remove(str(REPO / "bench"))
    res = soak.soak(hours=0.4, flap_every=1.0, down=0.3, tmp=tmp_path, steady_tail=0.3)  # ~10 s on an idle machine
    assert res["exit_code"] == 0, res["stderr_tail"]
    assert res["broker_restarts"] >= 2 and res["detections_committed"] >= 60, res
    assert res["detections_received_unique"] == res["detections_committed"], {k: v for k, v in res.items() if k != "stderr_tail"}
    assert res["outbox_left_after_exit"] == 0, res
    assert res["qos"] == 2 and res["duplicates"] == 0, res  # exactly once through the restarts
    assert res["threads_end"] <= res["threads_base"] + 1 and res["fds_end"] <= res["fds_base"] + 2, res
    assert res["rss_growth_pct"] < 10.0, res  # short run: the 24-h bench holds it under 5 %
