"""The hop gates: blank windows never reach the model; the activity gate tracks the noise floor."""

from __future__ import annotations

import numpy as np
import pytest

from edge.config import GateConfig, load_config
from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig, analyse, compute, level_db
from edge.inference.gate import ACTIVE, INACTIVE, QUIET, Gate, band_levels, noise_estimate

SR = 32000
FE = FrontendConfig()
HOP_S = 0.5


def white(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 10 ** (dbfs / 20)).astype(np.float32)


def chirp(seconds: float, peak: float, f0: float = 3000.0, f1: float = 6000.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (peak * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / seconds / 2) * t) * np.hanning(t.size)).astype(np.float32)


def verdicts(gate: Gate, stream: np.ndarray) -> list[str]:
    """The gate's verdict for every full 2-s window of ``stream`` at hops of 0.5 s."""
    hop, win = int(HOP_S * SR), int(FE.window_s * SR)
    return [gate.decide(analyse(stream[end - win: end], SR, FE)) for end in range(win, stream.size + 1, hop)]


@pytest.mark.parametrize("audio", [
    np.zeros(2 * SR, np.float32),
    np.full(2 * SR, 0.4, np.float32),  # DC offset
    np.full(2 * SR, -0.02, np.float32) + white(2, -130),
    white(2, -125),
])
def test_blank_windows_are_quiet_and_their_image_is_blank(audio):
    gate = Gate(GateConfig(), FE, HOP_S)
    mel = analyse(audio, SR, FE)
    assert level_db(mel, FE) < FE.floor_db
    assert gate.decide(mel) == QUIET and gate.stats.quiet == 1
    blank = compute(np.zeros(2 * SR, np.float32), SR, FE)
    np.testing.assert_array_equal(compute(audio, SR, FE), blank)


def test_a_call_at_minus_80_dbfs_is_above_the_floor_and_keeps_gain_invariance():
    call = chirp(2.0, 1e-4) + white(2, -115)  # 1% full scale, then -40 dB
    mel = analyse(call, SR, FE)
    assert level_db(mel, FE) > FE.floor_db + 10
    assert Gate(GateConfig(), FE, HOP_S).decide(mel) == ACTIVE
    np.testing.assert_allclose(compute(call, SR, FE), compute(call * 1000, SR, FE), atol=1e-4)


def test_band_levels_shape_and_floor():
    levels = band_levels(analyse(np.zeros(2 * SR, np.float32), SR, FE), FE, bands=16, smooth_frames=3)
    assert levels.shape == (16, FE.n_frames - 2)
    assert np.all(levels < -250)  # digital silence: far below anything a call could sit on
    est = noise_estimate(band_levels(analyse(white(2, -60), SR, FE), FE, 16, 3), 0.2)
    assert np.all(np.abs(est - (-61.0)) < 3.0)  # white noise reads its RMS in every band


@pytest.mark.parametrize("dbfs", [-90.0, -60.0, -30.0])
def test_stationary_noise_is_mostly_inactive_with_the_defaults(dbfs):
    gate = Gate(GateConfig(activity=True), FE, HOP_S)
    v = verdicts(gate, white(30, dbfs, seed=int(-dbfs)))
    assert v.count(INACTIVE) >= 0.9 * len(v)


def test_the_noise_floor_tracks_level_changes():
    # Wider pooling than the defaults: white noise never crosses 6 dB, so every verdict is exact.
    gate = Gate(GateConfig(activity=True, hold_s=0.0, bands=8, smooth_s=0.1), FE, HOP_S)
    v = verdicts(gate, white(10, -60, seed=1))
    assert v.count(INACTIVE) == len(v)
    floor_60 = gate.floor.copy()
    # The noise gets 10 dB louder: active at first, then the floor catches up (1 dB/s here).
    v = verdicts(gate, np.concatenate([white(2, -60, seed=2), white(30, -50, seed=3)]))
    assert v[1] == ACTIVE and v[-10:] == [INACTIVE] * 10
    assert np.all(gate.floor > floor_60 + 8)
    # Quieter again: the floor follows down at once, nothing is active.
    v = verdicts(gate, white(6, -70, seed=4))
    assert v[1:] == [INACTIVE] * (len(v) - 1)
    assert np.all(gate.floor < floor_60 - 8)


def test_a_call_after_a_long_silence_passes_and_is_held():
    gate = Gate(GateConfig(activity=True, hold_s=1.0), FE, HOP_S)
    silence = np.zeros(60 * SR, np.float32)
    assert set(verdicts(gate, silence)) == {QUIET}
    stream = np.concatenate([np.zeros(2 * SR, np.float32), chirp(0.4, 3e-5), white(4, -110, seed=5)])
    v = verdicts(gate, stream)
    assert ACTIVE in v
    first = v.index(ACTIVE)
    assert v[first: first + 3] == [ACTIVE] * 3  # two more hops held after the call's last window


def test_a_call_in_steady_noise_passes():
    gate = Gate(GateConfig(activity=True), FE, HOP_S)
    noise = white(40, -70, seed=6)
    call = np.zeros_like(noise)
    call[30 * SR: 30 * SR + int(0.3 * SR)] = chirp(0.3, 10 ** (-50 / 20))
    v = verdicts(gate, noise + call)
    assert v[:50].count(ACTIVE) <= 2
    # windows ending at 30.5 .. 32.0 s hold the call
    assert all(v[k] == ACTIVE for k in range(57, 61))


def test_gate_settings_are_validated():
    with pytest.raises(SonotrapError, match="gate.threshold_db"):
        load_config(None, ["gate.threshold_db=0"])
    with pytest.raises(SonotrapError, match="gate.floor_quantile"):
        load_config(None, ["gate.floor_quantile=1.5"])
    assert load_config(None, ["gate.activity=true"]).gate.activity is True


def test_frontend_floor_is_validated():
    with pytest.raises(SonotrapError, match="floor_db"):
        FrontendConfig(floor_db=10.0)
