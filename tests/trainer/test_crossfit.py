"""Cross-fitted linear heads: held-out scores on every labelled recording, operating points set on them."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("onnx")

from edge.errors import SonotrapError  # noqa: E402
from edge.inference.frontend import FrontendConfig  # noqa: E402
from edge.models.bundle import load_bundle  # noqa: E402
from tests.support.synth_calls import unlabeled_folder  # noqa: E402
from tests.trainer.test_export import write_checkpoint  # noqa: E402
from trainer.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint  # noqa: E402
from trainer.crossfit import KEY, assign_folds, cross_fit, out_of_fold_recordings  # noqa: E402
from trainer.edge_eval import pooled, score_recordings, split_from_run  # noqa: E402
from trainer.linear_head import fit_head, linear_head  # noqa: E402
from trainer.metrics import sigmoid  # noqa: E402
from trainer.model import build_model  # noqa: E402
from trainer.prepare import DataSpec, prepare_run  # noqa: E402
from trainer.rundata import load_run_data  # noqa: E402
from trainer.split import read_split  # noqa: E402

SMALL = FrontendConfig(n_mels=32, n_frames=32, hop_length=2000)


def test_folds_are_balanced_seeded_and_cover_every_recording():
    files = [f"r{i:02d}.wav" for i in range(23)] * 3  # windows: each recording several times
    a = assign_folds(files, 5, seed=1)
    assert set(a) == set(files) and set(a.values()) == set(range(5))
    sizes = np.bincount(list(a.values()))
    assert sizes.max() - sizes.min() <= 1
    assert assign_folds(list(reversed(files)), 5, seed=1) == a  # order of windows does not matter
    assert assign_folds(files, 5, seed=2) != a
    with pytest.raises(ValueError, match="at least 2 folds"):
        assign_folds(files, 1)


def test_out_of_fold_scores_never_come_from_a_head_that_saw_the_recording():
    # Each recording has its own feature dimension and a random label: a head that saw a
    # recording memorises it (AP ~1); held out, the label cannot be predicted (AP ~ chance).
    rng = np.random.default_rng(0)
    n_rec, per = 40, 4
    files = [f"r{i}" for i in range(n_rec) for _ in range(per)]
    x = np.zeros((n_rec * per, n_rec + 1))
    x[np.arange(n_rec * per), np.repeat(np.arange(n_rec), per)] = 1.0
    label = np.repeat(rng.random(n_rec) < 0.5, per)
    informative = label + rng.normal(0, 0.3, len(label))  # a real cue, shared by every recording
    y = np.stack([label, label], axis=1).astype(np.float32)
    known = np.ones_like(y, dtype=bool)
    x_id = x.copy()
    x_cue = x.copy()
    x_cue[:, -1] = informative
    memorised = cross_fit(x_id, y, known, files, 4, (10.0,), fit_head, ["a", "b"])
    assert memorised["cv_macro_ap"][10.0] < 0.75
    w, b = fit_head(x_id, y, known, 10.0)  # in-sample, for contrast
    from trainer.metrics import evaluate_scores

    assert evaluate_scores(sigmoid(x_id @ w.T + b), y, known, ["a", "b"])["macro_ap"] > 0.95
    cued = cross_fit(x_cue, y, known, files, 4, (0.01, 10.0), fit_head, ["a", "b"])
    assert cued["cv_macro_ap"][cued["c"]] > 0.9 and cued["c"] == max(cued["cv_macro_ap"], key=cued["cv_macro_ap"].get)
    assert cued["weights"].shape == (4, 2, n_rec + 1) and cued["biases"].shape == (4, 2)


def test_the_unheard_recordings_figure_shows_what_the_pooled_one_hides():
    # A backbone whose features carry the label only on the recordings it trained on (their
    # audio, as stage 1 distils on the train split): pooled out-of-fold AP looks good, the
    # recordings it never heard show chance. The figure must come from those rows alone.
    rng = np.random.default_rng(1)
    n_rec, per = 60, 4
    files = [f"r{i}" for i in range(n_rec) for _ in range(per)]
    label = np.repeat(rng.random(n_rec) < 0.5, per)
    unheard = np.repeat(np.arange(n_rec) >= 40, per)  # the last 20 recordings: validation
    cue = np.where(unheard, rng.normal(0, 1, len(label)), label + rng.normal(0, 0.2, len(label)))
    x = np.stack([cue, rng.normal(0, 1, len(label))], axis=1)
    y = np.stack([label, label], axis=1).astype(np.float32)
    known = np.ones_like(y, dtype=bool)
    cf = cross_fit(x, y, known, files, 4, (1.0,), fit_head, ["a", "b"], unheard=unheard)
    assert cf["cv_macro_ap"][1.0] > 0.75 and cf["cv_macro_ap_unheard"][1.0] < 0.7
    from trainer.crossfit import fold_scores
    from trainer.metrics import evaluate_scores

    fold = np.array([cf["assignment"][f] for f in files])
    oof = fold_scores(x, cf["weights"], cf["biases"], fold)
    expect = evaluate_scores(oof[unheard], y[unheard], known[unheard], ["a", "b"])["macro_ap"]
    assert cf["cv_macro_ap_unheard"][1.0] == pytest.approx(expect)
    assert cross_fit(x, y, known, files, 4, (1.0,), fit_head, ["a", "b"])["cv_macro_ap_unheard"] is None


class TorchRuntime:
    """A plain PyTorch model as the edge pipeline's model runtime (sigmoid of its logits)."""

    def __init__(self, bundle, model):
        self.bundle, self.model = bundle, model.eval()

    @property
    def labels(self):
        return self.bundle.labels

    @torch.no_grad()
    def predict(self, images):
        return torch.sigmoid(self.model(torch.from_numpy(np.ascontiguousarray(images)))).numpy()

    def self_test(self):
        return np.zeros(len(self.labels), np.float32)

    def latency_ms(self):
        return {}


@pytest.fixture(scope="module")
def crossfit_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cf") / "run"
    prepared = prepare_run(DataSpec(data=str(data_dir), seed=3), SMALL, out)
    torch.manual_seed(0)
    write_checkpoint(out / "best.pt", build_model(len(prepared.run.labels), "none").eval(),
                     prepared.run.labels, frontend=SMALL.to_dict())
    torch.manual_seed(5)
    backbone = build_model(1, "none")
    backbone.fc = torch.nn.Identity()
    (out / "distill").mkdir()
    save_checkpoint(backbone.state_dict(), out / "distill" / "backbone.pt")
    torch.set_num_threads(2)
    ckpt_path, choice = linear_head(out, c_grid=(0.01, 1.0), folds=2, out_name="cf.pt")
    return out, ckpt_path, choice


@pytest.fixture(scope="module")
def crossfit_bundle(crossfit_run, tmp_path_factory):
    from trainer.bundle_builder import bundle_from_checkpoint
    from trainer.quantize import QuantSettings

    _, ckpt_path, _ = crossfit_run
    tmp = tmp_path_factory.mktemp("cfb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SONOTRAP_CACHE_DIR", str(tmp / "cache"))
        out, _ = bundle_from_checkpoint(ckpt_path, tmp / "bundle", settings=QuantSettings(calibration_windows=8),
                                        max_ap_drop=1.0, reference_audio="synthetic")
    return out


def test_cross_fitted_head_is_fitted_on_train_and_validation_and_keeps_its_fold_heads(crossfit_run):
    run_dir, ckpt_path, choice = crossfit_run
    ckpt = load_checkpoint(ckpt_path)
    split = read_split(run_dir / "split.json")
    cf = ckpt.raw[KEY]
    assert set(cf["assignment"]) == set(split["train"]) | set(split["val"])  # never a test recording
    assert not set(cf["assignment"]) & set(split["test"])
    assert cf["weights"].shape == (2, 2, 2048) and choice["c"] == cf["c"]
    assert ckpt.raw["linear_head"]["fit_on"].startswith("train+val") and set(choice["cv_macro_ap"]) == {0.01, 1.0}
    # Validation is in-sample for this head: reported as such, with the held-out figure beside it.
    assert "val" not in ckpt.metrics and "val_in_sample" in ckpt.metrics and "test" in ckpt.metrics
    assert ckpt.metrics["cross_fit"]["macro_ap"] == pytest.approx(choice["cv_macro_ap"][choice["c"]])
    # ... and the validation recordings' own out-of-fold figure, the one to compare backbones on.
    unheard = choice["cv_macro_ap_val_recordings"]
    assert set(unheard) == {0.01, 1.0} and all(0.0 <= v <= 1.0 for v in unheard.values())
    assert ckpt.metrics["cross_fit"]["val_recordings_macro_ap"] == pytest.approx(unheard[choice["c"]])
    # The shipped fc is the mean of the fold heads (whose out-of-fold scores set the thresholds).
    fc, bias = ckpt.state_dict["fc.weight"].numpy(), ckpt.state_dict["fc.bias"].numpy()
    np.testing.assert_allclose(fc, cf["weights"].numpy().mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(bias, cf["biases"].numpy().mean(axis=0), atol=1e-5)
    assert all(not np.allclose(fc, cf["weights"][j].numpy(), atol=1e-6) for j in range(2))


def test_out_of_fold_hop_scores_are_each_recordings_own_fold_head(crossfit_run, crossfit_bundle, tmp_path):
    from trainer.bundle_builder import BundleInfo, build_bundle
    from trainer.export import export_onnx

    run_dir, ckpt_path, _ = crossfit_run
    ckpt = load_checkpoint(ckpt_path)
    cf = ckpt.raw[KEY]
    run = load_run_data(run_dir)
    data = pooled(split_from_run(run, "train"), split_from_run(run, "val"))
    # An FP32 bundle of the checkpoint: its graph's features must give the PyTorch fold heads' scores.
    model = model_from_checkpoint(ckpt)
    fp32 = export_onnx(model, tmp_path / "fp32.onnx", ckpt.frontend.image_shape)
    bundle = load_bundle(build_bundle(fp32, BundleInfo.from_checkpoint(ckpt), tmp_path / "fp32-bundle"))
    recs = out_of_fold_recordings(bundle, cf, data)
    assert [r.file for r in recs] == data.files
    for r in recs[:4]:
        fold = cf["assignment"][r.file]
        ref_model = model_from_checkpoint(ckpt)
        ref_model.fc.weight.data = cf["weights"][fold].float()
        ref_model.fc.bias.data = cf["biases"][fold].float()
        one = pooled(split_from_run(run, "train"))
        one.files = [r.file]
        [ref] = score_recordings(bundle, one, runtime=TorchRuntime(bundle, ref_model))
        np.testing.assert_allclose(r.t_start, ref.t_start)
        np.testing.assert_allclose(r.scores, ref.scores, atol=1e-4)
        other = model_from_checkpoint(ckpt)  # the other fold's head gives other scores
        other.fc.weight.data = cf["weights"][1 - fold].float()
        other.fc.bias.data = cf["biases"][1 - fold].float()
        [wrong] = score_recordings(bundle, one, runtime=TorchRuntime(bundle, other))
        assert not np.allclose(r.scores, wrong.scores, atol=1e-4)
    with pytest.raises(ValueError, match="not in the cross-fit folds"):
        out_of_fold_recordings(bundle, cf, split_from_run(run, "test"))
    # The INT8 bundle's own graph gives nearly the same evidence (what the device computes).
    int8 = out_of_fold_recordings(load_bundle(crossfit_bundle), cf, data)
    assert [r.file for r in int8] == data.files
    assert np.mean([np.abs(a.scores - b.scores).mean() for a, b in zip(int8, recs, strict=True)]) < 0.05


def test_bundle_of_a_cross_fitted_head_sets_operating_points_on_every_pooled_recording(crossfit_run, crossfit_bundle):
    from trainer.metrics import evaluate_scores
    from trainer.rundata import load_split_arrays

    run_dir, ckpt_path, _ = crossfit_run
    m = json.loads((crossfit_bundle / "manifest.json").read_text())
    # The INT8 check scored validation with the held-out fold heads, not the head fitted on it.
    ckpt = load_checkpoint(ckpt_path)
    cf = ckpt.raw[KEY]
    val = load_split_arrays(run_dir, "val")
    root = load_run_data(run_dir).root
    folds = [cf["assignment"][str(p.relative_to(root))] for p, _, _ in val.sources]
    net = model_from_checkpoint(ckpt).eval()
    net.fc = torch.nn.Identity()
    with torch.no_grad():
        feats = net(torch.from_numpy(val.images)).double().numpy()
    w, b = cf["weights"].double().numpy(), cf["biases"].double().numpy()
    held_out = sigmoid(np.einsum("nd,nkd->nk", feats, w[folds]) + b[folds])
    expected = evaluate_scores(held_out, val.targets, val.known, ckpt.labels)["macro_ap"]
    assert m["metrics"]["fp32"]["macro_ap"] == pytest.approx(expected, abs=1e-3)
    # Window by window: the FP32 and INT8 graphs' head inputs with each recording's fold head.
    from trainer.crossfit import held_out_predict

    files = [str(p.relative_to(root)) for p, _, _ in val.sources]
    work = crossfit_bundle.parent / f".{crossfit_bundle.name}-work"
    got = held_out_predict(cf, files)(work / "model_fp32.onnx", val.images)
    np.testing.assert_allclose(got, held_out, atol=1e-4)
    shipped = sigmoid(feats @ ckpt.state_dict["fc.weight"].double().numpy().T + ckpt.state_dict["fc.bias"].double().numpy())
    assert np.abs(got - shipped).max() > 1e-2  # not the head that was fitted on these windows
    int8 = held_out_predict(cf, files)(work / "model_int8.onnx", val.images)
    assert np.abs(int8 - got).mean() < 0.05
    op = m["metrics"]["operating_points"]
    assert op["method"].startswith("out-of-fold hop scores") and "2 folds" in op["method"]
    assert m["metrics"]["user_view"]["split"] == "test"
    for lab in m["labels"]:
        assert isinstance(lab["enabled"], bool) and (lab["enabled"] or lab["disabled_reason"])
    load_bundle(crossfit_bundle)


def test_linear_head_refuses_one_fold(crossfit_run, capsys):
    import argparse

    from trainer.commands import linear_head as cmd

    run_dir, _, _ = crossfit_run
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    with pytest.raises(SonotrapError, match="--folds 1: use 0"):
        cmd.run(p.parse_args([str(run_dir), "--folds", "1"]))


def test_evaluate_checkpoint_sets_a_cross_fitted_heads_operating_points_the_same_way(crossfit_run, tmp_path):
    from trainer.evaluate import checkpoint_user_view

    run_dir, ckpt_path, _ = crossfit_run
    view = checkpoint_user_view(ckpt_path, load_run_data(run_dir), "test", 0.9, tmp_path / "w")
    m = load_bundle(tmp_path / "w" / "fp32-bundle").manifest
    assert m.metrics["operating_points"]["method"].startswith("out-of-fold hop scores")
    assert view["split"] == "test" and view["enabled_labels"] == len(load_bundle(tmp_path / "w" / "fp32-bundle").enabled_labels)


def test_a_cross_fitted_bundles_operating_points_are_not_reset_on_validation(crossfit_run, crossfit_bundle, tmp_path):
    import shutil

    from trainer.edge_eval import set_operating_points

    run_dir, _, _ = crossfit_run
    copy = tmp_path / "copy"
    shutil.copytree(crossfit_bundle, copy)
    before = (copy / "manifest.json").read_text()
    with pytest.raises(SonotrapError, match="fitted on the validation recordings .*sonotrap quantize CHECKPOINT"):
        set_operating_points(copy, split_from_run(load_run_data(run_dir), "val"))
    assert (copy / "manifest.json").read_text() == before  # nothing rewritten


def test_self_training_refits_on_the_unlabeled_windows_its_first_head_is_sure_about():
    from trainer.linear_head import self_training

    x, y = np.ones((3, 2)), np.array([[1, 0], [0, 1], [0, 0]], np.float32)
    known = np.ones_like(y, dtype=bool)
    xu = np.array([[3.0, -3.0], [-3.0, 3.0], [0.0, 0.0], [5.0, 0.5]])  # sigmoid: 0.95 / 0.05 / 0.5 / 0.62
    calls = []

    def fit(x, targets, known, c, seed=0):
        calls.append((x, targets, known, c))
        return np.eye(2) * len(calls), np.zeros(2)  # the first head scores sigmoid(xu)

    w, _ = self_training(xu, high=0.9, low=0.1, fit=fit)(x, y, known, 0.5)
    assert len(calls) == 2 and np.array_equal(w, 2 * np.eye(2))  # the refit is what it returns
    rx, rt, rk, rc = calls[1]
    assert rc == 0.5 and np.array_equal(rx, np.concatenate([x, xu]))
    np.testing.assert_array_equal(rt[:3], y)
    np.testing.assert_array_equal(rt[3:], [[1, 0], [0, 1], [0, 0], [1, 0]])
    # sure scores only: >= 0.9 positive, <= 0.1 negative, anything between stays unknown
    np.testing.assert_array_equal(rk[3:], [[True, True], [True, True], [False, False], [True, False]])
    assert rk[:3].all()
    with pytest.raises(SonotrapError, match="must satisfy 0 <= low < high <= 1"):
        self_training(xu, high=0.1, low=0.9)


def test_self_trained_head_competes_with_the_plain_one_on_out_of_fold_ap(crossfit_run, data_dir, tmp_path, capsys):
    import argparse

    from trainer.bundle_builder import BundleInfo
    from trainer.commands import linear_head as cmd

    run_dir, _, plain = crossfit_run
    with pytest.raises(SonotrapError, match="files.csv does not exist"):  # before any feature pass
        linear_head(run_dir, c_grid=(0.01,), folds=2, out_name="x.pt", unlabeled=tmp_path)
    unl = tmp_path / "unlabeled"
    (unl / "audio").mkdir(parents=True)
    (unl / "files.csv").write_text("file,duration_s,sample_rate\n")
    with pytest.raises(SonotrapError, match="lists no recordings"):
        linear_head(run_dir, c_grid=(0.01,), folds=2, out_name="x.pt", unlabeled=unl)
    split = read_split(run_dir / "split.json")
    unlabeled_folder(data_dir, sorted(split["test"])[:2], unl)  # audio of the region that no head is fitted on
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    args = p.parse_args([str(run_dir), "--folds", "2", "--out-name", "st.pt", "--unlabeled", str(unl),
                         "--pseudo-high", "0.8", "--pseudo-low", "0.2"])
    assert cmd.run(args) == 0
    ckpt = load_checkpoint(run_dir / "st.pt")
    st = ckpt.raw["linear_head"]["self_training"]
    assert st["windows"] == 6 and (st["high"], st["low"]) == (0.8, 0.2)  # 2 recordings of 4 s, every second
    scores = {name: max(grid.values()) for name, grid in st["scores"].items()}
    assert set(scores) == {"labelled", "self-training"}
    # the plain head's figures are those of the run without unlabeled audio (same folds, same fits)
    assert st["scores"]["labelled"]["0.01"] == pytest.approx(plain["cv_macro_ap"][0.01], abs=1e-4)
    assert st["used"] == (scores["self-training"] > scores["labelled"])
    chosen = "self-training" if st["used"] else "labelled"
    assert ckpt.metrics["cross_fit"]["macro_ap"] == pytest.approx(scores[chosen], abs=1e-4)
    assert BundleInfo.from_checkpoint(ckpt).provenance["linear_head"]["self_training"]["windows"] == 6
    # Each head's figure on the validation recordings alone is kept and printed under its pooled one.
    assert set(st["scores_val_recordings"]) == {"labelled", "self-training"}
    printed = capsys.readouterr().out.splitlines()
    at = [i for i, line in enumerate(printed) if line.startswith("2-fold out-of-fold macro-AP")]
    assert len(at) == 2 and all(printed[i + 1].startswith("  on the validation recordings alone") for i in at)
    assert f"C=0.01: {st['scores_val_recordings']['labelled']['0.01']:.4f}" in printed[at[0] + 1]


def test_a_teachers_probe_labels_the_unlabeled_windows_from_the_same_labelled_rows():
    from trainer.linear_head import TeacherProbe, self_training

    # The head's own features cannot tell the labels apart (all ones); the teacher's embeddings can.
    y = np.array([[1, 0], [0, 1]] * 6, np.float32)
    known = np.ones_like(y, dtype=bool)
    x = np.ones((12, 3))
    e_lab = np.where(y > 0, 4.0, -4.0) + np.random.default_rng(0).normal(0, 0.1, (12, 2))
    e_unl = np.array([[20.0, -20.0], [-20.0, 20.0], [0.0, 0.0]])  # clearly a, clearly b, unsure
    xu = np.zeros((3, 3))
    calls = []

    def fit(x, targets, known, c, seed=0):
        calls.append((x, targets, known))
        return np.zeros((2, 3)), np.zeros(2)

    probe = TeacherProbe(e_lab, e_unl)
    fit_tl = self_training(xu, high=0.9, low=0.1, fit=fit, teacher=probe)
    with pytest.raises(ValueError, match="rows="):
        fit_tl(x, y, known, 0.5)
    fit_tl(x[:8], y[:8], known[:8], 0.5, rows=np.arange(8))
    assert len(calls) == 1, "the head's own first fit is not needed: the teacher labels"
    rx, rt, rk = calls[0]
    assert np.array_equal(rx, np.concatenate([x[:8], xu]))
    np.testing.assert_array_equal(rt[8:], [[1, 0], [0, 1], [0, 0]])
    np.testing.assert_array_equal(rk[8:], [[True, True], [True, True], [False, False]])

    # Cross-fitted, each fold's probe sees only the other folds' rows (indices into x).
    seen = []

    def fit_rows(xs, targets, known, c, seed=0, rows=None):
        seen.append(rows)
        np.testing.assert_array_equal(xs, x[rows])
        return np.zeros((2, 3)), np.zeros(2)

    files = [f"r{i // 2}" for i in range(12)]
    cf = cross_fit(x, y, known, files, 3, (0.1,), fit_rows, ["a", "b"])
    fold = np.array([cf["assignment"][f] for f in files])
    assert len(seen) == 3
    for j, rows in enumerate(seen):
        np.testing.assert_array_equal(rows, np.flatnonzero(fold != j))


def test_teacher_labelled_head_records_its_teacher_and_competes(crossfit_run, data_dir, tmp_path):
    from tests.support.fake_teacher import FakeTeacher
    from trainer.bundle_builder import BundleInfo
    from trainer.teacher_cache import load_cache

    run_dir, _, plain = crossfit_run
    with pytest.raises(SonotrapError, match="give them with --unlabeled"):
        linear_head(run_dir, c_grid=(0.01,), folds=2, out_name="x.pt", pseudo_teacher="birdnet")
    unl = unlabeled_folder(data_dir, sorted(read_split(run_dir / "split.json")["test"])[:2], tmp_path / "unlabeled")
    teacher = FakeTeacher()
    out, choice = linear_head(run_dir, c_grid=(0.01,), folds=2, out_name="tl.pt", unlabeled=unl,
                              pseudo_teacher="birdnet", teacher_model=teacher)
    run = load_run_data(run_dir)
    n_labelled = len(run.windows("train")) + len(run.windows("val"))
    assert teacher.windows == n_labelled + 6  # train + validation + unlabeled windows; test never
    assert len(load_cache(run_dir).keys) == n_labelled + 6
    st = load_checkpoint(out).raw["linear_head"]["self_training"]
    assert set(st["scores"]) == {"labelled", "teacher-labelled"}
    assert st["scores"]["labelled"]["0.01"] == pytest.approx(plain["cv_macro_ap"][0.01], abs=1e-4)
    assert st["teacher"]["name"] == "BirdNET" and st["teacher"]["licence"] == "CC BY-NC-SA 4.0"
    assert st["used"] == (st["scores"]["teacher-labelled"]["0.01"] > st["scores"]["labelled"]["0.01"])
    prov = BundleInfo.from_checkpoint(load_checkpoint(out)).provenance
    assert ("head_pseudo_labels" in prov.get("teacher", {})) == st["used"]
    linear_head(run_dir, c_grid=(0.01,), folds=2, out_name="tl2.pt", unlabeled=unl,
                pseudo_teacher="birdnet", teacher_model=teacher)
    assert teacher.windows == n_labelled + 6, "the teacher's outputs come from the cache the second time"


def test_speed_copies_train_the_head_but_every_figure_is_scored_on_the_windows(crossfit_run):
    import argparse

    from trainer.commands import linear_head as cmd

    run_dir, _, _ = crossfit_run
    base = load_checkpoint(linear_head(run_dir, c_grid=(0.01,), folds=2, out_name="nocopies.pt")[0])
    out, choice = linear_head(run_dir, c_grid=(0.01,), folds=2, out_name="copies.pt", speed_copies=1)
    ckpt = load_checkpoint(out)
    assert ckpt.raw["linear_head"]["speed_copies"] == 1 and "speed_copies" not in base.raw["linear_head"]
    # The same folds and windows are scored; the fold heads learnt from more rows, so they differ.
    assert ckpt.raw[KEY]["assignment"] == base.raw[KEY]["assignment"]
    assert set(choice["cv_macro_ap"]) == {0.01} and set(choice["cv_macro_ap_val_recordings"]) == {0.01}
    assert not np.allclose(ckpt.raw[KEY]["weights"].numpy(), base.raw[KEY]["weights"].numpy(), atol=1e-4)
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    with pytest.raises(SonotrapError, match="--speed-copies -1"):
        cmd.run(p.parse_args([str(run_dir), "--speed-copies", "-1"]))


def test_choosing_on_the_unheard_recordings_picks_the_c_that_holds_on_them():
    # Feature 0 carries the label only on the recordings the backbone heard, feature 1 only on
    # those it never heard. A "C" of 1 makes the head read feature 0, a "C" of 2 feature 1:
    # the pooled figure (two thirds heard) prefers 1, the unheard recordings' figure 2.
    rng = np.random.default_rng(2)
    n_rec, per = 60, 4
    files = [f"r{i}" for i in range(n_rec) for _ in range(per)]
    label = np.repeat(rng.random(n_rec) < 0.5, per)
    unheard = np.repeat(np.arange(n_rec) >= 40, per)
    noise = rng.normal(0, 1, (len(label), 2))
    x = np.stack([np.where(unheard, noise[:, 0], label + 0.2 * noise[:, 0]),
                  np.where(unheard, label + 0.2 * noise[:, 1], noise[:, 1])], axis=1)
    y = np.stack([label, label], axis=1).astype(np.float32)
    known = np.ones_like(y, dtype=bool)

    def fit_one_feature(x, targets, known, c, seed=0, rows=None):
        w = np.zeros((2, 2))
        w[:, int(c) - 1] = 5.0
        return w, np.full(2, -2.5)

    pooled = cross_fit(x, y, known, files, 4, (1.0, 2.0), fit_one_feature, ["a", "b"], unheard=unheard)
    assert pooled["c"] == 1.0 and pooled["chosen_on"] == "pooled"
    assert pooled["cv_macro_ap"][1.0] > pooled["cv_macro_ap"][2.0]
    assert pooled["cv_macro_ap_unheard"][2.0] > pooled["cv_macro_ap_unheard"][1.0]
    chosen = cross_fit(x, y, known, files, 4, (1.0, 2.0), fit_one_feature, ["a", "b"], unheard=unheard,
                       choose_on="unheard")
    assert chosen["c"] == 2.0 and chosen["chosen_on"] == "unheard"
    assert np.allclose(chosen["weights"][:, :, 1], 5.0)  # the fold heads kept are the chosen C's
    with pytest.raises(ValueError, match="needs their rows"):
        cross_fit(x, y, known, files, 4, (1.0,), fit_one_feature, ["a", "b"], choose_on="unheard")


def test_linear_head_chosen_on_the_validation_recordings_records_it(crossfit_run):
    import argparse

    from trainer.commands import linear_head as cmd

    run_dir, _, _ = crossfit_run
    out, choice = linear_head(run_dir, c_grid=(0.01, 1.0), folds=2, out_name="unheard.pt", choose_on="unheard")
    unheard = choice["cv_macro_ap_val_recordings"]
    assert choice["chosen_on"] == "unheard" and choice["c"] == max(unheard, key=unheard.get)
    ckpt = load_checkpoint(out)
    assert ckpt.raw[KEY]["c"] == choice["c"] and ckpt.raw["linear_head"]["chosen_on"] == "unheard"
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    with pytest.raises(SonotrapError, match="add --folds K"):
        cmd.run(p.parse_args([str(run_dir), "--choose-on", "val-recordings"]))
    with pytest.raises(SonotrapError, match="--c 0.0: give one or more L2 strengths above 0"):
        cmd.run(p.parse_args([str(run_dir), "--c", "0"]))
    assert p.parse_args([str(run_dir), "--c", "0.01", "0.03"]).c == [0.01, 0.03]
