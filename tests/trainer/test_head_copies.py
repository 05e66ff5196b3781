"""Speed-changed copies of the labelled windows as extra rows for the linear head."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from edge.inference.frontend import FrontendConfig  # noqa: E402
from trainer.head_copies import copy_image_chunks, copy_images, copy_rates, stack_copies, with_copies  # noqa: E402
from trainer.prepare import DataSpec, prepare_run  # noqa: E402
from trainer.rundata import load_split_arrays  # noqa: E402
from trainer.teacher_cache import SPEED_SHIFT  # noqa: E402

SMALL = FrontendConfig(n_mels=32, n_frames=32, hop_length=2000)


def test_one_seeded_rate_per_recording_and_copy_within_the_speed_range():
    files = ["a.wav", "b.wav", "a.wav", "c.wav"]
    first = copy_rates(files, 1, seed=0)
    assert set(first) == {"a.wav", "b.wav", "c.wav"} and copy_rates(list(reversed(files)), 1, seed=0) == first
    assert copy_rates(files, 2, seed=0) != first and copy_rates(files, 1, seed=1) != first
    for rate in first.values():
        assert SPEED_SHIFT[0] - 0.01 <= abs(np.log(rate)) <= SPEED_SHIFT[1] + 0.01


def test_copies_are_stacked_under_the_rows_they_copy_with_the_same_targets():
    x = np.arange(12, dtype=float).reshape(6, 2)
    copy = -x
    targets = np.eye(6, 3)
    known = np.ones_like(targets, dtype=bool)
    rows = np.array([1, 4])
    xs, ts, ks = stack_copies(x[rows], targets[rows], known[rows], rows, [copy])
    np.testing.assert_array_equal(xs, np.concatenate([x[rows], copy[rows]]))
    np.testing.assert_array_equal(ts, np.concatenate([targets[rows]] * 2))
    assert ks.shape == ts.shape
    assert stack_copies(x, targets, known, None, [])[0] is x  # no copies: the rows as they are
    with pytest.raises(ValueError, match="rows' indices"):
        stack_copies(x, targets, known, None, [copy])
    seen = {}

    def fit(x_, t_, k_, c, seed=0):
        seen.update(n=len(x_), c=c)
        return np.zeros((3, 2)), np.zeros(3)

    with_copies(fit, [copy, copy])(x[rows], targets[rows], known[rows], 0.1, 0, rows)
    assert seen == {"n": 6, "c": 0.1}
    assert with_copies(fit, []) is fit


def test_a_copy_at_rate_one_is_the_window_itself_and_a_drawn_rate_changes_it(data_dir, tmp_path):
    run = prepare_run(DataSpec(data=str(data_dir), seed=3), SMALL, tmp_path / "run").run
    originals = load_split_arrays(tmp_path / "run", "train").images
    windows = run.windows("train")
    # At rate 1 a "copy" is the window itself: same audio, same start, same frontend.
    same = np.concatenate(list(copy_images(run, windows, {w.file: 1.0 for w in windows}, chunk=5)))
    np.testing.assert_allclose(same, originals, atol=1e-5)
    (chunks,) = copy_image_chunks(run, 1, seed=0, splits=("train",))
    copies = np.concatenate(list(chunks))
    assert copies.shape == originals.shape and not np.allclose(copies, originals, atol=1e-3)


def test_self_training_fits_the_copies_with_the_rows_and_the_pseudo_labelled_windows():
    from trainer.linear_head import self_training

    rng = np.random.default_rng(0)
    x_all, copy, x_unlabeled = rng.normal(size=(6, 2)), rng.normal(size=(6, 2)), rng.normal(size=(3, 2))
    rows = np.array([0, 2, 3, 5])
    targets = np.ones((4, 1), np.float32)
    known = np.ones_like(targets, dtype=bool)
    seen = []

    def fit(x, t, k, c, seed=0):
        seen.append((len(x), int(k.sum())))
        return np.zeros((1, 2)), np.array([5.0])  # every unlabeled window scores 0.99: a positive

    self_training(x_unlabeled, fit=fit, copies=[copy])(x_all[rows], targets, known, 0.1, 0, rows)
    assert seen == [(8, 8), (11, 11)]  # first fit: rows + their copies; then + the 3 pseudo-labelled windows
