"""`sonotrap train --teacher`: stage 1 (distillation), stage 2 from its backbone, resume, manifest.

A stand-in teacher (tests/support/fake_teacher.py) replaces BirdNET; the images are 32x32 so
a ResNet50 step takes milliseconds.
"""

from __future__ import annotations

import json

import pytest
import torch

from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig
from tests.support.fake_teacher import FakeTeacher
from tests.support.synth_calls import make_dataset, unlabeled_folder
from trainer.birdnet import TEACHER_INFO
from trainer.dataset import AugmentConfig
from trainer.distill import BACKBONE, DISTILL_DIR, LAST, SUMMARY, DistillArgs, train_with_teacher
from trainer.losses import cosine_loss
from trainer.model import build_model
from trainer.prepare import DataSpec
from trainer.train import TrainArgs

SMALL = FrontendConfig(n_mels=32, n_frames=32, hop_length=2000)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = tmp_path_factory.mktemp("synth")
    make_dataset(data, n_files=6, n_negative=2, seed=3)
    # A few synthetic recordings reused as 'unlabeled' audio of the region.
    unlabeled = unlabeled_folder(data, ["audio/rec00.wav", "audio/rec01.flac", "audio/rec02.flac"],
                                 tmp_path_factory.mktemp("unl") / "u")
    torch.set_num_threads(2)
    return data, unlabeled


def _args(out, **kw) -> TrainArgs:
    base = dict(out=str(out), epochs=1, batch_size=8, weights="none", workers=0, progress=False,
                teacher="birdnet", augment=AugmentConfig(enabled=False))
    return TrainArgs(**{**base, **kw})


def test_cosine_loss():
    t = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    assert float(cosine_loss(3 * t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_loss(-t, t)) == pytest.approx(2.0, abs=1e-6)


@pytest.mark.slow
def test_two_stages_then_a_bundle_that_names_the_teacher(setup, tmp_path):
    data, unlabeled = setup
    out = tmp_path / "run"
    teacher = FakeTeacher()
    dargs = DistillArgs(epochs=2, batch_size=8, unlabeled=str(unlabeled))
    result, summary = train_with_teacher(_args(out), dargs, DataSpec(data=str(data), seed=1), SMALL, teacher)
    history = [json.loads(x) for x in (out / DISTILL_DIR / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and summary["epochs_run"] == 2
    assert summary["unlabeled_windows"] == 9  # 3 recordings of 4 s, a window every second
    assert teacher.windows > summary["fit_windows"]  # val/test windows are cached too (for the probe)

    # Stage 2 started from the stage-1 backbone, and its checkpoint says so.
    ckpt = torch.load(result.best, map_location="cpu", weights_only=False)
    assert ckpt["args"]["teacher"] == "birdnet"
    assert ckpt["args"]["weights"] == str(out / DISTILL_DIR / BACKBONE)
    saved = torch.load(out / DISTILL_DIR / BACKBONE, weights_only=True)
    assert not any(k.startswith("fc.") for k in saved)  # the projection head is not kept
    init = build_model(2, str(out / DISTILL_DIR / BACKBONE)).state_dict()
    assert torch.equal(init["conv1.weight"], saved["conv1.weight"])

    from trainer.bundle_builder import BundleInfo
    from trainer.checkpoint import load_checkpoint

    info = BundleInfo.from_checkpoint(load_checkpoint(result.best))
    assert info.provenance["teacher"]["licence"] == "CC BY-NC-SA 4.0"
    assert info.provenance["teacher"] == TEACHER_INFO


@pytest.mark.slow
def test_stage1_resumes_and_refuses_to_overwrite(setup, tmp_path):
    data, unlabeled = setup
    out = tmp_path / "run"
    spec = DataSpec(data=str(data), seed=1)
    dargs = DistillArgs(epochs=1, batch_size=8, unlabeled=str(unlabeled))
    teacher = FakeTeacher()
    with pytest.raises(SonotrapError, match="before its first epoch"):  # no time for stage 1
        train_with_teacher(_args(out, max_minutes=1e-4), dargs, spec, SMALL, teacher)
    # Stage 1 stopped by its time budget after one epoch, stage 2 not started yet (its
    # checkpoint removed): --resume continues stage 1 from distill/last.pt.
    train_with_teacher(_args(tmp_path / "full"), dargs, spec, SMALL, teacher)
    summary_path = tmp_path / "full" / DISTILL_DIR / SUMMARY
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "stop_reason": "time budget"}))
    (tmp_path / "full" / LAST).unlink()
    with pytest.raises(SonotrapError, match="--resume"):
        train_with_teacher(_args(tmp_path / "full"), dargs, spec, SMALL, teacher)
    cached = teacher.windows
    more = DistillArgs(epochs=2, batch_size=8, unlabeled=str(unlabeled))
    _, summary = train_with_teacher(_args(tmp_path / "full", resume=True), more, None, None, teacher)
    assert teacher.windows == cached  # the teacher cache was reused
    history = [json.loads(x) for x in (tmp_path / "full" / DISTILL_DIR / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and summary["epochs_run"] == 2
    # Stage 2 resumes through the ordinary trainer.
    result, _ = train_with_teacher(_args(tmp_path / "full", resume=True, epochs=2), more, None, None, teacher)
    assert result.epochs_run == 2


def test_a_mixed_image_is_the_frontend_of_the_summed_audio(setup):
    import numpy as np

    from edge.inference.frontend import compute, resample
    from trainer.rundata import AudioCache, cut, mixed_image, window_image

    data, _ = setup
    a, b = data / "audio" / "rec00.wav", data / "audio" / "rec01.flac"
    cache = AudioCache()
    (xa, sr), (xb, srb) = cache.get(a), cache.get(b)
    assert sr != srb  # recordings of two rates: each piece is resampled to the frontend's, then added
    rate = SMALL.sample_rate
    summed = (resample(cut(xa, sr, 0.5, 2.0), sr, rate) + np.float32(0.3) * resample(cut(xb, srb, 1.0, 2.0), srb, rate))
    expected = compute(summed, rate, SMALL)
    got = mixed_image(cache, [(a, 0.5, 1.0), (b, 1.0, 0.3)], 2.0, SMALL)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(mixed_image(cache, [(a, 0.5, 1.0)], 2.0, SMALL),
                               window_image(cache, a, 0.5, 2.0, SMALL), atol=1e-5)
    assert not np.allclose(got, window_image(cache, a, 0.5, 2.0, SMALL), atol=1e-3)


@pytest.mark.slow
def test_stage1_fits_mixes_heard_by_the_teacher_and_can_start_from_another_run(setup, tmp_path):
    data, unlabeled = setup
    spec = DataSpec(data=str(data), seed=1)
    first = tmp_path / "first"
    dargs = DistillArgs(epochs=1, batch_size=8, unlabeled=str(unlabeled))
    _, plain = train_with_teacher(_args(first, epochs=1), dargs, spec, SMALL, FakeTeacher())

    teacher = FakeTeacher()
    # lr 0: the continued run keeps the first run's student exactly, so its backbone is that one.
    mixed = DistillArgs(epochs=1, batch_size=8, unlabeled=str(unlabeled), mixes=12, init=str(first), lr=0.0)
    # --weights is not even opened when stage 1 starts from another run's student.
    second = _args(tmp_path / "second", epochs=1, weights=str(tmp_path / "absent.pth"))
    _, summary = train_with_teacher(second, mixed, spec, SMALL, teacher)
    assert summary["mixed_windows"] == 12 and summary["fit_windows"] == plain["fit_windows"] + 12
    assert summary["init"] == str(first)
    assert teacher.windows >= plain["fit_windows"] + 12  # the mixes went through the teacher too
    start = torch.load(first / DISTILL_DIR / LAST, weights_only=False)["model"]
    saved = torch.load(tmp_path / "second" / DISTILL_DIR / BACKBONE, weights_only=True)
    assert all(torch.equal(saved[k], start[f"backbone.{k}"]) for k in saved if not k.endswith("num_batches_tracked")
               and "running" not in k)

    with pytest.raises(SonotrapError, match="stage-1 state"):
        train_with_teacher(_args(tmp_path / "third", epochs=1),
                           DistillArgs(epochs=1, batch_size=8, init=str(first / "best.pt")), spec, SMALL,
                           FakeTeacher())


@pytest.mark.slow
def test_stage1_fits_speed_changed_and_tilted_copies_of_the_unlabeled_recordings(setup, tmp_path):
    from trainer.rundata import load_run_data
    from trainer.teacher_cache import SPEED, TILTED, ensure_cache, speed_windows, tilted_windows

    data, unlabeled = setup
    spec = DataSpec(data=str(data), seed=1)
    teacher = FakeTeacher()
    dargs = DistillArgs(epochs=1, batch_size=8, unlabeled=str(unlabeled), speed=2, tilt=1)
    _, summary = train_with_teacher(_args(tmp_path / "r", epochs=1), dargs, spec, SMALL, teacher)
    copies = speed_windows(unlabeled, 2, seed=0, window_s=SMALL.window_s)
    tilted = tilted_windows(unlabeled, 1, seed=0, window_s=SMALL.window_s)
    assert summary["speed_windows"] == len(copies) > 0
    assert summary["tilted_windows"] == len(tilted) > 0
    run = load_run_data(tmp_path / "r")
    cache, groups = ensure_cache(run, unlabeled, model=teacher, speed_copies=2, tilted_copies=1)
    assert groups[SPEED] == copies and len(cache.rows(copies)) == len(copies)  # all cached, none recomputed
    assert groups[TILTED] == tilted and len(cache.rows(tilted)) == len(tilted)
    plain = len(groups["train"]) + len(groups["unlabeled"])
    assert summary["fit_windows"] == plain + len(copies) + len(tilted)

    # Copies are made of unlabeled recordings: without them the run stops with one line, before any work.
    for kind in ({"speed": 1}, {"tilt": 1}):
        with pytest.raises(SonotrapError, match="--unlabeled DIR"):
            train_with_teacher(_args(tmp_path / "n", epochs=1), DistillArgs(epochs=1, batch_size=8, **kind),
                               spec, SMALL, FakeTeacher())
