"""The user's view for checkpoints: `evaluate --checkpoint` and the bundle `quantize` builds.

A random-init ResNet50 on a prepared (untrained) run at 32x32 input keeps this fast: the
figures are meaningless, the plumbing is what is checked (same recordings, same calls,
operating points chosen on validation and written into the manifest).
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from edge.inference.frontend import FrontendConfig  # noqa: E402
from edge.models.bundle import load_bundle  # noqa: E402
from tests.trainer.test_export import write_checkpoint  # noqa: E402
from trainer.model import build_model  # noqa: E402
from trainer.prepare import DataSpec, prepare_run  # noqa: E402
from trainer.rundata import load_run_data  # noqa: E402
from trainer.split import read_split  # noqa: E402

SMALL = FrontendConfig(n_mels=32, n_frames=32, hop_length=2000)


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uv") / "run"
    prepared = prepare_run(DataSpec(data=str(data_dir), seed=3), SMALL, out)
    torch.manual_seed(0)
    ckpt = write_checkpoint(out / "best.pt", build_model(len(prepared.run.labels), "none").eval(),
                            prepared.run.labels, frontend=SMALL.to_dict())
    return out, ckpt


def _test_calls(run_dir):
    run = load_run_data(run_dir)
    files = set(read_split(run_dir / "split.json")["test"])
    return files, [a for a in run.annotations if a.file in files and a.present]


def test_evaluate_checkpoint_reports_the_user_view(run, tmp_path):
    from trainer.evaluate import evaluate_checkpoint

    run_dir, ckpt = run
    report = evaluate_checkpoint(ckpt, "test", tmp_path / "rep", write_thresholds=False)
    v = report["user_view"]
    files, calls = _test_calls(run_dir)
    assert v["split"] == "test" and v["recordings"] == len(files) and v["event"]["calls"] == len(calls)
    assert {"event", "presence", "window", "false_alarms", "headline"} <= set(v)
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())["user_view"]
    assert saved["event"]["calls"] == len(calls)
    # Its operating points came from validation and live in the FP32 bundle it scored.
    b = load_bundle(tmp_path / "rep" / "edge" / "fp32-bundle")
    assert b.manifest.metrics["operating_points"]["labels"] == 2
    assert v["enabled_labels"] == len(b.enabled_labels)


def test_quantized_bundle_carries_operating_points_and_test_figures(run, tmp_path, monkeypatch):
    monkeypatch.setenv("SONOTRAP_CACHE_DIR", str(tmp_path / "cache"))
    from trainer.bundle_builder import bundle_from_checkpoint
    from trainer.quantize import QuantSettings

    run_dir, ckpt = run
    out, metrics = bundle_from_checkpoint(ckpt, tmp_path / "bundle", settings=QuantSettings(calibration_windows=8),
                                          max_ap_drop=1.0, archive=tmp_path / "b.tar.gz")
    m = json.loads((out / "manifest.json").read_text())
    assert m["metrics"]["operating_points"]["target_precision"] == 0.9
    uv = m["metrics"]["user_view"]
    assert uv["split"] == "test" and {"event_precision", "event_recall", "false_detections_per_hour"} <= set(uv)
    for lab in m["labels"]:
        assert isinstance(lab["enabled"], bool) and (lab["enabled"] or lab["disabled_reason"])
    assert metrics["user_view"]["split"] == "test"
    # The archive was rewritten after the manifest changed: it loads with the same flags.
    assert [lab.enabled for lab in load_bundle(tmp_path / "b.tar.gz").manifest.labels] == [
        lab["enabled"] for lab in m["labels"]]


def test_quantized_bundle_carries_its_validation_windows_as_reference_audio(run, tmp_path, monkeypatch):
    """The builder stores the picked validation windows' audio and the edge path's outputs on it."""
    monkeypatch.setenv("SONOTRAP_CACHE_DIR", str(tmp_path / "cache"))
    import numpy as np
    import soundfile as sf

    from edge.inference.frontend import compute_batch
    from edge.models.reference_audio import AUDIO_FILE
    from edge.models.selftest import create_session
    from edge.models.signing import sign_bundle
    from edge.models.verify import verify_in_subprocess
    from edge.util.hashing import sha256_file
    from tests.support.update_server import make_keys
    from trainer.bundle_builder import bundle_from_checkpoint
    from trainer.quantize import QuantSettings

    run_dir, ckpt = run
    out, _ = bundle_from_checkpoint(ckpt, tmp_path / "bundle", settings=QuantSettings(calibration_windows=8),
                                    max_ap_drop=1.0, operating_points=False)
    m = json.loads((out / "manifest.json").read_text())
    entry, audio = m["reference"]["audio"], out / AUDIO_FILE
    assert m["files"][AUDIO_FILE] == {"size": audio.stat().st_size, "sha256": sha256_file(audio)}
    val_files = {p.rsplit("/", 1)[-1] for p in read_split(run_dir / "split.json")["val"]}
    named = [s.split("@")[0] for s in entry["source"].removeprefix("validation windows: ").split(", ")]
    assert len(named) == entry["windows"] == 2 and set(named) <= val_files, entry["source"]
    samples, sr = sf.read(str(audio), dtype="float32")
    assert sr == SMALL.sample_rate and len(samples) == 2 * SMALL.window_samples and np.abs(samples).max() > 0
    # the expected outputs are the edge frontend + onnxruntime on exactly these samples
    images = compute_batch(list(samples.reshape(2, -1)), sr, SMALL)
    got = create_session(out / "model.onnx").run(None, {"input": images})[0]
    assert np.allclose(got, entry["output"], atol=1e-5)
    keys = make_keys(tmp_path / "keys")
    sign_bundle(out, keys.private)
    assert verify_in_subprocess(out, trusted_keys=keys.public_dir, allow_unsigned=False).labels == [lab["code"] for lab in m["labels"]]


def test_quantized_bundle_can_carry_synthetic_reference_audio_instead_of_recordings(run, tmp_path, monkeypatch):
    """For data that may not be passed on: no recorded sample leaves the run, the self-test stays."""
    monkeypatch.setenv("SONOTRAP_CACHE_DIR", str(tmp_path / "cache"))
    import numpy as np
    import soundfile as sf

    from edge.errors import SonotrapError
    from edge.models.reference_audio import AUDIO_FILE
    from edge.models.selftest import default_reference_audio
    from trainer.bundle_builder import bundle_from_checkpoint
    from trainer.quantize import QuantSettings

    _, ckpt = run
    out, _ = bundle_from_checkpoint(ckpt, tmp_path / "bundle", settings=QuantSettings(calibration_windows=8),
                                    max_ap_drop=1.0, operating_points=False, reference_audio="synthetic")
    entry = json.loads((out / "manifest.json").read_text())["reference"]["audio"]
    assert entry["source"] == "synthetic" and entry["windows"] == 2
    samples, _ = sf.read(str(out / AUDIO_FILE), dtype="float32")
    want = np.concatenate(default_reference_audio(SMALL))
    assert np.abs(samples - want).max() < 1e-4  # the generated windows, not a recording
    load_bundle(out)  # its self-test re-runs frontend and model on those windows
    with pytest.raises(SonotrapError, match="'recorded' is not one of validation, synthetic"):
        bundle_from_checkpoint(ckpt, tmp_path / "b2", reference_audio="recorded")
