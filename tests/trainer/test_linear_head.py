"""`sonotrap linear-head`: a logistic-regression fc on a frozen (distilled) backbone, as a normal checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from edge.errors import SonotrapError  # noqa: E402
from edge.inference.frontend import FrontendConfig  # noqa: E402
from trainer.bundle_builder import BundleInfo  # noqa: E402
from trainer.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint  # noqa: E402
from trainer.dataset import AugmentConfig  # noqa: E402
from trainer.linear_head import fit_head, fold_standardisation, linear_head  # noqa: E402
from trainer.model import build_model  # noqa: E402
from trainer.prepare import DataSpec  # noqa: E402
from trainer.rundata import load_split_arrays  # noqa: E402
from trainer.train import TrainArgs, train  # noqa: E402

SMALL = FrontendConfig(n_mels=32, n_frames=32, hop_length=2000)


def test_folded_standardisation_gives_the_same_logits():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (50, 6))
    mean, scale = x.mean(0), x.std(0)
    coef, intercept = rng.normal(size=(2, 6)), rng.normal(size=2)
    w, b = fold_standardisation(coef, intercept, mean, scale)
    np.testing.assert_allclose(x @ w.T + b, ((x - mean) / scale) @ coef.T + intercept, atol=1e-9)


def test_fit_head_matches_sklearn_and_silences_labels_without_positives():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 5)) + 10.0
    y = np.stack([x[:, 0] > 10.0, np.zeros(80, bool)], axis=1).astype(np.float32)
    known = np.ones_like(y, dtype=bool)
    w, b = fit_head(x, y, known, c=0.1)
    scaler = StandardScaler().fit(x)
    ref = LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000, random_state=0)
    ref.fit(scaler.transform(x), y[:, 0] > 0.5)
    p = 1 / (1 + np.exp(-(x @ w.T + b)))
    np.testing.assert_allclose(p[:, 0], ref.predict_proba(scaler.transform(x))[:, 1], atol=1e-6)
    assert p[:, 1].max() < 1e-4  # never fires


def test_linear_head_on_a_run_writes_an_ordinary_checkpoint(data_dir, tmp_path):
    run = tmp_path / "run"
    torch.set_num_threads(2)
    train(TrainArgs(out=str(run), epochs=1, batch_size=8, weights="none", workers=0, progress=False, seed=3,
                    augment=AugmentConfig(enabled=False)), DataSpec(data=str(data_dir), seed=3), SMALL)
    with pytest.raises(SonotrapError, match="backbone.pt does not exist; train with --teacher"):
        linear_head(run)
    torch.manual_seed(5)
    backbone = build_model(1, "none")
    backbone.fc = torch.nn.Identity()
    (run / "distill").mkdir()
    save_checkpoint(backbone.state_dict(), run / "distill" / "backbone.pt")

    out, choice = linear_head(run, c_grid=(0.01, 1.0))
    assert choice["c"] == max(choice["val_macro_ap"], key=choice["val_macro_ap"].get)
    ckpt = load_checkpoint(out)
    assert ckpt.labels == ["high", "low"] and ckpt.raw["linear_head"]["c"] == choice["c"]
    assert "optimizer" not in ckpt.raw and set(ckpt.thresholds) == {"high", "low"}
    assert {"val", "test"} <= set(ckpt.raw["metrics"])  # finalised like best.pt
    model = model_from_checkpoint(ckpt).eval()
    # The backbone is the given one, untouched: only fc was fitted.
    state = model.state_dict()
    for k, v in backbone.state_dict().items():
        assert torch.equal(state[k], v), k
    # fc reproduces the regression on the backbone's features.
    val = load_split_arrays(run, "val")
    with torch.no_grad():
        feats = backbone.eval()(torch.from_numpy(val.images)).double().numpy()
        logits = model(torch.from_numpy(val.images)).double().numpy()
    w, b = ckpt.state_dict["fc.weight"].double().numpy(), ckpt.state_dict["fc.bias"].double().numpy()
    np.testing.assert_allclose(logits, feats @ w.T + b, atol=1e-3)

    # The bundle names the backbone that is in it and how it was distilled, not the template run's init.
    (run / "distill" / "summary.json").write_text('{"teacher": "birdnet", "mixed_windows": 12}')
    out, _ = linear_head(run, c_grid=(0.01,), out_name="again.pt")
    prov = BundleInfo.from_checkpoint(load_checkpoint(out)).provenance
    assert prov["init_weights"] == str(run / "distill" / "backbone.pt")
    assert prov["linear_head"]["stage1"] == {"teacher": "birdnet", "mixed_windows": 12}
    # the template run had no teacher; the backbone's stage 1 did, and its licence is recorded
    assert prov["teacher"]["licence"] == "CC BY-NC-SA 4.0"
    assert prov["linear_head"]["c"] == 0.01 and "training_args_note" in prov
