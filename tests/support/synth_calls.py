"""Synthetic labelled recordings for trainer tests: quiet tone "calls" in noise, real files.

Class ``low`` is a 1.2 kHz tone burst, ``high`` a 4 kHz burst; recordings are FLAC or WAV,
mono or stereo, at 22.05 or 44.1 kHz (the frontend resamples), peaking far below full scale
like field audio. Every call is listed in ``annotations.csv``; ``files.csv`` also lists
call-free recordings (known negatives).
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

FREQS = {"low": 1200.0, "high": 4000.0}


@dataclass
class SynthCall:
    file: str
    start_s: float
    end_s: float
    label: str


def burst(freq: float, seconds: float, sr: int, amp: float = 0.005) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    env = np.sin(np.pi * t / seconds) ** 2
    return (amp * env * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_dataset(
    root: Path, n_files: int = 12, n_negative: int = 3, duration_s: float = 4.0, seed: int = 0,
) -> list[SynthCall]:
    """Write ``root/audio/*.{flac,wav}``, ``root/annotations.csv``, ``root/files.csv``."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    calls: list[SynthCall] = []
    files: list[str] = []
    for i in range(n_files + n_negative):
        sr = 22050 if i % 2 else 44100
        name = f"audio/rec{i:02d}.{'flac' if i % 3 else 'wav'}"
        x = (0.0005 * rng.standard_normal(int(duration_s * sr))).astype(np.float32)
        if i < n_files:
            labels = ["low"] if i % 3 == 0 else ["high"] if i % 3 == 1 else ["low", "high"]
            for j, lab in enumerate(labels):
                start = round(0.3 + j * 1.7 + float(rng.uniform(0, 0.4)), 3)
                length = 0.4
                a = int(start * sr)
                x[a: a + int(length * sr)] += burst(FREQS[lab], length, sr)
                calls.append(SynthCall(name, start, round(start + length, 3), lab))
        audio = np.stack([x, x], axis=1) if i % 4 == 3 else x
        sf.write(root / name, audio, sr)
        files.append(name)
    with (root / "annotations.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "start_s", "end_s", "label"])
        for c in calls:
            w.writerow([c.file, c.start_s, c.end_s, c.label])
    with (root / "files.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file"])
        for f in files:
            w.writerow([f])
    return calls


def unlabeled_folder(data_dir: Path, names: list[str], folder: Path) -> Path:
    """Recordings ``names`` (paths under ``data_dir``) copied as an unlabeled folder with its files.csv.

    Tests reuse labelled recordings (e.g. test-split ones, which no head is fitted on) as the
    unlabeled audio of the region; each lands as ``audio/<name with / as _>``, listed with its
    own duration and sample rate.
    """
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        dest = folder / "audio" / name.replace("/", "_")
        shutil.copy(Path(data_dir) / name, dest)
        info = sf.info(str(dest))
        rows.append(f"audio/{dest.name},{info.frames / info.samplerate:.3f},{info.samplerate}\n")
    (folder / "files.csv").write_text("file,duration_s,sample_rate\n" + "".join(rows))
    return folder
