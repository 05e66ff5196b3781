"""The one checkpoint reader/writer: path resolution, atomic writes, updates that keep the rest,
and DDP-prefixed weights loading into a plain model."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from edge.errors import SonotrapError  # noqa: E402
from edge.inference.frontend import FrontendConfig  # noqa: E402
from trainer.checkpoint import (  # noqa: E402
    BEST,
    CHECKPOINT_FORMAT,
    LAST,
    TrainingProgress,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    update_checkpoint,
)
from trainer.model import build_model  # noqa: E402


def _state(model_state: dict, **extra) -> dict:
    return {"format": CHECKPOINT_FORMAT, "model": model_state, "labels": ["a", "b"],
            "label_names": {"a": "Alpha"}, "frontend": FrontendConfig().to_dict(), "thresholds": {"a": 0.3},
            "metrics": {"val": {"macro_ap": 0.5}}, "args": {"seed": 1}, "data": {}} | extra


def test_run_directory_resolves_to_best_then_last(tmp_path):
    save_checkpoint(_state({}, epoch=2), tmp_path / LAST)
    assert load_checkpoint(tmp_path).path == tmp_path / LAST
    save_checkpoint(_state({}, epoch=1), tmp_path / BEST)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.path == tmp_path / BEST and ckpt.extra["epoch"] == 1
    assert ckpt.label_names == {"a": "Alpha", "b": "b"}  # missing names default to the code
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write leaves no temporary behind


def test_update_keeps_every_other_entry(tmp_path):
    save_checkpoint(_state({"w": torch.ones(2)}, epoch=3, optimizer={"lr": 1}), tmp_path / BEST)
    update_checkpoint(load_checkpoint(tmp_path / BEST), thresholds={"a": 0.7, "b": 0.2})
    raw = torch.load(tmp_path / BEST, map_location="cpu", weights_only=False)
    assert raw["thresholds"] == {"a": 0.7, "b": 0.2}
    assert raw["epoch"] == 3 and raw["optimizer"] == {"lr": 1} and torch.equal(raw["model"]["w"], torch.ones(2))


def test_rejects_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(SonotrapError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(SonotrapError, match=f"not a {CHECKPOINT_FORMAT}"):
        load_checkpoint(tmp_path / "list.pt")
    state = _state({})
    del state["frontend"]
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(SonotrapError, match="lacks"):
        load_checkpoint(tmp_path / "old.pt")


def test_ddp_prefixed_weights_load_into_a_plain_model(tmp_path):
    torch.manual_seed(0)
    net = build_model(2, "none")
    save_checkpoint(_state({f"module.{k}": v for k, v in net.state_dict().items()}), tmp_path / BEST)
    model = model_from_checkpoint(load_checkpoint(tmp_path / BEST))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert torch.equal(model.state_dict()["fc.weight"], net.state_dict()["fc.weight"])


def test_progress_round_trips_through_the_checkpoint(tmp_path):
    saved = {"epoch": 4, "best": {"score": 0.6, "epoch": 3, "bad_epochs": 1}, "history": [{"epoch": 1}],
             "speed": {"samples": 100, "seconds": 2.5, "elapsed": 9.0}}
    save_checkpoint(_state({}, **saved), tmp_path / LAST)
    p = TrainingProgress.from_checkpoint(load_checkpoint(tmp_path / LAST))
    assert (p.epoch, p.best_score, p.best_epoch, p.bad_epochs) == (4, 0.6, 3, 1)
    assert (p.history, p.samples, p.seconds, p.elapsed) == ([{"epoch": 1}], 100, 2.5, 9.0)
