import numpy as np
import pytest

from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig, compute, mel_filterbank
from tests.support.tiny_model import tone


def test_shape_dtype_and_range(frontend_cfg):
    img = compute(tone(1200, 2.0, 32000), 32000, frontend_cfg)
    assert img.shape == (3, 128, 128)
    assert img.dtype == np.float32
    unit = img[0] * 0.229 + 0.485
    assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5


def test_gain_invariant(frontend_cfg):
    quiet = tone(1200, 2.0, 32000, amplitude=0.002, noise=0.0002)
    loud = quiet * 300.0
    np.testing.assert_allclose(compute(quiet, 32000, frontend_cfg), compute(loud, 32000, frontend_cfg), atol=1e-4)


def test_tone_lands_in_the_right_mel_row(frontend_cfg):
    img = compute(tone(4000, 2.0, 44100, noise=0.0), 44100, frontend_cfg)
    row = int(img[0].mean(axis=1).argmax())
    centres = np.linspace(0, 1, frontend_cfg.n_mels)  # rows ordered low -> high
    assert 0.3 < centres[row] < 0.8
    img_low = compute(tone(500, 2.0, 44100, noise=0.0), 44100, frontend_cfg)
    assert int(img_low[0].mean(axis=1).argmax()) < row


def test_resampling_and_stereo_give_the_same_image(frontend_cfg):
    mono32 = tone(2000, 2.0, 32000, noise=0.0)
    mono48 = tone(2000, 2.0, 48000, noise=0.0)
    a = compute(mono32, 32000, frontend_cfg)
    b = compute(np.stack([mono48, mono48], axis=1), 48000, frontend_cfg)
    # the same sound at two rates: nearly the same image (resampling filter differs slightly)
    assert np.abs(a - b).mean() < 0.05


def test_silence_and_int16_are_handled(frontend_cfg):
    assert np.all(np.isfinite(compute(np.zeros(64000, np.float32), 32000, frontend_cfg)))
    pcm = (tone(1000, 2.0, 16000) * 32767).astype(np.int16)
    assert np.all(np.isfinite(compute(pcm, 16000, frontend_cfg)))


def test_filterbank_rows_are_never_empty():
    fb = mel_filterbank(FrontendConfig(n_mels=128, fmin=0, fmax=16000))
    assert np.all(fb.sum(axis=1) > 0.99)


def test_config_roundtrip_and_rejection():
    cfg = FrontendConfig(n_mels=64)
    assert FrontendConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(SonotrapError, match="unknown"):
        FrontendConfig.from_dict({**cfg.to_dict(), "pcen": True})
    with pytest.raises(SonotrapError, match="fmax"):
        FrontendConfig(fmax=40000)
    with pytest.raises(SonotrapError, match="version"):
        FrontendConfig(version=99)


def test_resampler_equals_scipy_resample_poly():
    """The numpy polyphase resampler reproduces scipy.signal.resample_poly (which the edge does not import)."""
    from math import gcd

    from edge.inference.frontend import resample

    resample_poly = pytest.importorskip("scipy.signal").resample_poly  # the trainer extra has scipy

    rng = np.random.default_rng(1)
    for src, dst, n in [(44100, 32000, 88200), (48000, 32000, 96001), (22050, 32000, 44100), (8000, 32000, 7),
                        (96000, 32000, 192000), (32000, 16000, 64001), (44100, 48000, 1)]:
        x = (0.01 * rng.standard_normal(n)).astype(np.float32)
        g = gcd(src, dst)
        want = resample_poly(x, dst // g, src // g)
        got = resample(x, src, dst)
        assert got.dtype == np.float32 and got.shape == want.shape, (src, dst, n)
        np.testing.assert_allclose(got, want, atol=1e-7, rtol=0)


def test_edge_never_imports_scipy_or_torch():
    import subprocess
    import sys

    code = ("import sys, edge.cli, edge.service.daemon, edge.inference.frontend, edge.models.bundle, edge.mqtt.publisher; "
            "print(sorted(m for m in ('scipy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
