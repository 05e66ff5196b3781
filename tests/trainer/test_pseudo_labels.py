"""Weak labels end to end: validation-style training, masked metrics, pseudo-label rounds (issue 6)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig
from tests.support.synth_calls import make_dataset
from trainer.checkpoint import BEST, LAST, load_checkpoint, model_from_checkpoint
from trainer.dataset import AugmentConfig, WindowDataset
from trainer.engine import predict
from trainer.metrics import average_precision, evaluate_scores
from trainer.prepare import DataSpec
from trainer.pseudo import PSEUDO_FILE, load_pseudo, merge, pseudo_label
from trainer.pseudo_rounds import ROUNDS_FILE, train_rounds
from trainer.rundata import copy_run_data, load_run_data
from trainer.train import TrainArgs, train

SMALL = FrontendConfig(n_mels=32, n_frames=32, hop_length=2000)


def test_pseudo_labels_by_hand():
    probs = np.array([[0.95, 0.05, 0.50], [0.91, 0.10, 0.89]])
    targets = np.array([[0, 1, 0], [1, 0, 0]], dtype=np.float32)
    known = np.array([[True, False, False], [False, True, False]])
    pl = pseudo_label(probs, targets, known, high=0.9, low=0.1)
    # Known entries are never touched, even when the model disagrees (row 0, class 0).
    np.testing.assert_array_equal(pl.known, [[False, True, False], [True, False, False]])
    np.testing.assert_array_equal(pl.targets[pl.known], [0.0, 1.0])  # 0.05 -> absent, 0.91 -> present
    assert (pl.unknown_before, pl.added_present, pl.added_absent) == (4, 1, 1)
    t, k = merge(targets, known, pl.targets, pl.known)
    np.testing.assert_array_equal(k, [[True, True, False], [True, True, False]])
    np.testing.assert_array_equal(t, [[0, 0, 0], [1, 0, 0]])
    with pytest.raises(SonotrapError, match="low < high"):
        pseudo_label(probs, targets, known, high=0.2, low=0.3)


def _weak_table(data: Path) -> Path:
    """The synthetic calls as a review export: each call validated for its class only, plus one
    'absent' row per recording for a class that is not there (call-free files: 'low')."""
    with (data / "annotations.csv").open() as fh:
        calls = list(csv.DictReader(fh))
    with (data / "files.csv").open() as fh:
        files = [r["file"] for r in csv.DictReader(fh)]
    rows = [(c["file"], c["start_s"], c["end_s"], c["label"], 1) for c in calls]
    for f in files:
        present = {c["label"] for c in calls if c["file"] == f}
        absent = [lab for lab in ("low", "high") if lab not in present]
        if absent:
            rows.append((f, 1.0, 2.5, absent[0], 0))
    path = data / "review.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "start_s", "end_s", "label", "present"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    data = tmp_path_factory.mktemp("weak")
    make_dataset(data, n_files=14, n_negative=4, seed=5)
    table = _weak_table(data)
    out = tmp_path_factory.mktemp("run") / "run"
    torch.set_num_threads(2)
    args = TrainArgs(out=str(out), epochs=3, batch_size=8, weights="none", workers=0, progress=False, seed=2,
                     lr=3e-3, warmup_epochs=0.5, augment=AugmentConfig(shift_s=0.3))
    spec = DataSpec(validations=[str(table)], root=str(data), seed=2, fractions=(0.6, 0.2, 0.2))
    # Loose bounds so a 3-epoch model on synthetic tones labels something.
    records = train_rounds(args, spec, SMALL, rounds=1, high=0.6, low=0.4, round_epochs=2)
    return out, records


def test_weak_run_has_unknown_entries_and_its_metrics_ignore_them(rounds):
    out, _ = rounds
    run = load_run_data(out)
    assert not any(r.complete for r in run.recordings.values())
    ds = WindowDataset(run, run.windows("val"))
    assert 0 < ds.known.mean() < 1  # one known class per window: the other is unknown
    probs = predict(model_from_checkpoint(load_checkpoint(out / BEST)), ds, 8, torch.device("cpu"))
    reported = json.loads((out / "train_summary.json").read_text())["val"]
    # By hand: AP of each class over the windows where that class is known.
    aps = [average_precision(ds.targets[ds.known[:, k], k], probs[ds.known[:, k], k]) for k in range(2)]
    assert reported["macro_ap"] == pytest.approx(np.nanmean(aps), abs=1e-6)
    # Scores of unknown entries change nothing.
    junk = np.where(ds.known, probs, np.random.default_rng(0).random(probs.shape))
    again = evaluate_scores(junk, ds.targets, ds.known, run.labels)
    assert again["macro_ap"] == pytest.approx(reported["macro_ap"], abs=1e-6)


def test_pseudo_round_fills_only_unknown_training_entries(rounds):
    out, records = rounds
    r1 = out / "round-1"
    run = load_run_data(r1)
    windows = run.windows("train")
    p_targets, p_known = load_pseudo(r1, windows, run.labels)
    original = WindowDataset(run, windows)
    assert not (p_known & original.known).any()  # known entries are never overwritten
    counts = records[1]["pseudo"]
    assert counts["added_present"] == int(p_targets[p_known].sum())
    assert counts["added_present"] + counts["added_absent"] == int(p_known.sum()) > 0
    assert counts["unknown_before"] == int((~original.known).sum())
    # The round's training set sees the pseudo labels, also in augmented (jittered) items.
    with_pseudo = WindowDataset(run, windows, train=True, augment=AugmentConfig(shift_s=0.3),
                                pseudo=(p_targets, p_known))
    assert with_pseudo.known.sum() == original.known.sum() + p_known.sum()
    filled = 0
    for i in np.flatnonzero(p_known.any(axis=1)):
        _, t, k, _ = with_pseudo[int(i)]
        # The jittered window's own (annotation) labels win; pseudo labels fill what they leave unknown.
        rng = np.random.default_rng((with_pseudo.seed, with_pseudo.epoch, int(i)))
        _, t_ann, k_ann = with_pseudo.augmented(windows[int(i)], rng)
        fill = p_known[i] & ~k_ann
        np.testing.assert_array_equal(k.numpy(), k_ann | p_known[i])
        np.testing.assert_array_equal(t.numpy(), np.where(fill, p_targets[i], t_ann))
        filled += int(fill.sum())
    assert filled > 0


def test_rounds_report_and_checkpoints(rounds):
    out, records = rounds
    saved = json.loads((out / ROUNDS_FILE).read_text())
    assert [r["round"] for r in saved] == [0, 1]
    for r in saved:
        assert r["val"]["macro_ap"] is not None and not math.isnan(r["val"]["macro_ap"])
        assert (Path(r["run_dir"]) / BEST).is_file()
    assert records[1]["epochs_run"] == 2 and (out / "round-1" / PSEUDO_FILE).is_file()
    # Same windows and split in every round; only the training labels differ.
    for name in ("split.json", "windows_val.csv", "windows_test.csv"):
        assert (out / name).read_text() == (out / "round-1" / name).read_text()


def test_pseudo_file_must_match_the_windows(rounds, tmp_path):
    out, _ = rounds
    run = load_run_data(out / "round-1")
    with pytest.raises(SonotrapError, match="other windows"):
        load_pseudo(out / "round-1", run.windows("train")[1:], run.labels)


def test_degenerate_pseudo_labels_are_flagged():
    from trainer.pseudo import implausible

    targets = np.zeros((4, 10), dtype=np.float32)
    known = np.zeros((4, 10), dtype=bool)
    targets[:, 0] = 1
    known[:, 0] = True  # one validated present class per window
    everything_high = np.full((4, 10), 0.95)
    msg = implausible(pseudo_label(everything_high, targets, known), targets, known)
    assert msg and "10.0 present labels in each window" in msg
    sensible = np.where(np.arange(10) == 1, 0.95, 0.02)[None, :].repeat(4, axis=0)
    assert implausible(pseudo_label(sensible, targets, known), targets, known) is None


def test_unknown_weight_trains_unknown_entries_as_weak_negatives(rounds, tmp_path):
    """--unknown-weight changes training (same data, seed and init) but not what validation
    scores: the reported metrics still cover known entries only."""
    out, _ = rounds
    finals = {}
    for w in (0.0, 0.5):
        d = tmp_path / f"w{w}"
        copy_run_data(out, d)  # the prepared weak-label run: one known class per window
        args = TrainArgs(out=str(d), epochs=1, batch_size=8, weights="none", workers=0, progress=False,
                         seed=2, warmup_epochs=0.5, augment=AugmentConfig(shift_s=0.3), unknown_weight=w)
        train(args)
        ckpt = torch.load(d / LAST, map_location="cpu", weights_only=False)
        assert ckpt["args"]["unknown_weight"] == w
        finals[w] = ckpt["model"]["fc.weight"]
        run = load_run_data(d)
        ds = WindowDataset(run, run.windows("val"))
        probs = predict(model_from_checkpoint(load_checkpoint(d / BEST)), ds, 8, torch.device("cpu"))
        reported = json.loads((d / "train_summary.json").read_text())["val"]
        assert reported["macro_ap"] == pytest.approx(evaluate_scores(probs, ds.targets, ds.known,
                                                                     run.labels)["macro_ap"], abs=1e-6)
    assert not torch.allclose(finals[0.0], finals[0.5])  # the unknown entries did push


def test_unknown_weight_out_of_range_is_a_clear_error(tmp_path):
    with pytest.raises(SonotrapError, match=r"--unknown-weight 1.5 must be in \[0, 1\]"):
        train(TrainArgs(out=str(tmp_path / "r"), weights="none", unknown_weight=1.5))
