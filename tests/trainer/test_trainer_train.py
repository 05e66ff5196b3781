"""Whole trainer path on generated recordings: ingest -> windows -> train -> evaluate -> resume.

ResNet50 at a reduced 32x32 input keeps this fast on two CPU cores; the data are real FLAC/WAV
files (mono/stereo, 22.05/44.1 kHz) with quiet tone "calls" in noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig
from tests.support.paths import REPO
from trainer.checkpoint import BEST, LAST
from trainer.dataset import AugmentConfig
from trainer.evaluate import evaluate_checkpoint
from trainer.prepare import DataSpec
from trainer.train import TrainArgs, train

SMALL = FrontendConfig(n_mels=32, n_frames=32, hop_length=2000)


def _args(out: Path, **kw) -> TrainArgs:
    base = dict(out=str(out), epochs=2, batch_size=8, weights="none", workers=0, progress=False,
                seed=3, warmup_epochs=0.5, augment=AugmentConfig(shift_s=0.3))
    base.update(kw)
    return TrainArgs(**base)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    torch.set_num_threads(2)
    result = train(_args(out), DataSpec(data=str(data_dir), seed=3), SMALL)
    return out, result


def test_run_directory_and_checkpoint_contract(trained):
    out, result = trained
    for name in ("best.pt", "last.pt", "split.json", "dataset.json", "annotations.csv",
                 "windows_train.csv", "windows_val.csv", "windows_test.csv", "history.jsonl"):
        assert (out / name).is_file(), name
    ckpt = torch.load(out / BEST, map_location="cpu", weights_only=False)
    assert ckpt["format"] == "sonotrap-checkpoint/1"
    assert ckpt["labels"] == ["high", "low"]
    assert ckpt["label_names"] == {"high": "high", "low": "low"}
    assert FrontendConfig.from_dict(ckpt["frontend"]) == SMALL
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert ckpt["model"]["fc.weight"].shape == (2, 2048)
    assert set(ckpt["thresholds"]) == {"high", "low"}
    assert all(0.0 <= t <= 1.0 for t in ckpt["thresholds"].values())
    assert set(ckpt["metrics"]) >= {"val", "test"}
    assert ckpt["data"]["num_windows"]["train"] > 0
    for key in ("args", "epoch", "history", "best"):
        assert key in ckpt
    # best.pt is for evaluation and export; only last.pt carries what an exact resume needs
    last = torch.load(out / LAST, map_location="cpu", weights_only=False)
    for key in ("optimizer", "scheduler", "scaler", "rng"):
        assert key in last and key not in ckpt
    assert (out / BEST).stat().st_size < 0.5 * (out / LAST).stat().st_size
    split = json.loads((out / "split.json").read_text())
    files = split["train"] + split["val"] + split["test"]
    assert len(files) == len(set(files)) == 15  # every recording in exactly one split
    assert result.epochs_run == 2 and result.windows_per_s > 0


def test_evaluate_writes_report_and_thresholds(trained, tmp_path):
    out, _ = trained
    report = evaluate_checkpoint(out / BEST, "test", tmp_path / "report", target_precision=0.9)
    for name in ("metrics.json", "summary.md", "pr_curves.png", "pr_micro.png", "confusion.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0, name
    data = json.loads((tmp_path / "report" / "metrics.json").read_text())
    m = data["metrics"]
    assert m["num_windows"] == len((out / "windows_test.csv").read_text().splitlines()) - 1
    assert 0.0 <= m["macro_ap"] <= 1.0 and 0.0 <= m["macro_roc_auc"] <= 1.0
    assert data["thresholds_from"] == "val"
    assert "| macro average precision |" in (tmp_path / "report" / "summary.md").read_text()
    ckpt = torch.load(out / BEST, map_location="cpu", weights_only=False)
    assert ckpt["thresholds"] == {k: v["threshold"] for k, v in report["thresholds"].items()}
    assert math.isclose(ckpt["metrics"]["test"]["macro_ap"], m["macro_ap"])


def test_resume_reproduces_the_same_weights(data_dir, tmp_path):
    straight = tmp_path / "straight"
    train(_args(straight), DataSpec(data=str(data_dir), seed=3), SMALL)
    split = tmp_path / "split"
    train(_args(split, stop_after=1), DataSpec(data=str(data_dir), seed=3), SMALL)
    first = torch.load(split / LAST, map_location="cpu", weights_only=False)
    assert first["epoch"] == 1
    train(_args(split, resume=True), None, None)
    a = torch.load(straight / LAST, map_location="cpu", weights_only=False)
    b = torch.load(split / LAST, map_location="cpu", weights_only=False)
    assert b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-6), k
    # ...and it really trained: weights moved away from the first epoch's.
    assert any(not torch.equal(first["model"][k], v) for k, v in a["model"].items() if v.is_floating_point())


def test_existing_run_needs_resume_and_resume_needs_a_run(trained, data_dir, tmp_path):
    out, _ = trained
    with pytest.raises(SonotrapError, match="--resume"):
        train(_args(out), DataSpec(data=str(data_dir)), SMALL)
    with pytest.raises(SonotrapError, match="does not exist"):
        train(_args(tmp_path / "nothing", resume=True), None, None)


def test_training_learns_the_tones(data_dir, tmp_path):
    """Enough epochs at a fixed seed separate 1.2 kHz from 4 kHz bursts on held-out files."""
    out = tmp_path / "learn"
    spec = DataSpec(data=str(data_dir), seed=1, fractions=(0.6, 0.2, 0.2))
    result = train(_args(out, epochs=6, lr=3e-3, seed=1, patience=10), spec, SMALL)
    assert result.metrics["val"]["macro_roc_auc"] is not None
    assert result.metrics["val"]["macro_roc_auc"] >= 0.75, result.metrics["val"]


def test_torchrun_two_cpu_processes(data_dir, tmp_path):
    """``torchrun --nproc-per-node 2`` (gloo): ranks split the windows, rank 0 writes one run."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "edge.cli", "train", "--data", str(data_dir), "--out", str(out), "--weights", "none",
         "--epochs", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--image-size", "32",
         "--no-progress", "--seed", "3"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(out / LAST, map_location="cpu", weights_only=False)
    assert ckpt["args"]["world_size"] == 2 and ckpt["epoch"] == 2
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["epochs_run"] == 2
    n_train = len((out / "windows_train.csv").read_text().splitlines()) - 1
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2  # one line per epoch: only rank 0 writes
    assert r.stdout.count("best checkpoint:") == 1 and n_train > 0  # one report, from rank 0


@pytest.mark.data
def test_whole_path_on_real_nips4bplus_files(shared_data, tmp_path):
    """A few real recordings: ingest -> windows (labels checked against the table) -> train -> evaluate."""
    import csv

    from trainer.rundata import load_run_data
    from trainer.windows import overlaps_enough

    nips = shared_data / "nips4bplus"
    with (nips / "annotations.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    with (nips / "files.csv").open() as fh:
        files = [r["file"] for r in csv.DictReader(fh)]
    keep = sorted({r["file"] for r in rows})[:10] + [f for f in files if f not in {r["file"] for r in rows}][:2]
    table, file_list = tmp_path / "ann.csv", tmp_path / "files.csv"
    with table.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["file", "start_s", "end_s", "label"])
        w.writeheader()
        w.writerows(r for r in rows if r["file"] in keep)
    file_list.write_text("file\n" + "\n".join(keep) + "\n")
    out = tmp_path / "run"
    spec = DataSpec(annotations=str(table), files=str(file_list), root=str(nips), seed=0, fractions=(0.6, 0.2, 0.2))
    result = train(_args(out, epochs=1, batch_size=16, augment=AugmentConfig(shift_s=0.3)), spec, SMALL)
    run = load_run_data(out)
    assert len(run.recordings) == 12
    # Every window's label set is exactly the calls overlapping it by >= 25% of call or window.
    for split in ("train", "val", "test"):
        for win in run.windows(split):
            expect = {r["label"] for r in rows if r["file"] == win.file and r["label"] in run.labels
                      and overlaps_enough(float(r["start_s"]), float(r["end_s"]), win.start_s, win.end_s, 0.25)}
            assert set(win.positives) == expect, win
    report = evaluate_checkpoint(out / BEST, "val", tmp_path / "report")
    assert 0.0 <= report["metrics"]["macro_roc_auc"] <= 1.0 and result.epochs_run == 1


def test_validation_metric_that_picks_the_best_checkpoint():
    from trainer.train import selection_score

    m = {"macro_ap": 0.92, "macro_roc_auc": 0.55, "loss": 0.3}
    assert selection_score(m) == 0.92 and selection_score(m, "macro_roc_auc") == 0.55 and selection_score(m, "loss") == -0.3
    assert selection_score({**m, "macro_ap": math.nan}) == -0.3  # undefined metric: fall back to the loss
    with pytest.raises(SonotrapError, match="--select-by"):
        train(_args(Path("/nonexistent"), select_by="f1"), None, None)


def test_bad_rows_are_skipped_and_counted_in_the_report(data_dir, tmp_path):
    import csv

    rows = list(csv.reader((data_dir / "annotations.csv").open()))
    rows += [["audio/rec00.wav", "2.0", "1.0", "low"], ["audio/missing.wav", "0.1", "0.5", "high"]]
    table = tmp_path / "ann.csv"
    with table.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    out = tmp_path / "run"
    spec = DataSpec(annotations=str(table), root=str(data_dir), seed=3)
    train(_args(out, epochs=1), spec, SMALL)
    problems = (out / "input_problems.txt").read_text().splitlines()
    assert len(problems) == 2 and any("missing.wav" in p for p in problems)
    assert json.loads((out / "train_summary.json").read_text())["input_problems_skipped"] == 2
    with pytest.raises(SonotrapError, match="missing.wav|end"):
        train(_args(tmp_path / "strict", epochs=1), DataSpec(annotations=str(table), root=str(data_dir), strict=True), SMALL)


@pytest.mark.parametrize("present_fraction", [1.0, 0.5])
def test_weak_label_table_keeps_one_true_statement_per_window(trained, present_fraction):
    """scripts/weak_labels_experiment.py make-table: one known class per window, never a false label."""
    import importlib.util

    from trainer.rundata import load_run_data

    spec = importlib.util.spec_from_file_location("wle", REPO / "scripts" / "weak_labels_experiment.py")
    wle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wle)
    out, _ = trained
    run = load_run_data(out)
    windows = [w for s in ("train", "val", "test") for w in run.windows(s)]
    rows = wle.weak_rows(out, seed=1, present_fraction=present_fraction)
    assert len(rows) == len(windows)
    in_file = {}
    for a in run.annotations:
        in_file.setdefault(a.file, set()).add(a.label)
    for f, start, end, label, present in rows:
        if present:
            assert any(a.file == f and a.label == label and a.start_s <= start + 1e-6 and a.end_s >= end - 1e-6
                       for a in run.annotations), (f, start, label)
        else:
            assert label not in in_file.get(f, set())
    calls = sum(bool(w.positives) for w in windows)
    kept_present = sum(r[4] for r in rows)
    if present_fraction == 1.0:
        assert kept_present == calls
    else:
        assert 0 < kept_present < calls


def test_ema_keeps_the_average_resumes_exactly_and_best_pt_holds_it(data_dir, tmp_path):
    """--ema: validation, best.pt and export see the moving average; last.pt resumes both."""
    spec = DataSpec(data=str(data_dir), seed=3)
    straight = tmp_path / "straight"
    train(_args(straight, ema=0.9), spec, SMALL)
    a = torch.load(straight / LAST, map_location="cpu", weights_only=False)
    trained, averaged = a["ema"]["trained"], a["model"]
    assert a["ema"]["decay"] == 0.9 and a["ema"]["n_averaged"] > 2
    moved = [k for k, v in trained.items() if v.is_floating_point() and not torch.allclose(v, averaged[k])]
    assert moved, "the average equals the trained weights"
    assert "ema" not in torch.load(straight / BEST, map_location="cpu", weights_only=False)

    split = tmp_path / "split"
    train(_args(split, ema=0.9, stop_after=1), spec, SMALL)
    train(_args(split, resume=True), None, None)  # keeps the run's --ema
    b = torch.load(split / LAST, map_location="cpu", weights_only=False)
    assert b["ema"]["n_averaged"] == a["ema"]["n_averaged"]
    for k in averaged:
        assert torch.allclose(averaged[k].float(), b["model"][k].float(), atol=1e-6), k
        assert torch.allclose(trained[k].float(), b["ema"]["trained"][k].float(), atol=1e-6), k

    # A decay of ~0 averages nothing away: the stored model is the trained one.
    nodecay = tmp_path / "nodecay"
    train(_args(nodecay, ema=1e-9, epochs=1), spec, SMALL)
    c = torch.load(nodecay / LAST, map_location="cpu", weights_only=False)
    for k, v in c["ema"]["trained"].items():
        assert torch.allclose(v.float(), c["model"][k].float(), atol=1e-5), k
    with pytest.raises(SonotrapError, match="--ema 1.0 must be in"):
        train(_args(tmp_path / "bad", ema=1.0), spec, SMALL)
