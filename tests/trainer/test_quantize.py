"""INT8 quantization: calibrated on real frontend windows, verified FP32 vs INT8, bound enforced both ways."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from edge.errors import SonotrapError  # noqa: E402
from tests.support.synth_windows import make_windows, train_small_cnn  # noqa: E402
from trainer.export import export_onnx  # noqa: E402
from trainer.quantize import (  # noqa: E402
    QuantSettings,
    WindowSet,
    check_ap_drop,
    load_windows,
    quantize_and_verify,
)


def _ws(images, targets, labels, source):
    return WindowSet(images, targets, np.ones_like(targets, dtype=bool), labels, source)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small BN/ReLU CNN trained on generated calls, exported to ONNX; train and val windows."""
    torch.set_num_threads(2)
    d = tmp_path_factory.mktemp("small")
    xt, yt, labels = make_windows(160, seed=1)
    xv, yv, _ = make_windows(100, seed=2)
    model = train_small_cnn(xt, yt, epochs=12)
    fp32 = export_onnx(model, d / "fp32.onnx")
    return d, fp32, _ws(xt, yt, labels, "train"), _ws(xv, yv, labels, "val")


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_quantization_within_bound(small, method):
    d, fp32, train, val = small
    out = d / f"int8_{method}.onnx"
    report = quantize_and_verify(fp32, out, train, val, QuantSettings(method=method, calibration_windows=64))
    print(method, report.summary())
    assert report.macro_ap_fp32 > 0.6  # the model learned something, so AP is meaningful
    assert report.ap_drop <= 0.02 and report.top_label_agreement > 0.9
    assert set(report.per_class_drop) == {"low_whistle", "mid_trill", "high_sweep"}
    assert out.stat().st_size < fp32.stat().st_size / 2  # int8 weights (small model: overhead)
    import onnx

    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # QDQ format


def test_weights_use_7_bits_unless_full_range_is_asked_for(small):
    """8-bit weights saturate the 16-bit sums of x86 kernels without VNNI: bundles default to 7."""
    import onnx
    from onnx import numpy_helper

    d, fp32, train, val = small

    def widest(settings):
        out = d / f"range_{settings.reduce_range}.onnx"
        quantize_and_verify(fp32, out, train, val, settings, check=False)
        weights = [numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer]
        return max(int(np.abs(w.astype(int)).max()) for w in weights if w.dtype == np.int8)

    assert QuantSettings().reduce_range
    assert widest(QuantSettings(calibration_windows=32)) == 64
    assert widest(QuantSettings(calibration_windows=32, reduce_range=False)) == 127


def test_broken_calibration_on_silence_fails_loudly(small):
    d, fp32, _train, val = small
    xs, ys, labels = make_windows(32, silent=True)
    silent = _ws(xs, ys, labels, "silence")
    with pytest.raises(SonotrapError) as info:
        quantize_and_verify(fp32, d / "bad.onnx", silent, val, QuantSettings(calibration_windows=32))
    msg = str(info.value)
    print(msg)
    assert "INT8 model loses" in msg and "bound 0.02" in msg and "\n" not in msg


def test_bound_is_configurable(small):
    d, fp32, train, val = small
    report = quantize_and_verify(fp32, d / "q.onnx", train, val, QuantSettings(calibration_windows=32), check=False)
    check_ap_drop(report, bound=report.ap_drop + 1e-9)
    with pytest.raises(SonotrapError, match="INT8 model loses"):
        check_ap_drop(report, bound=report.ap_drop - 1e-3)


def test_settings_validation():
    with pytest.raises(SonotrapError, match="calibration method"):
        QuantSettings(method="kl")
    with pytest.raises(SonotrapError, match="at least 1 window"):
        QuantSettings(calibration_windows=0)


def test_window_file_errors(tmp_path):
    with pytest.raises(SonotrapError, match="does not exist"):
        load_windows(tmp_path / "x.npz", "train")
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 3, 128, 128), np.float32))
    with pytest.raises(SonotrapError, match="needs arrays"):
        load_windows(tmp_path / "bad.npz", "train")


def test_bundle_thresholds_are_floored_and_capped(tmp_path):
    """Near-zero best-F1 thresholds would report noise in the field: the bundle keeps them in [floor, 0.99]."""
    import json

    from edge.inference.frontend import FrontendConfig
    from tests.support.tiny_model import DEFAULT_BANDS, band_model_bytes
    from trainer.bundle_builder import BundleInfo, build_bundle

    cfg = FrontendConfig()
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(band_model_bytes(cfg, DEFAULT_BANDS))
    labels = list(DEFAULT_BANDS)
    info = BundleInfo("t", "1.0.0", labels, {c: c for c in labels}, cfg,
                      thresholds={labels[0]: 0.003, labels[1]: 0.9999})
    out = build_bundle(onnx_path, info, tmp_path / "b")
    assert json.loads((out / "manifest.json").read_text())["thresholds"] == {labels[0]: 0.1, labels[1]: 0.99}
    out = build_bundle(onnx_path, info, tmp_path / "c", min_threshold=0.01)
    assert json.loads((out / "manifest.json").read_text())["thresholds"][labels[0]] == 0.01


def test_bundle_without_recorded_windows_carries_synthetic_reference_audio(tmp_path):
    """An .npz validation source has no audio: the builder still stores reference audio (synthetic)."""
    import json

    from edge.inference.frontend import FrontendConfig
    from edge.models.reference_audio import AUDIO_FILE
    from tests.support.tiny_model import DEFAULT_BANDS, band_model_bytes
    from trainer.bundle_builder import BundleInfo, build_bundle

    cfg = FrontendConfig()
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(band_model_bytes(cfg, DEFAULT_BANDS))
    labels = list(DEFAULT_BANDS)
    out = build_bundle(onnx_path, BundleInfo("t", "1.0.0", labels, {c: c for c in labels}, cfg), tmp_path / "b")
    m = json.loads((out / "manifest.json").read_text())
    assert AUDIO_FILE in m["files"] and m["reference"]["audio"]["source"] == "synthetic"
