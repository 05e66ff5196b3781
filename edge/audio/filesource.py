"""A recording replayed as if it were a microphone: real-time paced, or as fast as possible.

Used by tests, demos and ``analyze``. Reading happens in :meth:`FileSource.read` itself (no
thread): in real-time mode a block is handed out when its last sample would have arrived
from a microphone started at :meth:`start`. Timestamps are anchored at start and advance by
sample count, so looping and fast mode stay contiguous.

A damaged file is never silently shortened: whatever libsndfile can decode is delivered,
then ``read`` raises a one-line :class:`SonotrapError` naming the file. libsndfile quietly
clamps a truncated WAV to the bytes present, so its header log is checked too.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np

from edge.audio.base import AudioBlock, AudioSource, EventSink
from edge.bounds import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from edge.config import AudioConfig
from edge.errors import SonotrapError

log = logging.getLogger("sonotrap.audio")

_WAV_SHORT = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _damaged(path: Path, detail: str) -> SonotrapError:
    return SonotrapError(f"audio file {path} is truncated or corrupt ({detail}); re-copy or repair it")


class FileSource(AudioSource):
    kind = "file"

    def __init__(self, cfg: AudioConfig, on_event: EventSink | None = None, path: str | Path | None = None):
        super().__init__(cfg, 0, on_event)
        self.path = Path(path or cfg.file or "")
        self.realtime = cfg.realtime
        self.loop = cfg.loop
        self._sf = None
        self._frames_total = 0  # frames handed out since start (all loops)
        self._frames_pass = 0  # frames read in the current pass over the file
        self._anchor_wall = 0.0
        self._anchor_mono = 0.0
        self._pending: AudioBlock | None = None
        self._declared_frames = 0
        self._short_by: str | None = None
        self._device = str(self.path)

    def start(self) -> None:
        import soundfile as sf

        if not self.path.is_file():
            raise SonotrapError(f"audio file {self.path} does not exist; check audio.file / the path given")
        try:
            f = sf.SoundFile(str(self.path))
        except (sf.LibsndfileError, RuntimeError, OSError) as err:
            raise SonotrapError(
                f"audio file {self.path} cannot be read ({_one_line(err)}); "
                "use a WAV/FLAC/OGG/MP3 file libsndfile can decode"
            ) from None
        self._sf = f
        if self.cfg.channel >= f.channels:
            raise SonotrapError(
                f"audio file {self.path} has {f.channels} channel(s); audio.channel = {self.cfg.channel} "
                f"is out of range (use 0..{f.channels - 1})"
            )
        if not MIN_SAMPLE_RATE <= f.samplerate <= MAX_SAMPLE_RATE:
            f.close()
            raise SonotrapError(
                f"audio file {self.path} has a sample rate of {f.samplerate} Hz; sonotrap needs "
                f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz (resample the recording, e.g. to 32000 Hz)"
            )
        self.sample_rate = int(f.samplerate)
        self._declared_frames = int(f.frames)
        m = _WAV_SHORT.search(f.extra_info or "")
        if m and f.format in ("WAV", "WAVEX", "RF64"):
            self._short_by = f"data chunk declares {m.group(1)} bytes, only {m.group(2)} present"
        if self._declared_frames <= 0 and not self._short_by:
            f.close()
            raise SonotrapError(f"audio file {self.path} contains no audio frames; check the recording")
        self._block = max(1, round(self.cfg.block_s * self.sample_rate))
        self._anchor_wall = time.time()
        self._anchor_mono = time.monotonic()
        self._state = "running"
        log.info("audio: file %s, %d Hz, %d ch, %.1f s%s%s", self.path, self.sample_rate, f.channels,
                 self._declared_frames / self.sample_rate, ", real time" if self.realtime else ", fast",
                 ", looping" if self.loop else "")

    def stop(self) -> None:
        super().stop()
        if self._sf is not None:
            self._sf.close()
            self._sf = None

    def read(self, timeout: float) -> AudioBlock | None:
        if self.finished:
            if self._error is not None:
                raise self._error
            return None
        if self._sf is None:
            return None
        if self._pending is None:
            self._pending = self._next_block()
            if self._pending is None:  # end of file (or damaged)
                self.finished = True
                self._state = "finished"
                if self._error is not None:
                    self._fail()
                return None
        if self.realtime:
            due = self._anchor_mono + (self._frames_total + len(self._pending.samples)) / self.sample_rate
            wait = due - time.monotonic()
            if wait > timeout:
                self._stop.wait(max(0.0, timeout))
                return None
            if wait > 0:
                self._stop.wait(wait)
            if self._stop.is_set():
                return None
        block, self._pending = self._pending, None
        block.received = time.monotonic()
        self._frames_total += len(block.samples)
        self._accept(block)
        return block

    def _next_block(self) -> AudioBlock | None:
        """Decode the next block (rewinding when looping); None at the end or on damage."""
        assert self._sf is not None
        for _attempt in range(2):
            try:
                data = self._sf.read(self._block, dtype="float32", always_2d=True)
            except Exception as err:  # libsndfile decode errors (lost sync, bad frame)
                self._error = _damaged(
                    self.path, f"decoding failed after {self._frames_pass / self.sample_rate:.2f} s: {_one_line(err)}"
                )
                return None
            if len(data):
                self._frames_pass += len(data)
                start = self._anchor_wall + self._frames_total / self.sample_rate
                return AudioBlock(np.ascontiguousarray(data[:, self.cfg.channel]), self.sample_rate, start, 0.0)
            # End of this pass: was the whole file there?
            if self._short_by:
                self._error = _damaged(self.path, f"{self._short_by}; read {self._frames_pass / self.sample_rate:.2f} s")
                return None
            if 0 < self._frames_pass < self._declared_frames:
                self._error = _damaged(
                    self.path, f"read {self._frames_pass} of {self._declared_frames} declared frames"
                )
                return None
            if not self.loop or self._frames_pass == 0:
                return None
            self._sf.seek(0)
            self._frames_pass = 0
        return None

    @property
    def duration_s(self) -> float | None:
        """Length of one pass over the file (None before ``start``): looped offsets wrap at it."""
        return self._declared_frames / self.sample_rate if self.sample_rate and self._declared_frames else None

    def stats(self) -> dict:
        s = super().stats()
        s["position_s"] = round(self._frames_pass / self.sample_rate, 3) if self.sample_rate else 0.0
        return s


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
