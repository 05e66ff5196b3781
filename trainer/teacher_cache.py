"""Teacher outputs computed once, kept on disk: BirdNET embedding + logits per 2-s window.

Why it exists: BirdNET costs tens of milliseconds per window on a CPU, more than a training
step of the student per window, and its outputs never change. So every window the
distillation or the probe needs is run through the teacher once, and the results live in
the run directory (``RUN_DIR/teacher/birdnet/part-NNNNN.npz``), keyed by ``source:file@start``.
Parts are written atomically every few hundred windows, so an interrupted computation
resumes where it stopped and loses at most one part.

Windows: the labelled windows of the run's train/val/test splits (their fixed starts, exactly
the rows of ``windows_<split>.csv``) and, for each unlabeled recording, 2-s windows every
second (``0, 1, 2, ...`` while the window fits; one zero-padded window for a recording
shorter than 2 s). Stage 1 may add mixed windows (:func:`mixed_windows`): the sum of two
windows of different recordings, the second attenuated, which the teacher hears mixed exactly
as the student sees it (a consistent teacher on new inputs, not a blend of two answers); and
speed-changed windows (:func:`speed_windows`): the windows of a copy of an unlabeled recording
played a few per cent faster or slower, again heard by the teacher exactly as the student sees
them.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from edge.errors import SonotrapError
from trainer.rundata import AudioCache, variant_suffix
from trainer.split import SPLITS

log = logging.getLogger("sonotrap.trainer")

CACHE_DIR = Path("teacher") / "birdnet"
LABELLED, UNLABELED = "labelled", "unlabeled"
MIXED = "mixed"  # a group of windows, not a source: each mix names its two sources
SPEED = "speed"  # a group of windows, not a source: unlabeled recordings played faster or slower
SPEED_SHIFT = (0.05, 0.15)  # |log rate| of a speed copy: about 0.8-2.4 semitones and 5-16 % in length
TILTED = "tilted"  # a group of windows, not a source: unlabeled recordings with their timbre tilted
TILT_RANGE = (1.5, 4.5)  # |dB per octave| of a tilted copy: 3-9 dB at 8 kHz, the other way at 500 Hz
PART_SIZE = 256


@dataclass(frozen=True)
class TeacherWindow:
    source: str  # LABELLED | UNLABELED
    file: str  # relative to the source's root
    start_s: float
    partner: TeacherWindow | None = None  # mixed in (a window of another recording) ...
    partner_gain: float = 0.0  # ... at this amplitude factor
    rate: float = 1.0  # the recording played this many times faster; start_s on that time line
    tilt: float = 0.0  # then given this spectral tilt, dB per octave (trainer.rundata.spectral_tilt)

    @property
    def key(self) -> str:
        own = f"{self.source}:{self.file}@{self.start_s:.3f}{variant_suffix(self.rate, self.tilt)}"
        return own if self.partner is None else f"{own}+{self.partner_gain:.4f}*{self.partner.key}"


def mixed_windows(pool: list[TeacherWindow], n: int, seed: int = 0,
                  gain_db: tuple[float, float] = (-12.0, 0.0)) -> list[TeacherWindow]:
    """``n`` seeded mixes of two windows of ``pool`` from different recordings.

    The partner's gain is drawn uniformly in ``gain_db`` (dB relative to its recorded level).
    """
    if n <= 0:
        return []
    if len({(w.source, w.file) for w in pool}) < 2:
        raise SonotrapError("mixed windows need windows of at least two recordings; pass more audio or no mixes")
    rng = np.random.default_rng(seed)
    out: list[TeacherWindow] = []
    while len(out) < n:
        a, b = (pool[i] for i in rng.integers(0, len(pool), size=2))
        gain = round(float(10 ** (rng.uniform(*gain_db) / 20)), 4)
        if (a.source, a.file) != (b.source, b.file):
            out.append(TeacherWindow(a.source, a.file, a.start_s, b, gain))
    return out


def labelled_windows(run, splits: tuple[str, ...] = SPLITS) -> dict[str, list[TeacherWindow]]:
    """The teacher windows of a run's splits, in the order of ``windows_<split>.csv``."""
    return {s: [TeacherWindow(LABELLED, w.file, w.start_s) for w in run.windows(s)] for s in splits}


def _recordings(folder: str | Path) -> list[tuple[str, float]]:
    """(file, duration_s) of each recording listed in ``folder/files.csv``."""
    table = Path(folder) / "files.csv"
    if not table.is_file():
        raise SonotrapError(f"{table} does not exist; pass a folder with files.csv (file,duration_s,sample_rate)")
    with table.open(newline="", encoding="utf-8") as fh:
        return [(row["file"], float(row["duration_s"])) for row in csv.DictReader(fh)]


def _starts(duration: float, window_s: float, hop_s: float) -> list[float]:
    n = max(1, int(np.floor((duration - window_s) / hop_s + 1e-9)) + 1)
    return [round(i * hop_s, 3) for i in range(n)]


def unlabeled_windows(folder: str | Path, window_s: float = 2.0, hop_s: float = 1.0) -> list[TeacherWindow]:
    """2-s windows every ``hop_s`` of each recording listed in ``folder/files.csv``."""
    return [TeacherWindow(UNLABELED, file, start)
            for file, duration in _recordings(folder) for start in _starts(duration, window_s, hop_s)]


def speed_windows(folder: str | Path, copies: int, seed: int = 0, window_s: float = 2.0,
                  hop_s: float = 1.0) -> list[TeacherWindow]:
    """The windows of ``copies`` seeded speed-changed copies of each recording in ``folder``.

    Each copy plays ``rate = exp(+-U(SPEED_SHIFT))`` times faster (rounded to a ratio of
    integers up to 40, so resampling is exact), and is cut into windows as the recording is.
    """
    rng = np.random.default_rng(seed)
    out: list[TeacherWindow] = []
    for file, duration in _recordings(folder):
        for _ in range(copies):
            rate = speed_rate(rng)
            out.extend(TeacherWindow(UNLABELED, file, start, rate=rate)
                       for start in _starts(duration / rate, window_s, hop_s))
    return out


def tilted_windows(folder: str | Path, copies: int, seed: int = 0, window_s: float = 2.0,
                   hop_s: float = 1.0) -> list[TeacherWindow]:
    """The windows of ``copies`` seeded spectrally tilted copies of each recording in ``folder``.

    Each copy's tilt is ``+-U(TILT_RANGE)`` dB per octave, rounded to 0.01 (its cache key);
    the draws are independent of :func:`speed_windows`' for the same seed.
    """
    rng = np.random.default_rng([seed, 1])
    out: list[TeacherWindow] = []
    for file, duration in _recordings(folder):
        for _ in range(copies):
            tilt = round(float(rng.choice([-1.0, 1.0]) * rng.uniform(*TILT_RANGE)), 2)
            out.extend(TeacherWindow(UNLABELED, file, start, tilt=tilt)
                       for start in _starts(duration, window_s, hop_s))
    return out


def speed_rate(rng: np.random.Generator) -> float:
    """One copy's playback rate: ``exp(+-U(SPEED_SHIFT))``, a ratio of integers up to 40 (exact resampling)."""
    shift = float(rng.choice([-1.0, 1.0]) * rng.uniform(*SPEED_SHIFT))
    return float(Fraction(float(np.exp(shift))).limit_denominator(40))


def cache_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CACHE_DIR


@dataclass
class TeacherCache:
    keys: list[str]
    embeddings: np.ndarray  # (N, 1024) float32, as BirdNET gives them (not normalised)
    logits: np.ndarray  # (N, 6522) float16

    def __post_init__(self) -> None:
        self.index = {k: i for i, k in enumerate(self.keys)}

    def rows(self, windows: list[TeacherWindow]) -> np.ndarray:
        missing = [w.key for w in windows if w.key not in self.index]
        if missing:
            raise SonotrapError(f"{len(missing)} windows have no teacher output (e.g. {missing[0]}); "
                                "compute the teacher cache first (sonotrap train --teacher birdnet)")
        return np.array([self.index[w.key] for w in windows], dtype=np.int64)


def load_cache(run_dir: str | Path) -> TeacherCache:
    keys: list[str] = []
    embs: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    for part in sorted(cache_dir(run_dir).glob("part-*.npz")):
        if part.name.endswith(".tmp.npz"):
            continue
        with np.load(part) as z:
            keys.extend(str(k) for k in z["keys"])
            embs.append(z["embeddings"])
            logits.append(z["logits"])
    if not keys:
        return TeacherCache([], np.zeros((0, 1024), np.float32), np.zeros((0, 0), np.float16))
    embeddings, logit_rows = np.concatenate(embs), np.concatenate(logits)
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    if len(first) < len(keys):  # duplicates from concurrent writers: keep one row each
        rows = sorted(first.values())
        keys, embeddings, logit_rows = [keys[i] for i in rows], embeddings[rows], logit_rows[rows]
    return TeacherCache(keys, embeddings, logit_rows)


def _write_part(folder: Path, number: int, keys: list[str], embeddings: np.ndarray, logits: np.ndarray) -> None:
    # The writer's pid in the name: two processes filling one cache never overwrite each other
    # (a window they both computed is then stored twice, identically).
    name = f"part-{number:05d}-{os.getpid()}"
    path, tmp = folder / f"{name}.npz", folder / f"{name}.tmp.npz"
    np.savez(tmp, keys=np.array(keys), embeddings=embeddings.astype(np.float32), logits=logits.astype(np.float16))
    os.replace(tmp, path)


def compute_cache(
    run_dir: str | Path, windows: list[TeacherWindow], roots: dict[str, Path], threads: int = 1,
    batch: int = 16, window_s: float = 2.0, progress: bool = False, model=None,
) -> TeacherCache:
    """Teacher outputs for every window not yet in the cache; returns the whole cache.

    ``model`` is anything with BirdNET's ``run(audio (N, 144000)) -> Outputs`` (default: BirdNET).
    """
    from trainer import birdnet

    folder = cache_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    done = set(load_cache(run_dir).keys)
    todo: dict[tuple[str, str, float, float], list[TeacherWindow]] = defaultdict(list)
    for w in windows:
        if w.key not in done:
            todo[(w.source, w.file, w.rate, w.tilt)].append(w)
            done.add(w.key)  # a window listed twice is computed once
    total = sum(len(v) for v in todo.values())
    if not total:
        return load_cache(run_dir)
    log.info("teacher cache: %d windows to compute (%d cached)", total, len(done) - total)
    model = model if model is not None else birdnet.BirdNET(threads=threads)
    audio = AudioCache()  # recordings at their own rate; a mix partner is read again from here
    number = len([p for p in folder.glob("part-*.npz") if not p.name.endswith(".tmp.npz")])
    keys: list[str] = []
    inputs: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    t0, computed = time.monotonic(), 0

    def flush_batch() -> None:
        out = model.run(np.stack(inputs))
        embs.append(out.embeddings)
        logits.append(out.logits)
        inputs.clear()

    for (source, file, rate, tilt), wins in todo.items():
        audio48 = birdnet.resample_to_48k(*audio.get(roots[source] / file, rate, tilt))
        for w in wins:
            keys.append(w.key)
            x = birdnet.teacher_input(audio48, w.start_s, window_s)
            if w.partner is not None:
                p = w.partner
                other = birdnet.resample_to_48k(*audio.get(roots[p.source] / p.file, p.rate, p.tilt))
                x = x + np.float32(w.partner_gain) * birdnet.teacher_input(other, p.start_s, window_s)
            inputs.append(x)
            if len(inputs) == batch:
                flush_batch()
            if len(keys) == PART_SIZE:
                if inputs:
                    flush_batch()
                _write_part(folder, number, keys, np.concatenate(embs), np.concatenate(logits))
                number, computed = number + 1, computed + len(keys)
                keys, embs, logits = [], [], []
                rate = computed / (time.monotonic() - t0)
                log.info("teacher cache: %d/%d windows, %.1f windows/s", computed, total, rate)
                if progress:
                    print(f"teacher cache: {computed}/{total} windows, {rate:.1f} windows/s", flush=True)
    if inputs:
        flush_batch()
    if keys:
        _write_part(folder, number, keys, np.concatenate(embs), np.concatenate(logits))
    return load_cache(run_dir)


def source_roots(run, unlabeled: str | Path | None) -> dict[str, Path]:
    """Where each source's recordings are: a window's audio is ``roots[w.source] / w.file``."""
    roots = {LABELLED: Path(run.root)}
    if unlabeled:
        roots[UNLABELED] = Path(unlabeled)
    return roots


def ensure_cache(
    run, unlabeled: str | Path | None, threads: int = 1, progress: bool = False, model=None,
    mixes: int = 0, seed: int = 0, speed_copies: int = 0, tilted_copies: int = 0,
) -> tuple[TeacherCache, dict[str, list[TeacherWindow]]]:
    """Teacher windows by group (train/val/test/unlabeled/mixed/speed/tilted) and a cache that covers all of them.

    ``mixes``: that many :func:`mixed_windows` of the training and unlabeled windows (group MIXED).
    ``speed_copies``: that many :func:`speed_windows` copies of each unlabeled recording (group SPEED).
    ``tilted_copies``: that many :func:`tilted_windows` copies of each unlabeled recording (group TILTED).
    """
    copy_kinds = ((speed_copies, "speed-changed", "--distill-speed"), (tilted_copies, "tilted", "--distill-tilt"))
    for copies, kind, flag in copy_kinds:
        if copies and not unlabeled:
            raise SonotrapError(f"{kind} copies are made of the unlabeled recordings; pass --unlabeled DIR "
                                f"or no {flag}")
    groups = labelled_windows(run)
    roots = source_roots(run, unlabeled)
    if unlabeled:
        groups[UNLABELED] = unlabeled_windows(unlabeled, run.frontend.window_s)
        if speed_copies:
            groups[SPEED] = speed_windows(unlabeled, speed_copies, seed, run.frontend.window_s)
        if tilted_copies:
            groups[TILTED] = tilted_windows(unlabeled, tilted_copies, seed, run.frontend.window_s)
    if mixes:
        groups[MIXED] = mixed_windows(groups["train"] + groups.get(UNLABELED, []), mixes, seed)
    every = [w for ws in groups.values() for w in ws]
    cache = compute_cache(run.run_dir, every, roots, threads, window_s=run.frontend.window_s, progress=progress,
                          model=model)
    return cache, groups
