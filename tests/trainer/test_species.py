"""Species tables: readable names ("European Robin (Erithacus rubecula) song") for any data set,
carried from `train --species` through the run directory into the bundle's label entries."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig
from edge.models.manifest import Label, Manifest
from trainer.bundle_builder import _run_species
from trainer.prepare import DataSpec, prepare_run
from trainer.species import SPECIES_FILE, Species, display_name, read_species

SMALL = FrontendConfig(n_mels=32, n_frames=32, hop_length=2000)
TABLE = "code,scientific_name,common_name,group\nErirub,Erithacus rubecula,European Robin,bird\nHuman,,Human voice,\n"


def test_display_names_keep_the_call_type_and_fall_back_for_unknown_codes(tmp_path):
    (tmp_path / "s.csv").write_text(TABLE)
    table = read_species(tmp_path / "s.csv")
    assert display_name("Erirub_song", table) == "European Robin (Erithacus rubecula) song"
    assert display_name("Erirub", table) == "European Robin (Erithacus rubecula)"
    assert display_name("Human", table) == "Human voice"
    table["Plaaff"] = Species("Plaaff", "Platycleis affinis", "Bush-cricket (Platycleis affinis)", "insect")
    assert display_name("Plaaff_song", table) == "Bush-cricket (Platycleis affinis) song"  # not named twice
    assert display_name("Sylmel_call", table) is None


@pytest.mark.parametrize("text, why", [
    ("code,common_name\nErirub,European Robin\n", r"lacks column\(s\) scientific_name"),
    ("code,scientific_name,common_name\nErirub,a,b\nErirub,c,d\n", "appears twice"),
])
def test_bad_species_tables_say_what_to_fix(tmp_path, text, why):
    (tmp_path / "s.csv").write_text(text)
    with pytest.raises(SonotrapError, match=why):
        read_species(tmp_path / "s.csv")


def test_train_species_table_reaches_the_run_and_the_bundle_labels(data_dir, tmp_path):
    (tmp_path / "s.csv").write_text("code,scientific_name,common_name,group\n"
                                    "low,Bubo lowus,Low Owl,bird\nunused,X y,Z,bird\n")
    run = tmp_path / "run"
    prepare_run(DataSpec(data=str(data_dir), seed=3, species_file=str(tmp_path / "s.csv")), SMALL, run)
    names = json.loads((run / "dataset.json").read_text())["label_names"]
    assert names["low"] == "Low Owl (Bubo lowus)" and names["high"] == "high"
    assert "unused" not in (run / SPECIES_FILE).read_text()  # only the rows the run's labels use
    species = _run_species(run, ["high", "low"])
    assert species == {"low": {"scientific_name": "Bubo lowus", "common_name": "Low Owl", "group": "bird"}}
    labels = [Label(c, names[c], **species.get(c, {})) for c in ("high", "low")]
    man = Manifest("m", "1.0.0", labels, {}, {}, "0")
    back = Manifest.from_dict(json.loads(json.dumps(man.to_dict())))
    assert back.labels[1].common_name == "Low Owl" and back.labels[0].scientific_name == ""


def test_label_entries_with_fields_this_edge_does_not_know_still_load():
    man = Manifest.from_dict({"name": "m", "version": "1.0.0", "thresholds": {}, "frontend": {}, "model_sha256": "0",
                              "labels": [{"code": "a", "name": "A", "call_type_note": "from a newer trainer"}]})
    assert man.labels[0].name == "A"


def test_the_demo_bundle_names_species(tmp_path):
    from edge.models.bundle import DEFAULT_BUNDLE

    man = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    robin = next(lab for lab in man["labels"] if lab["code"] == "Erirub_song")
    assert robin["name"] == "European Robin (Erithacus rubecula) song"
    assert robin["scientific_name"] == "Erithacus rubecula" and robin["common_name"] == "European Robin"
    assert sum(bool(lab.get("scientific_name")) for lab in man["labels"]) == 87  # all but Human, Unknown


def test_the_demo_model_builder_refuses_a_run_without_species(tmp_path):
    """A run directory assembled by hand without species.csv would ship labels without names."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "build-demo-model"
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"")
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "PY": "false"}
    res = subprocess.run(["bash", str(script), str(run)], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: no species.csv in {run}; train with --species FILE or copy it from the run its data came from"]
    assert not (tmp_path / "out").exists() and not (run / "demo-snapshot.pt").exists()
