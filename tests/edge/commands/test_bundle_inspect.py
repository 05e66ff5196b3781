"""`sonotrap bundle inspect` summarises what the manifest holds, nested training metrics included."""

from __future__ import annotations

import json

from edge.models.bundle import DEFAULT_BUNDLE
from tests.support.daemon_helpers import run_cli


def test_inspect_shows_the_training_metrics_and_species_names():
    r = run_cli("bundle", "inspect", timeout=120)
    assert r.returncode == 0, r.stderr
    training = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())["metrics"]["training"]
    line = next(x for x in r.stdout.splitlines() if "metrics training:" in x)
    assert "{}" not in line
    # A cross-fitted model reports its validation figure as in-sample, the held-out one as cross_fit.
    for key in ("val", "val_in_sample", "cross_fit"):
        if key in training:
            assert f"{key} (macro_ap={training[key]['macro_ap']:.4g}" in line
    assert "val" in training or "cross_fit" in training
    assert f"test (macro_ap={training['test']['macro_ap']:.4g}" in line
    assert "per_class" not in r.stdout  # per-class tables stay in the manifest / --json
    assert "Erirub" not in line and "Long-tailed Tit (Aegithalos caudatus) call" in r.stdout
