"""Training options, each checked by its effect: initial weights, the LR schedule, a frozen
backbone, early stopping, focal loss / balanced sampling, loader workers, and the edge CLI
without the [train] extra.

Training runs use ResNet50 at a 32x32 input on generated recordings (as tests/test_trainer_train.py),
1-2 epochs each, so they stay cheap on two CPU cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet50

import trainer.train as train_module
from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig
from tests.support.paths import REPO
from trainer.checkpoint import BEST, LAST
from trainer.dataset import AugmentConfig, WindowDataset
from trainer.losses import sample_weights
from trainer.model import build_model
from trainer.prepare import DataSpec, prepare_run
from trainer.rundata import load_run_data
from trainer.schedule import lr_lambda
from trainer.train import TrainArgs, train

SMALL = FrontendConfig(n_mels=32, n_frames=32, hop_length=2000)
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _args(out: Path, **kw) -> TrainArgs:
    base = dict(out=str(out), epochs=1, batch_size=8, weights="none", workers=0, progress=False,
                seed=3, warmup_epochs=0.5, augment=AugmentConfig(shift_s=0.3))
    base.update(kw)
    return TrainArgs(**base)


def _train(data_dir: Path, out: Path, **kw):
    torch.set_num_threads(2)
    return train(_args(out, **kw), DataSpec(data=str(data_dir), seed=3), SMALL)


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def _is_param(name: str) -> bool:
    return not name.endswith(BN_BUFFERS)


@pytest.fixture(scope="module")
def init_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A DDP-style checkpoint file of a 2-class model: with ``weights=FILE`` both the backbone
    and the head start from it, so every initial parameter is known."""
    torch.manual_seed(11)
    model = resnet50(weights=None)
    model.fc = torch.nn.Linear(2048, 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "init.pt"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    return path, state


# --- initial weights ------------------------------------------------------------------------

def test_imagenet_weights_unavailable_offline_give_a_clear_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.models._api as weights_api

    def offline(url, *a, **kw):  # no network here or in CI; do not depend on it either way
        raise urllib.error.URLError(f"cannot reach {url}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setattr(weights_api, "load_state_dict_from_url", offline)
    with pytest.raises(SonotrapError) as err:
        build_model(2, "imagenet")
    msg = str(err.value)
    assert "--weights FILE" in msg and "--weights none" in msg
    assert "resnet50-" in msg and "TORCH_HOME" in msg  # which file to put where


def test_weights_file_of_torchvision_resnet50(tmp_path):
    torch.manual_seed(5)
    reference = resnet50(weights=None).state_dict()  # ImageNet-style 1000-class head
    path = tmp_path / "resnet50.pth"
    torch.save(reference, path)
    state = build_model(2, str(path)).state_dict()
    for k, v in reference.items():
        if not k.startswith("fc."):
            assert torch.equal(state[k], v), k
    assert state["fc.weight"].shape == (2, 2048) and state["fc.bias"].shape == (2,)
    # ...and really not random init: a fresh model differs.
    assert not torch.equal(build_model(2, "none").state_dict()["conv1.weight"], reference["conv1.weight"])


def test_weights_file_of_a_sonotrap_checkpoint_keeps_its_head_for_the_same_classes(init_file):
    path, state = init_file
    same = build_model(2, str(path)).state_dict()
    for k, v in state.items():
        assert torch.equal(same[k], v), k
    other = build_model(3, str(path)).state_dict()  # other classes: backbone only, new head
    assert torch.equal(other["conv1.weight"], state["conv1.weight"])
    assert other["fc.weight"].shape == (3, 2048)


def test_bad_weights_files_give_clear_errors(tmp_path):
    with pytest.raises(SonotrapError, match="does not exist"):
        build_model(2, str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(SonotrapError, match="cannot be read"):
        build_model(2, str(garbage))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, wrong)
    with pytest.raises(SonotrapError, match="not a torchvision ResNet50 state dict"):
        build_model(2, str(wrong))
    for obj in (torch.zeros(3), [1, 2, 3]):
        torch.save(obj, wrong)
        with pytest.raises(SonotrapError, match="not a ResNet50 state dict"):
            build_model(2, str(wrong))


# --- learning-rate schedule -----------------------------------------------------------------

def test_lr_lambda_warmup_then_cosine():
    f = lr_lambda(total_steps=100, warmup_steps=10, min_ratio=0.01)
    # Warm-up: (step + 1) / 10.
    assert f(0) == pytest.approx(0.1)
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)  # last warm-up step reaches the full rate
    # Cosine over the 90 steps after warm-up: t = (step - 10) / 90.
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.01 + 0.99 * 0.5)  # midpoint, t = 1/2
    assert f(100) == pytest.approx(0.01)  # end
    assert f(130) == pytest.approx(0.01)  # past the end: stays at min_ratio
    after = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(after[:-1], after[1:], strict=True))
    # No warm-up: full rate from step 0.
    assert lr_lambda(100, 0, 0.05)(0) == pytest.approx(1.0)
    assert lr_lambda(100, 0, 0.05)(100) == pytest.approx(0.05)


def test_lr_lambda_time_fraction_advances_the_cosine():
    used = [0.0]
    f = lr_lambda(100, 10, 0.01, time_fraction=lambda: used[0])
    assert f(10) == pytest.approx(1.0)
    used[0] = 0.5  # half the budget spent at the start of the cosine: jump to its midpoint
    assert f(10) == pytest.approx(0.505)
    used[0] = 0.25  # the step count is further along (t = 0.5) than the clock: steps win
    assert f(55) == pytest.approx(0.505)
    used[0] = 1.0
    assert f(20) == pytest.approx(0.01)
    used[0] = 3.0  # over budget: clamped at the end of the cosine
    assert f(20) == pytest.approx(0.01)
    assert f(0) == pytest.approx(0.1)  # the warm-up itself is step-based


# --- frozen backbone ------------------------------------------------------------------------

def test_freeze_epochs_train_only_the_head(data_dir, init_file, tmp_path):
    path, init = init_file
    out = tmp_path / "frozen"
    _train(data_dir, out, epochs=2, freeze_epochs=1, stop_after=1, weights=str(path), lr=3e-3)
    first = _ckpt(out / LAST)
    assert first["epoch"] == 1
    model = first["model"]
    for k, v in init.items():
        if k.startswith("fc.") or not _is_param(k):
            continue
        assert torch.equal(model[k], v), f"{k} changed while the backbone was frozen"
    assert not torch.equal(model["fc.weight"], init["fc.weight"])
    assert not torch.equal(model["fc.bias"], init["fc.bias"])
    # Epoch 2 (resumed) is no longer frozen: the backbone moves.
    train(_args(out, epochs=2, resume=True), None, None)
    second = _ckpt(out / LAST)
    assert second["epoch"] == 2
    assert not torch.equal(second["model"]["conv1.weight"], init["conv1.weight"])


# --- early stopping -------------------------------------------------------------------------

def test_early_stopping_when_validation_never_improves(data_dir, init_file, tmp_path, monkeypatch):
    """Validation scores held constant: epoch 1 is the best, epoch 2 is one bad epoch = patience."""
    path, init = init_file
    calls = []

    def flat(model, ds, args, device, criterion):
        calls.append(len(ds))
        return {"loss": 0.5, "macro_ap": 0.5, "macro_roc_auc": 0.5}

    monkeypatch.setattr(train_module, "validate", flat)
    out = tmp_path / "early"
    result = _train(data_dir, out, epochs=4, patience=1, lr=0.0, weights=str(path))
    assert result.epochs_run == 2 and result.best_epoch == 1 and len(calls) == 2
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["stop_reason"].startswith("early stopping")
    assert summary["epochs_run"] == 2 and summary["best_epoch"] == 1
    assert len(_history(out)) == 2
    assert _ckpt(out / BEST)["epoch"] == 1 and _ckpt(out / LAST)["epoch"] == 2
    # lr=0 through warm-up and cosine: every learnable parameter stays where it started
    # (BatchNorm running statistics still follow the training batches).
    last = _ckpt(out / LAST)["model"]
    for k, v in init.items():
        if _is_param(k):
            assert torch.equal(last[k], v), k
    assert all(row["lr"] == 0.0 for row in _history(out))


# --- loss and balancing ---------------------------------------------------------------------

@pytest.mark.parametrize("loss,balance", [("focal", "pos-weight"), ("bce", "sampler")])
def test_focal_loss_and_balanced_sampler_train(data_dir, tmp_path, loss, balance):
    out = tmp_path / f"{loss}-{balance}"
    result = _train(data_dir, out, loss=loss, balance=balance)
    assert result.epochs_run == 1
    (row,) = _history(out)
    assert math.isfinite(row["train_loss"]) and row["train_loss"] > 0
    assert math.isfinite(row["val_loss"]) and row["val_loss"] > 0
    args = _ckpt(out / LAST)["args"]
    assert (args["loss"], args["balance"]) == (loss, balance)


def test_sampler_weights_are_a_distribution_numpy_accepts():
    rng = np.random.default_rng(0)
    targets = (rng.random((997, 7)) < 0.1).astype(np.float32)  # float32, as WindowDataset keeps them
    known = rng.random((997, 7)) < 0.8
    w = sample_weights(targets, known)
    assert w.dtype == np.float64 and abs(w.sum() - 1) < 1e-12
    assert len(rng.choice(len(w), size=50, replace=True, p=w)) == 50


# --- loader workers -------------------------------------------------------------------------

def test_augmented_items_depend_only_on_seed_epoch_and_index(data_dir, tmp_path):
    prepare_run(DataSpec(data=str(data_dir), seed=3), SMALL, tmp_path / "run")
    run = load_run_data(tmp_path / "run")
    windows = run.windows("train")
    aug = AugmentConfig(shift_s=0.3)

    def items(order, epoch):
        ds = WindowDataset(run, windows, train=True, augment=aug, seed=3)
        ds.set_epoch(epoch)
        return {i: ds[i] for i in order}

    n = min(len(windows), 6)
    forward = items(range(n), 1)
    backward = items(reversed(range(n)), 1)  # a fresh dataset, other access order
    for i in range(n):
        for a, b in zip(forward[i][:3], backward[i][:3], strict=True):
            assert torch.equal(a, b), i
    other_epoch = items(range(n), 2)
    assert any(not torch.equal(forward[i][0], other_epoch[i][0]) for i in range(n))


def test_two_loader_workers_give_the_same_weights(data_dir, tmp_path):
    _train(data_dir, tmp_path / "w0", workers=0)
    _train(data_dir, tmp_path / "w2", workers=2)
    a, b = _ckpt(tmp_path / "w0" / LAST), _ckpt(tmp_path / "w2" / LAST)
    assert a["args"]["workers"] == 0 and b["args"]["workers"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert _history(tmp_path / "w0")[0]["train_loss"] == _history(tmp_path / "w2")[0]["train_loss"]


# --- edge CLI without the [train] extra -----------------------------------------------------

def _without_torch(tmp_path: Path, error: str) -> dict[str, str]:
    fake = tmp_path / "fake-site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise {error}\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), str(REPO)])
    return env


BROKEN = ['ImportError("libtorch_cpu.so: cannot open shared object file")',
          'ModuleNotFoundError("No module named \'torch\'", name="torch")']


@pytest.mark.parametrize("error", BROKEN, ids=["broken", "absent"])
def test_train_without_torch_says_install_sonotrap_train(tmp_path, error):
    env = _without_torch(tmp_path, error)
    r = subprocess.run([sys.executable, "-m", "edge", "train", "--data", str(tmp_path / "data"),
                        "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr  # one line, no traceback
    assert lines[0].startswith("error: ") and "sonotrap[train]" in lines[0] and "torch" in lines[0]
    assert not (tmp_path / "run").exists()


def test_train_help_works_without_torch(tmp_path):
    """By design --help needs no torch (trainer commands import it only inside run)."""
    env = _without_torch(tmp_path, BROKEN[1])
    r = subprocess.run([sys.executable, "-m", "edge", "train", "--help"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "--freeze-epochs" in r.stdout and "--weights" in r.stdout
