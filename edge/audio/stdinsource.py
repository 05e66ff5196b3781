"""Raw PCM on stdin, so any recorder or decoder can feed the detector through a pipe::

    arecord -f S16_LE -r 32000 -c 1 -t raw | sonotrap run --source stdin
    ffmpeg -i rtsp://camera/stream -f s16le -ac 1 -ar 32000 - | sonotrap run --source stdin

A reader thread takes whatever bytes the pipe has (``read1``), keeps a partial frame for the
next read, and queues blocks of ``block_s``. A full queue drops blocks (counted) so a live
producer is never stalled, unless ``audio.stdin_backpressure`` is set (for decoders that may
run ahead of real time). Timestamps are anchored when the first bytes arrive and advance by
sample count.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from typing import BinaryIO

import numpy as np

from edge.audio.base import AudioBlock, AudioSource, EventSink
from edge.config import AudioConfig
from edge.errors import SonotrapError

log = logging.getLogger("sonotrap.audio")

FORMATS: dict[str, tuple[np.dtype, float]] = {"s16le": (np.dtype("<i2"), 1.0 / 32768.0), "f32le": (np.dtype("<f4"), 1.0)}


class StdinSource(AudioSource):
    kind = "stdin"

    def __init__(self, cfg: AudioConfig, on_event: EventSink | None = None, stream: BinaryIO | None = None):
        super().__init__(cfg, cfg.stdin_rate, on_event)
        self._stream = stream
        self.dtype, self.scale = FORMATS[cfg.stdin_format]
        self.channels = cfg.stdin_channels
        self.frame_bytes = self.dtype.itemsize * self.channels
        self.block_frames = max(1, round(cfg.block_s * self.sample_rate))
        self.discarded_bytes = 0
        self._device = f"stdin ({cfg.stdin_format}, {self.sample_rate} Hz, {self.channels} ch)"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.cfg.channel >= self.channels:
            raise SonotrapError(
                f"audio.channel = {self.cfg.channel} but stdin carries {self.channels} channel(s); "
                "set audio.stdin_channels or audio.channel"
            )
        stream = self._stream if self._stream is not None else sys.stdin.buffer
        self._stream = stream
        self._state = "running"
        self._thread = threading.Thread(target=self._pump, name="sonotrap-stdin", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self._stream is not None
        read = getattr(self._stream, "read1", None) or self._stream.read
        want = self.block_frames * self.frame_bytes
        pending = bytearray()
        frames = 0
        anchor = None
        error = None
        try:
            while not self._stop.is_set():
                chunk = read(max(want - len(pending), self.frame_bytes))
                if not chunk:
                    break
                if anchor is None:
                    anchor = time.time() - (len(chunk) // self.frame_bytes) / self.sample_rate
                pending += chunk
                if len(pending) >= want:
                    usable = len(pending) - len(pending) % self.frame_bytes
                    frames = self._emit_frames(bytes(pending[:usable]), anchor, frames)
                    del pending[:usable]
        except (OSError, ValueError) as err:
            error = SonotrapError(f"reading audio from stdin failed ({err}); check the producing command")
        usable = len(pending) - len(pending) % self.frame_bytes
        if usable and anchor is not None:
            frames = self._emit_frames(bytes(pending[:usable]), anchor, frames)
        if len(pending) > usable:
            self.discarded_bytes = len(pending) - usable
            log.warning("stdin ended inside a frame: %d trailing byte(s) ignored", self.discarded_bytes)
        log.info("audio: stdin ended after %.1f s", frames / self.sample_rate)
        self._finish(error)

    def _emit_frames(self, raw: bytes, anchor: float, frames: int) -> int:
        data = np.frombuffer(raw, dtype=self.dtype).reshape(-1, self.channels)
        samples = data[:, self.cfg.channel].astype(np.float32) * np.float32(self.scale)
        block = AudioBlock(samples, self.sample_rate, anchor + frames / self.sample_rate, time.monotonic())
        if self.cfg.stdin_backpressure:
            while not self._stop.is_set():
                try:
                    self._queue.put(block, timeout=0.2)
                    break
                except queue.Full:
                    continue
        else:
            self._offer(block)
        return frames + len(data)

    def stats(self) -> dict:
        s = super().stats()
        s["discarded_bytes"] = self.discarded_bytes
        return s
