"""A run directory's data, without torch: audio windows -> frontend images + 3-state labels.

A run directory (written by ``sonotrap train``) holds ``dataset.json`` (data root, labels,
frontend, window settings, recordings), ``annotations.csv`` (the selected, merged
annotations), ``split.json`` and ``windows_<split>.csv``. From these any command rebuilds
exactly the training windows; :func:`load_split_arrays` turns a split into arrays through
``edge.inference.frontend.compute`` -- the same function the edge daemon calls -- with no
augmentation (used for calibration, FP32-vs-INT8 checks and evaluation).
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import OrderedDict, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig, compute, resample
from trainer.annotations import Annotation, Recording
from trainer.split import SPLITS
from trainer.windows import Window, WindowConfig, read_windows, to_arrays

DATASET_FORMAT = "sonotrap-dataset/1"
DATASET_FILE = "dataset.json"
ANNOTATIONS_FILE = "annotations.csv"
SPLIT_FILE = "split.json"


def windows_file(split: str) -> str:
    return f"windows_{split}.csv"


@dataclass
class WindowArrays:
    """Model inputs and 3-state labels of one split."""

    images: np.ndarray  # (N, 3, H, W) float32
    targets: np.ndarray  # (N, K) float32 0/1
    known: np.ndarray  # (N, K) bool
    labels: list[str]
    # where each window's audio is: (recording path, start_s, length_s); the bundle builder
    # stores some of it as the bundle's reference audio
    sources: list[tuple[Path, float, float]] | None = None


@dataclass
class RunData:
    """Everything in a run directory needed to rebuild its windows."""

    run_dir: Path
    root: Path
    labels: list[str]
    label_names: dict[str, str]
    frontend: FrontendConfig
    window: WindowConfig
    recordings: dict[str, Recording]
    annotations: list[Annotation]

    def path(self, file: str) -> Path:
        p = Path(file)
        return p if p.is_absolute() else self.root / p

    def annotations_by_file(self) -> dict[str, list[Annotation]]:
        out: dict[str, list[Annotation]] = defaultdict(list)
        for a in self.annotations:
            out[a.file].append(a)
        return out

    def windows(self, split: str) -> list[Window]:
        return read_windows(self.run_dir / windows_file(split))


def write_run_data(
    run_dir: Path, root: Path, labels: list[str], label_names: dict[str, str], frontend: FrontendConfig,
    window: WindowConfig, recordings: list[Recording], annotations: list[Annotation],
) -> None:
    data: dict[str, Any] = {
        "format": DATASET_FORMAT,
        "root": str(Path(root).resolve()),
        "labels": labels,
        "label_names": label_names,
        "frontend": frontend.to_dict(),
        "window": asdict(window),
        "recordings": {r.file: [r.duration_s, r.sample_rate, r.complete] for r in recordings},
    }
    (run_dir / DATASET_FILE).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    with (run_dir / ANNOTATIONS_FILE).open("w", newline="", encoding="utf-8") as fh:
        wr = csv.writer(fh)
        wr.writerow(("file", "start_s", "end_s", "label", "present"))
        for a in annotations:
            wr.writerow((a.file, f"{a.start_s:.6f}", f"{a.end_s:.6f}", a.label,
                         "" if a.present is None else int(a.present)))


def load_run_data(run_dir: str | Path, root: str | Path | None = None) -> RunData:
    """Read a run directory; ``root`` overrides the data root recorded at training time."""
    run_dir = Path(run_dir)
    if run_dir.is_file():  # a checkpoint path: its folder is the run directory
        run_dir = run_dir.parent
    path = run_dir / DATASET_FILE
    if not path.is_file():
        raise SonotrapError(f"{run_dir} is not a sonotrap run directory (no {DATASET_FILE}); "
                            "pass the --out folder of sonotrap train")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != DATASET_FORMAT:
        raise SonotrapError(f"{path} has format {data.get('format')!r}, expected {DATASET_FORMAT}; "
                            "upgrade sonotrap")
    anns = []
    with (run_dir / ANNOTATIONS_FILE).open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            present = None if r["present"] == "" else bool(int(r["present"]))
            anns.append(Annotation(r["file"], float(r["start_s"]), float(r["end_s"]), r["label"], present))
    root_path = Path(root) if root is not None else Path(data["root"])
    if not root_path.is_dir():
        raise SonotrapError(f"data root {root_path} of run {run_dir} does not exist; pass --data-root DIR")
    return RunData(
        run_dir=run_dir,
        root=root_path,
        labels=list(data["labels"]),
        label_names=dict(data["label_names"]),
        frontend=FrontendConfig.from_dict(data["frontend"]),
        window=WindowConfig(**data["window"]),
        recordings={f: Recording(f, float(v[0]), int(v[1]), bool(v[2])) for f, v in data["recordings"].items()},
        annotations=anns,
    )


def copy_run_data(src: Path, dst: Path) -> None:
    """The prepared data of run ``src`` (not its checkpoints) into ``dst``: same windows and split."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in (DATASET_FILE, ANNOTATIONS_FILE, SPLIT_FILE, *(windows_file(s) for s in SPLITS)):
        shutil.copy2(src / name, dst / name)


def variant_suffix(rate: float = 1.0, tilt: float = 0.0) -> str:
    """What names a changed copy of a recording (empty for the recording itself).

    The one spelling for both the decoded-audio cache and the teacher cache's keys, so a copy
    can never be cached under one name and looked up under another.
    """
    suffix = "" if rate == 1.0 else f"~x{rate:.4f}"
    return suffix if tilt == 0.0 else f"{suffix}~t{tilt:+.2f}"


class AudioCache:
    """Decoded recordings (native rate, float32, first channel layout kept), LRU by bytes."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[np.ndarray, int]] = OrderedDict()
        self._bytes = 0

    def get(self, path: Path, rate: float = 1.0, tilt: float = 0.0) -> tuple[np.ndarray, int]:
        """The recording at ``path``; with ``rate`` != 1 played that many times faster (:func:`speed_change`),
        then with ``tilt`` != 0 given that spectral tilt (:func:`spectral_tilt`)."""
        key = f"{path}{variant_suffix(rate, tilt)}"
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        if tilt != 0.0:
            base, sr = self.get(path, rate)
            audio = spectral_tilt(base, sr, tilt)
        elif rate != 1.0:
            base, sr = self.get(path)
            audio = speed_change(base, rate)
        else:
            try:
                audio, sr = sf.read(key, dtype="float32", always_2d=False)
            except Exception as err:
                raise SonotrapError(f"audio file {path} cannot be read ({str(err).splitlines()[0][:100]}); "
                                    "check the file") from None
            if audio.ndim == 2:
                audio = audio.mean(axis=1, dtype=np.float32)
        item = (np.ascontiguousarray(audio, dtype=np.float32), int(sr))
        if self.max_bytes > 0 and audio.nbytes <= self.max_bytes:
            self._items[key] = item
            self._bytes += audio.nbytes
            while self._bytes > self.max_bytes:
                _, (old, _) = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        return item


def speed_change(audio: np.ndarray, rate: float) -> np.ndarray:
    """``audio`` played ``rate`` times faster at the same sample rate: pitch and tempo both scale.

    Why: a copy of a recording a few per cent faster or slower is new audio for the student
    (calls shifted in pitch and length, as between individuals of a species), and the teacher
    is asked about that copy, so its answer stays consistent. ``rate`` is resampled as the
    nearest ratio of integers up to 1,000 (polyphase); the rates
    :func:`trainer.teacher_cache.speed_windows` draws already are such ratios, so that is exact.
    """
    from fractions import Fraction

    from scipy.signal import resample_poly  # trainer side: scipy is allowed here

    if not 0.5 <= rate <= 2.0:
        raise SonotrapError(f"speed change by {rate} is outside 0.5-2; pass a rate near 1")
    frac = Fraction(rate).limit_denominator(1000)
    if frac == 1:
        return np.asarray(audio, dtype=np.float32)
    return resample_poly(audio, frac.denominator, frac.numerator).astype(np.float32)


TILT_PIVOT_HZ = 2000.0  # a tilted copy keeps its level here
TILT_LIMIT_DB = 15.0  # and changes no band by more than this


def spectral_tilt(audio: np.ndarray, sr: int, db_per_octave: float) -> np.ndarray:
    """``audio`` through a filter whose gain rises ``db_per_octave`` per octave above ``TILT_PIVOT_HZ``.

    Why: recordings of the same call differ in timbre as much as in pitch: a bird 50 m away loses
    its high frequencies to the foliage and the air, another microphone or housing colours the
    sound. A tilted copy is new audio of that kind for the student, and the teacher is asked
    about the copy, so its answer stays consistent. Zero phase (one FFT of the whole
    recording); the gain is capped at +-``TILT_LIMIT_DB`` and flat below 50 Hz.
    """
    if not -12.0 <= db_per_octave <= 12.0:
        raise SonotrapError(f"spectral tilt {db_per_octave} dB/octave is outside +-12; pass a smaller tilt")
    x = np.asarray(audio, dtype=np.float32)
    if db_per_octave == 0.0 or x.shape[0] < 2:
        return x
    freqs = np.fft.rfftfreq(x.shape[0], 1.0 / sr)
    gain_db = np.clip(db_per_octave * np.log2(np.maximum(freqs, 50.0) / TILT_PIVOT_HZ), -TILT_LIMIT_DB, TILT_LIMIT_DB)
    spectrum = np.fft.rfft(x.astype(np.float64)) * 10.0 ** (gain_db / 20.0)
    return np.fft.irfft(spectrum, n=x.shape[0]).astype(np.float32)


def cut(audio: np.ndarray, sr: int, start_s: float, length_s: float) -> np.ndarray:
    """Samples [start, start + length) at the file's own rate, zero-padded past the end."""
    a = int(round(start_s * sr))
    n = int(round(length_s * sr))
    piece = audio[max(a, 0): a + n]
    if a < 0:
        piece = np.concatenate([np.zeros(-a, dtype=np.float32), piece])
    if piece.shape[0] < n:
        piece = np.pad(piece, (0, n - piece.shape[0]))
    return piece


def window_image(
    cache: AudioCache, path: Path, start_s: float, length_s: float, cfg: FrontendConfig, rate: float = 1.0,
    tilt: float = 0.0,
) -> np.ndarray:
    """The model input of one window, unaugmented: exactly what the edge computes.

    ``rate``: of the recording played that many times faster (``start_s`` on that time line);
    ``tilt``: then given that spectral tilt in dB per octave.
    """
    audio, sr = cache.get(path, rate, tilt)
    return compute(cut(audio, sr, start_s, length_s), sr, cfg)


def image_chunks(folder: Path, windows, cfg: FrontendConfig, chunk: int = 512):
    """Frontend images (float32) of ``windows`` (``.file``, ``.start_s``) of recordings under ``folder``.

    A window with a ``.rate`` is cut from its recording played that many times faster
    (``start_s`` on that time line). Yielded ``chunk`` windows at a time, so a large folder of
    unlabeled recordings is never held as images all at once; callers reduce each chunk
    (features, maps) before the next.
    """
    cache = AudioCache()
    for i in range(0, len(windows), chunk):
        yield np.stack([window_image(cache, folder / w.file, w.start_s, cfg.window_s, cfg,
                                     getattr(w, "rate", 1.0), getattr(w, "tilt", 0.0))
                        for w in windows[i: i + chunk]])


def mixed_image(
    cache: AudioCache, parts: list[tuple[Path, float, float]], length_s: float, cfg: FrontendConfig
) -> np.ndarray:
    """The model input of a sum of windows ``(path, start_s, gain)``, each cut at its own rate.

    The pieces are resampled to the frontend's rate before they are added, so recordings of
    different rates mix; the frontend then sees the sum as it would see any recording.
    """
    total = np.zeros(int(round(length_s * cfg.sample_rate)), dtype=np.float32)
    for path, start_s, gain in parts:
        audio, sr = cache.get(path)
        piece = resample(cut(audio, sr, start_s, length_s), sr, cfg.sample_rate)
        n = min(len(piece), len(total))
        total[:n] += np.float32(gain) * piece[:n]
    return compute(total, cfg.sample_rate, cfg)


def load_split_arrays(
    run_dir: str | Path, split: str, limit: int | None = None, seed: int = 0,
    root: str | Path | None = None,
) -> WindowArrays:
    """Images (through ``edge.inference.frontend.compute``) and 3-state labels of a run's split.

    ``limit`` picks a seeded random subset (in window order) for quick calibration.
    """
    run = load_run_data(run_dir, root)
    windows = run.windows(split)
    if limit is not None and limit < len(windows):
        pick = np.sort(np.random.default_rng(seed).choice(len(windows), size=limit, replace=False))
        windows = [windows[i] for i in pick]
    cache = AudioCache()
    cfg = run.frontend
    images = np.zeros((len(windows), *cfg.image_shape), dtype=np.float32)
    for i, w in enumerate(windows):
        images[i] = window_image(cache, run.path(w.file), w.start_s, w.end_s - w.start_s, cfg)
    targets, known = to_arrays(windows, run.labels)
    sources = [(run.path(w.file), w.start_s, w.end_s - w.start_s) for w in windows]
    return WindowArrays(images, targets, known, list(run.labels), sources)


def window_audio(path: Path, start_s: float, length_s: float, sample_rate: int) -> np.ndarray:
    """One window's raw audio, mono, resampled to ``sample_rate`` (what a device's source delivers)."""
    audio, sr = AudioCache(max_bytes=0).get(path)
    return resample(cut(audio, sr, start_s, length_s), sr, sample_rate)
