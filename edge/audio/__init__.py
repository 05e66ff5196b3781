"""Audio sources for the detector: microphone (sounddevice/PortAudio), recording file, raw PCM on stdin.

Every source hands out :class:`AudioBlock` s (float32 mono of the selected channel, at the
source's own rate — the frontend resamples windows to the model rate) through
``read(timeout)``; see :mod:`edge.audio.base` for the shared queue/counter/watchdog
behaviour and :mod:`edge.audio.mic` for device retry and timestamps.

``on_event(kind, data)`` is called with ``audio_error`` / ``audio_recovered`` (from the mic's
supervisor thread) and ``silence`` / ``silence_ended`` / ``overflow`` (from the thread that
calls ``read``); it must be thread-safe and must not block.
"""

from __future__ import annotations

from edge.audio.base import AudioBlock, AudioSource, EventSink, SilenceWatch
from edge.audio.devices import COMMON_RATES, list_input_devices
from edge.config import AudioConfig

__all__ = [
    "AudioBlock",
    "AudioSource",
    "COMMON_RATES",
    "EventSink",
    "SilenceWatch",
    "list_input_devices",
    "open_source",
]


def open_source(cfg: AudioConfig, model_rate: int, on_event: EventSink | None = None) -> AudioSource:
    """The source ``cfg.source`` names (not started: call ``start()``)."""
    if cfg.source == "file":
        from edge.audio.filesource import FileSource

        return FileSource(cfg, on_event)
    if cfg.source == "stdin":
        from edge.audio.stdinsource import StdinSource

        return StdinSource(cfg, on_event)
    from edge.audio.mic import MicSource

    return MicSource(cfg, model_rate, on_event)
