"""tune-top: the last block learns a BirdNET probe's scores of unlabeled windows; the rest stays as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from edge.errors import SonotrapError  # noqa: E402
from edge.inference.frontend import FrontendConfig  # noqa: E402
from tests.support.fake_teacher import FakeTeacher  # noqa: E402
from tests.support.synth_calls import unlabeled_folder  # noqa: E402
from tests.trainer.test_export import write_checkpoint  # noqa: E402
from trainer.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from trainer.linear_head import linear_head  # noqa: E402
from trainer.model import build_model  # noqa: E402
from trainer.prepare import DataSpec, prepare_run  # noqa: E402
from trainer.rundata import load_run_data  # noqa: E402
from trainer.split import read_split  # noqa: E402
from trainer.tune_top import TuneArgs, train_layer4, tune_top  # noqa: E402

SMALL = FrontendConfig(n_mels=32, n_frames=32, hop_length=2000)


def test_the_last_block_learns_soft_targets_and_the_best_validation_epoch_is_kept():
    """Label k is "pattern k is in the layer3 map"; the block (random, as a fresh one) must learn it."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    truth = (rng.random((320, 2)) < 0.4).astype(np.float32)
    patterns = rng.standard_normal((2, 1024)).astype(np.float32)
    maps = rng.standard_normal((320, 1024, 4, 4)).astype(np.float32) + (truth @ patterns)[:, :, None, None]
    maps = torch.from_numpy(maps)
    soft = np.clip(truth * 0.9 + 0.05, 0, 1)  # a teacher's probabilities, not hard labels
    net = build_model(2, "none")
    labels = ["a", "b"]
    args = TuneArgs(epochs=4, lr=1e-3, batch=32, dropout=0.0)
    state, history = train_layer4(net, maps[:256].half(), soft[:256], np.ones((256, 2), bool), np.ones(256),
                                  maps[256:].half(), truth[256:], np.ones((64, 2), bool), labels, args)
    aps = [h["val_macro_ap"] for h in history]
    assert len(history) == 4 and max(aps) > 0.85, aps
    net.layer4.load_state_dict(state)
    for name, value in state.items():  # the state returned is the best epoch's, not the last one's
        assert torch.equal(net.layer4.state_dict()[name], value)
    # rows of weight 0 teach nothing: with every row weighted 0 the block learns nothing at all
    frozen = build_model(2, "none")
    before = {n: v.clone() for n, v in frozen.layer4.state_dict().items()}
    state0, _ = train_layer4(frozen, maps[:64].half(), soft[:64], np.ones((64, 2), bool), np.zeros(64),
                             maps[256:].half(), truth[256:], np.ones((64, 2), bool), labels,
                             TuneArgs(epochs=1, batch=32, weight_decay=0.0))
    assert all(torch.equal(before[n], state0[n]) for n in before)


@pytest.fixture(scope="module")
def tuned(data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    run_dir = tmp / "run"
    prepared = prepare_run(DataSpec(data=str(data_dir), seed=3), SMALL, run_dir)
    torch.manual_seed(0)
    write_checkpoint(run_dir / "best.pt", build_model(len(prepared.run.labels), "none").eval(),
                     prepared.run.labels, frontend=SMALL.to_dict())
    backbone = build_model(1, "none")
    backbone.fc = torch.nn.Identity()
    save_checkpoint(backbone.state_dict(), tmp / "stage1.pt")
    unl = unlabeled_folder(data_dir, sorted(read_split(run_dir / "split.json")["test"])[:2], tmp / "unlabeled")
    teacher = FakeTeacher()
    torch.set_num_threads(2)
    path, summary = tune_top(run_dir, tmp / "stage1.pt", unl, args=TuneArgs(epochs=2, batch=8),
                             teacher_model=teacher)
    return run_dir, tmp / "stage1.pt", unl, teacher, path, summary


def test_tune_top_changes_only_the_last_block_and_records_its_teacher(tuned):
    run_dir, source, _, teacher, path, summary = tuned
    assert path == run_dir / "tuned" / "backbone.pt"
    new, old = torch.load(path, weights_only=True), torch.load(source, weights_only=True)
    assert set(new) == set(old) and not any(k.startswith("fc.") for k in new)
    assert all(torch.equal(new[k], old[k]) for k in new if not k.startswith("layer4."))
    assert any(not torch.equal(new[k], old[k]) for k in new if k.startswith("layer4."))
    run = load_run_data(run_dir)
    assert teacher.windows == len(run.windows("train")) + len(run.windows("val")) + 6  # never the test windows
    on_disk = json.loads((run_dir / "tuned" / "summary.json").read_text())
    assert on_disk["teacher"]["licence"] == "CC BY-NC-SA 4.0" and on_disk["teacher"]["probe_fitted_on"] == "train split"
    assert len(on_disk["history"]) == 2
    assert on_disk["best_epoch"] == max(on_disk["history"], key=lambda h: h["val_macro_ap"])["epoch"]
    assert on_disk["unlabeled_windows"] == 6 and summary["best_epoch"] == on_disk["best_epoch"]


def test_linear_head_takes_the_tuned_backbone_and_carries_its_record(tuned):
    run_dir, _, _, _, path, _ = tuned
    out, _ = linear_head(run_dir, path, c_grid=(0.01,), out_name="lh_tuned.pt")
    ckpt = load_checkpoint(out)
    assert ckpt.raw["linear_head"]["stage1"]["method"].startswith("tune-top")
    tuned_l4 = torch.load(path, weights_only=True)["layer4.0.conv1.weight"]
    assert torch.equal(ckpt.raw["model"]["layer4.0.conv1.weight"], tuned_l4)


def test_tune_top_refuses_bad_input_with_one_line(tuned, tmp_path):
    run_dir, source, unl, _, _, _ = tuned
    with pytest.raises(SonotrapError, match="at least 1"):
        tune_top(run_dir, source, unl, tmp_path / "x", TuneArgs(epochs=0))
    with pytest.raises(SonotrapError, match="does not exist"):
        tune_top(run_dir, tmp_path / "missing.pt", unl, tmp_path / "x")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "files.csv").write_text("file,duration_s,sample_rate\n")
    with pytest.raises(SonotrapError, match="lists no recordings"):
        tune_top(run_dir, source, empty, tmp_path / "x")


def test_cross_fitting_on_a_tuned_backbone_warns_that_its_figures_are_optimistic(tuned, caplog):
    run_dir, source, _, _, path, _ = tuned
    with caplog.at_level("WARNING", logger="sonotrap.trainer"):
        linear_head(run_dir, path, c_grid=(0.01,), folds=2, out_name="cf_tuned.pt")
    assert any("optimistic" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="sonotrap.trainer"):
        linear_head(run_dir, source, c_grid=(0.01,), folds=2, out_name="cf_plain.pt")
    assert not any("optimistic" in r.getMessage() for r in caplog.records)
