"""The teacher cache: which windows, the 3-s input mapping, resumable parts (no BirdNET needed)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.errors import SonotrapError
from tests.support.fake_teacher import FakeTeacher
from trainer.birdnet import SAMPLE_RATE, WINDOW_SAMPLES, teacher_input
from trainer.teacher_cache import UNLABELED, compute_cache, load_cache, unlabeled_windows


def _unlabeled(root: Path, durations: list[float]) -> Path:
    (root / "audio").mkdir(parents=True)
    rng = np.random.default_rng(1)
    with (root / "files.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "duration_s", "sample_rate"])
        for i, d in enumerate(durations):
            name = f"audio/u{i}.flac"
            sf.write(root / name, (0.001 * rng.standard_normal(int(d * 44100))).astype(np.float32), 44100)
            w.writerow([name, f"{d:.6f}", 44100])
    return root


def test_unlabeled_windows_every_second_and_one_for_short_files(tmp_path):
    folder = _unlabeled(tmp_path / "u", [1.5, 4.0, 5.0039])
    starts: dict[str, list[float]] = {}
    for w in unlabeled_windows(folder):
        starts.setdefault(w.file, []).append(w.start_s)
    assert starts == {"audio/u0.flac": [0.0], "audio/u1.flac": [0.0, 1.0, 2.0],
                      "audio/u2.flac": [0.0, 1.0, 2.0, 3.0]}


def test_teacher_input_centres_the_window_in_three_seconds_zero_padded():
    audio = np.arange(1, 4 * SAMPLE_RATE + 1, dtype=np.float32)  # 4 s, no zero inside
    x = teacher_input(audio, 1.0)  # [1, 3) -> [0.5, 3.5): fully inside
    assert x.shape == (WINDOW_SAMPLES,)
    assert x[0] == audio[SAMPLE_RATE // 2] and x[-1] == audio[int(3.5 * SAMPLE_RATE) - 1]
    first = teacher_input(audio, 0.0)  # [-0.5, 2.5): half a second of zeros before the file
    assert (first[: SAMPLE_RATE // 2] == 0).all() and first[SAMPLE_RATE // 2] == audio[0]
    last = teacher_input(audio, 2.0)  # [1.5, 4.5): half a second of zeros after it
    assert (last[-SAMPLE_RATE // 2:] == 0).all() and last[-SAMPLE_RATE // 2 - 1] == audio[-1]


def test_cache_resumes_and_computes_each_window_once(tmp_path):
    folder = _unlabeled(tmp_path / "u", [3.0, 4.0, 2.5, 5.0])
    windows = unlabeled_windows(folder)
    roots = {UNLABELED: folder}
    fresh = FakeTeacher()
    reference = compute_cache(tmp_path / "a", windows, roots, batch=3, model=fresh)
    assert fresh.windows == len(windows) == len(reference.keys)

    first, second = FakeTeacher(), FakeTeacher()
    compute_cache(tmp_path / "b", windows[:5], roots, batch=3, model=first)  # "interrupted" after 5
    cache = compute_cache(tmp_path / "b", windows + windows[:2], roots, batch=3, model=second)
    assert (first.windows, second.windows) == (5, len(windows) - 5)
    rows, ref_rows = cache.rows(windows), reference.rows(windows)
    np.testing.assert_allclose(cache.embeddings[rows], reference.embeddings[ref_rows], rtol=1e-6)
    assert len(load_cache(tmp_path / "b").keys) == len(windows)
    # Windows of different audio get different teacher outputs.
    assert not np.allclose(cache.embeddings[rows[0]], cache.embeddings[rows[3]])


class _Recording(FakeTeacher):
    """Keeps every input it was given, by row."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[np.ndarray] = []

    def run(self, audio: np.ndarray):
        self.inputs.extend(audio.copy())
        return super().run(audio)


def test_mixed_windows_pair_two_recordings_and_the_teacher_hears_the_sum(tmp_path):
    from trainer.birdnet import resample_to_48k
    from trainer.teacher_cache import mixed_windows

    folder = _unlabeled(tmp_path / "u", [3.0, 4.0, 2.5])
    pool = unlabeled_windows(folder)
    mixes = mixed_windows(pool, 20, seed=4)
    assert len(mixes) == 20 and mixes == mixed_windows(pool, 20, seed=4)  # seeded
    assert mixes != mixed_windows(pool, 20, seed=5)
    assert all(m.partner is not None and m.partner.file != m.file for m in mixes)
    assert all(10 ** (-12 / 20) - 1e-4 <= m.partner_gain <= 1.0 for m in mixes)
    assert len({m.key for m in mixes} | {w.key for w in pool}) == len(set(mixes)) + len(pool)
    with pytest.raises(SonotrapError, match="two recordings"):
        mixed_windows([w for w in pool if w.file == pool[0].file], 3)

    teacher = _Recording()
    cache = compute_cache(tmp_path / "run", pool + mixes, {UNLABELED: folder}, batch=4, model=teacher)
    assert teacher.windows == len(pool) + len(set(mixes))
    m = mixes[0]
    a = resample_to_48k(sf.read(folder / m.file, dtype="float32")[0], 44100)
    b = resample_to_48k(sf.read(folder / m.partner.file, dtype="float32")[0], 44100)
    expected = teacher_input(a, m.start_s) + np.float32(m.partner_gain) * teacher_input(b, m.partner.start_s)
    heard = min(teacher.inputs, key=lambda x: float(np.abs(x - expected).max()))
    np.testing.assert_allclose(heard, expected, atol=1e-7)
    # The cached output of the mix is the teacher's output on that sum, not on either part.
    np.testing.assert_allclose(cache.embeddings[cache.rows([m])[0]],
                               FakeTeacher().run(expected[None]).embeddings[0], rtol=1e-5)
    assert not np.allclose(cache.embeddings[cache.rows([m])[0]], cache.embeddings[cache.rows([pool[0]])[0]])


def test_speed_windows_are_seeded_copies_heard_by_the_teacher_as_the_student_sees_them(tmp_path):
    from trainer.birdnet import resample_to_48k
    from trainer.rundata import speed_change
    from trainer.teacher_cache import SPEED_SHIFT, speed_windows

    folder = _unlabeled(tmp_path / "u", [3.0, 4.0, 5.0])
    copies = speed_windows(folder, 2, seed=3)
    assert copies == speed_windows(folder, 2, seed=3) and copies != speed_windows(folder, 2, seed=4)
    rates = sorted({(w.file, w.rate) for w in copies})
    assert len(rates) == 6  # two copies of each of the three recordings
    lo, hi = SPEED_SHIFT
    assert all(lo - 0.01 <= abs(np.log(r)) <= hi + 0.01 for _, r in rates)
    # each copy is cut into 2-s windows every second along its own (changed) length
    for file, rate in rates:
        duration = {"audio/u0.flac": 3.0, "audio/u1.flac": 4.0, "audio/u2.flac": 5.0}[file]
        starts = [w.start_s for w in copies if (w.file, w.rate) == (file, rate)]
        assert starts == [float(i) for i in range(int(np.floor(duration / rate - 2.0 + 1e-9)) + 1)]
    plain = unlabeled_windows(folder)
    assert len({w.key for w in copies} | {w.key for w in plain}) == len(copies) + len(plain)

    teacher = _Recording()
    cache = compute_cache(tmp_path / "run", plain + copies, {UNLABELED: folder}, batch=4, model=teacher)
    w = copies[-1]
    x = sf.read(folder / w.file, dtype="float32")[0]
    expected = teacher_input(resample_to_48k(speed_change(x, w.rate), 44100), w.start_s)
    heard = min(teacher.inputs, key=lambda y: float(np.abs(y - expected).max()))
    np.testing.assert_allclose(heard, expected, atol=1e-6)
    np.testing.assert_allclose(cache.embeddings[cache.rows([w])[0]],
                               FakeTeacher().run(expected[None]).embeddings[0], rtol=1e-5)


def test_speed_change_scales_pitch_and_length_and_the_cache_keeps_both_versions(tmp_path):
    from trainer.rundata import AudioCache, speed_change

    sr = 44100
    tone = np.sin(2 * np.pi * 1000 * np.arange(2 * sr) / sr).astype(np.float32)
    fast = speed_change(tone, 10 / 9)
    assert len(fast) == pytest.approx(len(tone) * 9 / 10, abs=1)
    peak = np.fft.rfftfreq(len(fast), 1 / sr)[np.argmax(np.abs(np.fft.rfft(fast)))]
    assert peak == pytest.approx(1000 * 10 / 9, abs=2)
    np.testing.assert_array_equal(speed_change(tone, 1.0), tone)
    with pytest.raises(SonotrapError, match="near 1"):
        speed_change(tone, 3.0)

    sf.write(tmp_path / "t.wav", tone, sr)
    cache = AudioCache()
    assert len(cache.get(tmp_path / "t.wav", 0.9)[0]) == pytest.approx(len(tone) / 0.9, abs=1)
    assert len(cache.get(tmp_path / "t.wav")[0]) == len(tone)  # the recording itself is unchanged


def test_tilted_windows_are_seeded_copies_heard_by_the_teacher_as_the_student_sees_them(tmp_path):
    from edge.inference.frontend import FrontendConfig, compute
    from trainer.birdnet import resample_to_48k
    from trainer.rundata import AudioCache, cut, spectral_tilt, window_image
    from trainer.teacher_cache import TILT_RANGE, speed_windows, tilted_windows

    folder = _unlabeled(tmp_path / "u", [3.0, 4.0, 5.0])
    copies = tilted_windows(folder, 2, seed=3)
    assert copies == tilted_windows(folder, 2, seed=3) and copies != tilted_windows(folder, 2, seed=4)
    tilts = sorted({(w.file, w.tilt) for w in copies})
    assert len(tilts) == 6 and all(TILT_RANGE[0] <= abs(t) <= TILT_RANGE[1] for _, t in tilts)
    assert {t > 0 for _, t in tilts} == {True, False}  # both ways
    assert all(w.rate == 1.0 for w in copies)  # the length is kept: windows where the recording's are
    assert [w.start_s for w in copies if w.file == "audio/u1.flac"] == [0.0, 1.0, 2.0] * 2
    plain, speed = unlabeled_windows(folder), speed_windows(folder, 2, seed=3)
    keys = {w.key for w in copies} | {w.key for w in plain} | {w.key for w in speed}
    assert len(keys) == len(copies) + len(plain) + len(speed)  # a copy never reuses another window's cache row

    teacher = _Recording()
    cache = compute_cache(tmp_path / "run", plain + copies, {UNLABELED: folder}, batch=4, model=teacher)
    w = copies[-1]
    x = sf.read(folder / w.file, dtype="float32")[0]
    tilted = spectral_tilt(x, 44100, w.tilt)
    expected = teacher_input(resample_to_48k(tilted, 44100), w.start_s)
    heard = min(teacher.inputs, key=lambda y: float(np.abs(y - expected).max()))
    np.testing.assert_allclose(heard, expected, atol=1e-6)
    np.testing.assert_allclose(cache.embeddings[cache.rows([w])[0]],
                               FakeTeacher().run(expected[None]).embeddings[0], rtol=1e-5)
    original = next(p for p in plain if (p.file, p.start_s) == (w.file, w.start_s))
    assert not np.allclose(cache.embeddings[cache.rows([w])[0]], cache.embeddings[cache.rows([original])[0]])
    # The student's image of the copy is the frontend on the same tilted audio.
    cfg = FrontendConfig()
    np.testing.assert_allclose(window_image(AudioCache(), folder / w.file, w.start_s, 2.0, cfg, tilt=w.tilt),
                               compute(cut(tilted, 44100, w.start_s, 2.0), 44100, cfg), atol=1e-5)


def test_spectral_tilt_shapes_the_spectrum_keeps_the_pivot_and_the_cache_keeps_each_version(tmp_path):
    from trainer.rundata import TILT_LIMIT_DB, TILT_PIVOT_HZ, AudioCache, spectral_tilt

    sr = 32000
    t = np.arange(2 * sr) / sr
    tones = {f: np.sin(2 * np.pi * f * t) for f in (500.0, TILT_PIVOT_HZ, 8000.0)}
    mix = sum(tones.values()).astype(np.float32)

    def level(audio, f):  # amplitude of the tone at f (each tone sits on an FFT bin)
        spec = np.abs(np.fft.rfft(audio)) / (len(audio) / 2)
        return spec[int(round(f * len(audio) / sr))]

    up = spectral_tilt(mix, sr, 3.0)
    assert level(up, TILT_PIVOT_HZ) == pytest.approx(1.0, abs=1e-3)
    assert 20 * np.log10(level(up, 8000.0)) == pytest.approx(6.0, abs=0.05)  # two octaves above: +6 dB
    assert 20 * np.log10(level(up, 500.0)) == pytest.approx(-6.0, abs=0.05)  # two octaves below: -6 dB
    down = spectral_tilt(mix, sr, -12.0)
    assert 20 * np.log10(level(down, 8000.0)) == pytest.approx(-TILT_LIMIT_DB, abs=0.05)  # capped
    assert up.dtype == np.float32 and up.shape == mix.shape
    np.testing.assert_array_equal(spectral_tilt(mix, sr, 0.0), mix)
    with pytest.raises(SonotrapError, match="smaller tilt"):
        spectral_tilt(mix, sr, 20.0)

    quiet = 0.25 * mix  # a WAV file clips at full scale
    sf.write(tmp_path / "t.wav", quiet, sr, subtype="FLOAT")
    cache = AudioCache()
    np.testing.assert_allclose(cache.get(tmp_path / "t.wav", tilt=3.0)[0], 0.25 * up, atol=1e-5)
    np.testing.assert_allclose(cache.get(tmp_path / "t.wav")[0], quiet, atol=1e-6)  # the recording itself is unchanged
    fast_tilted = cache.get(tmp_path / "t.wav", 0.9, 3.0)[0]  # speed change first, then the tilt
    assert len(fast_tilted) == pytest.approx(len(mix) / 0.9, abs=1)
