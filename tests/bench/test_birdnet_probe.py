"""The probe benchmark's metrics, by hand (the same functions score BirdNET's probe and our models)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge.inference.frontend import FrontendConfig

_spec = importlib.util.spec_from_file_location(
    "birdnet_probe", Path(__file__).resolve().parents[2] / "bench" / "birdnet_probe.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)

LABELS = ["a", "b"]


def test_recording_scores_take_the_max_over_each_recordings_windows():
    probs = np.array([[0.1, 0.9], [0.7, 0.2], [0.3, 0.4]])
    targets = np.array([[0, 1], [1, 0], [0, 0]], dtype=np.float32)
    known = np.ones_like(targets, dtype=bool)
    p, t, k = probe.recording_scores(probs, targets, known, ["r1", "r1", "r2"])
    np.testing.assert_allclose(p, [[0.7, 0.9], [0.3, 0.4]])
    np.testing.assert_array_equal(t, [[1, 1], [0, 0]])
    assert k.all()


def test_pooled_precision_recall_counts_positives_of_disabled_labels():
    probs = np.array([[0.9, 0.9], [0.8, 0.1], [0.2, 0.95]])
    targets = np.array([[1, 1], [0, 0], [0, 1]], dtype=np.float32)
    known = np.ones_like(targets, dtype=bool)
    th = {"a": {"threshold": 0.5, "enabled": True}, "b": {"threshold": 0.5, "enabled": False}}
    pr = probe.pooled_pr(probs, targets, known, LABELS, th)
    assert pr["precision"] == pytest.approx(0.5)  # a: one hit, one false alarm
    assert pr["recall"] == pytest.approx(1 / 3)  # b's two positives count, unfound
    assert pr["enabled_labels"] == 1


def test_validation_rule_disables_labels_that_cannot_reach_the_precision():
    s = np.array([[0.9, 0.9], [0.8, 0.8], [0.1, 0.7], [0.2, 0.1]])
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], dtype=np.float32)
    th = probe.val_thresholds(s, y, np.ones_like(y, dtype=bool), LABELS, 0.9)
    assert th["a"]["enabled"] and th["a"]["threshold"] == pytest.approx(0.8)
    assert not th["b"]["enabled"] and th["b"]["why"] == "best_f1"


def test_score_row_and_markdown():
    rng = np.random.default_rng(0)
    targets = (rng.random((20, 2)) < 0.4).astype(np.float32)
    probs = np.clip(targets * 0.6 + rng.random((20, 2)) * 0.5, 0, 1)
    known = np.ones_like(targets, dtype=bool)
    th = probe.val_thresholds(probs, targets, known, LABELS, 0.9)
    m = probe.score(probs, targets, known, LABELS, [f"r{i // 4}" for i in range(20)], th)
    assert 0.5 < m["window_macro_ap"] <= 1 and not math.isnan(m["recording_macro_roc_auc"])
    md = probe.markdown([{"model": "x", "thresholds": "val-p0.9", "split": "test", "metrics": m}])
    assert md.count("\n") == 2 and "| x | val-p0.9 | test |" in md


class BandTeacher:
    """A teacher whose 'embedding' is the log energy of the two synthetic call bands in the
    central 2 s of its 3-s input: the probe on it should find the calls (BirdNET's interface)."""

    def __init__(self) -> None:
        self.windows = 0

    def run(self, audio: np.ndarray):
        from trainer.birdnet import EMBEDDING_DIM, SAMPLE_RATE, Outputs

        self.windows += len(audio)
        centre = audio[:, SAMPLE_RATE // 2: -SAMPLE_RATE // 2]
        spec = np.abs(np.fft.rfft(centre, axis=1)) ** 2
        hz = np.fft.rfftfreq(centre.shape[1], 1 / SAMPLE_RATE)
        emb = np.zeros((len(audio), EMBEDDING_DIM), np.float32)
        for d, (lo, hi) in enumerate(((1000, 1400), (3800, 4400))):
            emb[:, d] = np.log10(spec[:, (hz >= lo) & (hz < hi)].sum(axis=1) + 1e-9)
        return Outputs(emb, emb[:, :8])


def _user_view_setup(tmp_path):
    """21 synthetic recordings split 10/7/4, the band-energy teacher, a probe on its train
    embeddings and a band-detector bundle: (run, teacher, probe, bundle directory)."""
    from tests.support.synth_calls import make_dataset
    from tests.support.tiny_model import make_tiny_bundle
    from trainer.prepare import DataSpec, prepare_run
    from trainer.rundata import load_run_data
    from trainer.teacher_cache import ensure_cache
    from trainer.windows import to_arrays

    data = tmp_path / "data"
    make_dataset(data, n_files=18, n_negative=3)
    files = [f"audio/rec{i:02d}.{'flac' if i % 3 else 'wav'}" for i in range(21)]
    split = {"train": files[:9] + files[18:19], "val": files[9:15] + files[19:20], "test": files[15:18] + files[20:]}
    (data / "split.json").write_text(json.dumps(split))
    prepare_run(DataSpec(data=str(data), split_file=str(data / "split.json")), FrontendConfig(), tmp_path / "run")
    run = load_run_data(tmp_path / "run")
    teacher = BandTeacher()
    cache, groups = ensure_cache(run, None, model=teacher)
    targets, known = to_arrays(run.windows("train"), run.labels)
    model = probe.Probe(cache.embeddings[cache.rows(groups["train"])], targets, known, 1.0, 0)
    bundle = make_tiny_bundle(tmp_path / "b", bands={"low": (1000.0, 1400.0), "high": (3800.0, 4400.0)})
    return run, teacher, model, bundle


def test_user_view_scores_the_probe_at_the_daemons_hops_next_to_a_bundle(tmp_path):
    """Probe and bundle on the same recordings and hops, through the daemon's detector."""
    run, teacher, model, bundle = _user_view_setup(tmp_path)
    before = teacher.windows

    # A handful of validation calls cannot promise 0.9 (the bootstrap bound); 0.7 they can.
    rows = probe.user_view_report(run, model, [("band", str(bundle))], 0.7, teacher=teacher)
    hops = teacher.windows - before
    got = {(r["model"].split(" ")[0], r["thresholds"], r["split"]): r["metrics"] for r in rows}
    assert set(got) == {(m, t, s) for m, t in (("BirdNET", "val-hops-p0.7"), ("band", "manifest"),
                                               ("band", "val-hops-p0.7")) for s in ("val", "test")}
    band = got[("band", "manifest", "test")]
    assert band["event_precision"] == 1.0 and band["event_recall"] == 1.0 and band["false_detections_per_hour"] == 0
    peer = got[("BirdNET", "val-hops-p0.7", "test")]
    assert peer.keys() == band.keys()
    assert peer["enabled_labels"] >= 1 and peer["event_recall"] > 0.5 and peer["event_precision"] > 0.5
    # BirdNET ran once per daemon hop of the 11 val/test recordings (4 s each), and only once.
    assert 11 * 3 <= hops <= 11 * 8
    probe.user_view_report(run, model, [("band", str(bundle))], 0.7, teacher=teacher)
    assert teacher.windows - before == hops

    md = probe.markdown(rows, probe.USER_COLUMNS)
    assert "| band (INT8 bundle) | manifest | test | 1.000 | 1.000 |" in md


def test_user_view_can_cross_fit_the_probe_like_the_students_head(tmp_path):
    """--folds: the probe's operating points on out-of-fold hop scores of every train+val recording."""
    run, teacher, model, bundle = _user_view_setup(tmp_path)
    before = teacher.windows
    rows = probe.user_view_report(run, model, [("band", str(bundle))], 0.7, teacher=teacher, folds=3)
    cf = [r for r in rows if "cross-fitted" in r["model"]]
    assert len(cf) == 1 and cf[0]["split"] == "test" and cf[0]["thresholds"] == "out-of-fold-hops-p0.7"
    m = cf[0]["metrics"]
    assert m["enabled_labels"] >= 1 and m["event_precision"] > 0.5 and m["event_recall"] > 0.5
    # BirdNET also ran at the hops of the 17 train + val recordings (once each), not only val/test.
    assert teacher.windows - before >= 21 * 3

    # A cross-fitted bundle saw validation: it is scored with its manifest only, never by a val rule.
    man = json.loads((bundle / "manifest.json").read_text())
    man.setdefault("metrics", {})["operating_points"] = {"method": "out-of-fold hop scores of every ..."}
    (bundle / "manifest.json").write_text(json.dumps(man))
    rows = probe.user_view_report(run, model, [("band", str(bundle))], 0.7, teacher=teacher)
    assert {(r["thresholds"], r["split"]) for r in rows if r["model"].startswith("band")} == {("manifest", "test")}


def test_each_model_is_compared_with_the_probe_on_the_same_recording_draws():
    rng = np.random.default_rng(1)
    files = [f"r{i // 3}" for i in range(90)]
    targets = (rng.random((90, 2)) < 0.3).astype(np.float32)
    known = np.ones_like(targets, dtype=bool)
    perfect, noisy = targets * 0.8 + 0.1, rng.random((90, 2))
    models = [("probe", {"test": noisy}, None, False), ("good", {"test": perfect}, None, False),
              ("same", {"test": noisy}, None, False)]
    rows = probe.versus_probe(models, targets, known, files, 100, 0)
    assert [r["model"] for r in rows] == ["good", "same"]
    assert rows[0]["low"] > 0 and rows[0]["a_better"] == 1.0
    assert rows[1]["diff"] == 0 and rows[1]["high"] == 0
    md = probe.versus_probe_markdown(rows, 100)
    assert "100 replicates" in md and f"| good | {rows[0]['diff']:+.3f} |" in md and "| 100% |" in md
