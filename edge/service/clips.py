"""Optional WAV clip around each detection, within a disk quota.

The clip writer keeps its own longer history of audio (pre-roll + longest clip + post-roll)
and writes a clip once the post-roll has been recorded. After each write the oldest clips
are deleted until the folder fits the quota. A full or read-only disk is logged and
reported as an event; it never stops detection.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge.config import ClipsConfig
from edge.inference.detector import DetectionEvent
from edge.inference.ringbuffer import RingBuffer

log = logging.getLogger("sonotrap.service")

MAX_EVENT_S = 30.0  # longer events get a clip of their first MAX_EVENT_S seconds


@dataclass
class _Pending:
    event: DetectionEvent
    start: int  # absolute sample indices of the clip
    end: int


class ClipWriter:
    """Feeds on the same samples as the pipeline; ``add`` an event, ``poll`` writes clips."""

    def __init__(
        self,
        cfg: ClipsConfig,
        directory: str | Path,
        sample_rate: int,
        on_event: Callable[[str, dict], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.dir = Path(directory)
        self.sample_rate = int(sample_rate)
        self.on_event = on_event
        self.history = RingBuffer(int((cfg.pre_s + MAX_EVENT_S + cfg.post_s + 5.0) * sample_rate))
        self._pending: list[_Pending] = []
        self.written = 0
        self.failed = 0
        self.deleted = 0
        self._failing = False

    def feed(self, samples: np.ndarray) -> None:
        self.history.append(samples)

    def add(self, event: DetectionEvent, start_sample: int, end_sample: int) -> None:
        """Schedule a clip for ``event`` whose audio spans ``[start_sample, end_sample)``."""
        end_sample = min(end_sample, start_sample + int(MAX_EVENT_S * self.sample_rate))
        start = max(0, start_sample - int(self.cfg.pre_s * self.sample_rate))
        end = end_sample + int(self.cfg.post_s * self.sample_rate)
        self._pending.append(_Pending(event, start, end))

    def poll(self, final: bool = False) -> list[Path]:
        """Write every clip whose post-roll is recorded (all of them when ``final``)."""
        done: list[_Pending] = []
        keep: list[_Pending] = []
        for p in self._pending:
            (done if final or p.end <= self.history.total else keep).append(p)
        self._pending = keep
        paths = []
        for p in done:
            path = self._write(p)
            if path is not None:
                paths.append(path)
        return paths

    def _write(self, p: _Pending) -> Path | None:
        start = max(p.start, self.history.oldest)
        end = min(p.end, self.history.total)
        if end <= start:
            return None
        audio = self.history.read(start, end)
        stamp = datetime.fromtimestamp(p.event.start, UTC).strftime("%Y%m%dT%H%M%S")
        path = self.dir / f"{stamp}_{p.event.label}_{p.event.id[:8]}.wav"
        tmp = path.with_suffix(".wav.part")
        try:
            import soundfile as sf

            self.dir.mkdir(parents=True, exist_ok=True)
            sf.write(str(tmp), audio, self.sample_rate, subtype="PCM_16", format="WAV")
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:  # soundfile reports ENOSPC as RuntimeError
            self.failed += 1
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            full = getattr(err, "errno", None) == errno.ENOSPC or "space" in str(err).lower()
            msg = f"cannot write clip {path} ({'disk full' if full else err}); detection kept, clip skipped"
            if not self._failing:  # one log line and one event per failure streak, not per clip
                log.error(msg)
                if self.on_event:
                    self.on_event("clip_failed", {"path": str(path), "error": str(err), "disk_full": full})
            self._failing = True
            return None
        self._failing = False
        self.written += 1
        self.enforce_quota()
        return path

    def enforce_quota(self) -> None:
        """Delete the oldest clips until the folder is within ``quota_mb``."""
        quota = self.cfg.quota_mb * 1e6
        try:
            clips = sorted(self.dir.glob("*.wav"), key=lambda q: (q.stat().st_mtime, q.name))
            sizes = [q.stat().st_size for q in clips]
        except OSError as err:
            log.warning("cannot list clips in %s: %s", self.dir, err)
            return
        total = sum(sizes)
        for q, size in zip(clips, sizes, strict=True):
            if total <= quota:
                break
            try:
                q.unlink()
                self.deleted += 1
                total -= size
            except OSError as err:
                log.warning("cannot delete old clip %s: %s", q, err)

    def stats(self) -> dict:
        return {"written": self.written, "failed": self.failed, "deleted": self.deleted, "pending": len(self._pending)}
