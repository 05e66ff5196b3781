"""The microphone: a sounddevice input stream that survives missing and vanishing devices.

The PortAudio callback does three things only: count status flags, stamp the block, and
copy the selected channel into the bounded queue (a full queue is counted, not waited on).

Timestamps: the first sample's wall-clock time is estimated from the first callback (its
last sample arrived "now"); after that ``start_time`` advances by sample count, so consecutive blocks are
exactly contiguous. If the device clock drifts from the wall clock (or input overflows lose
samples) by more than ``RESYNC_S`` over ``RESYNC_WINDOW_S``, the anchor is moved and ``resyncs`` is counted.

Resilience: a supervisor thread watches the stream. When the device is missing at boot, the
stream finishes unexpectedly (device unplugged, PortAudio error, sound server gone) or stops
delivering callbacks, it closes the stream, reports ``audio_error`` and retries with
exponential backoff (``retry_initial_s`` .. ``retry_max_s``), re-initialising PortAudio
before each try so late-enumerated devices are found; on success it reports
``audio_recovered``. ``stats()["state"]`` is ``"waiting for device"`` meanwhile. Errors no
retry can fix (a rate the device rejects when ``audio.sample_rate`` is set explicitly, too
few channels, ``device_timeout_s`` exceeded) raise a one-line SonotrapError — from
``start()`` when known at boot, else from ``read()``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from edge.audio.base import AudioBlock, AudioSource, EventSink
from edge.audio.devices import (
    DeviceMissing,
    close_stream,
    find_input_device,
    open_stream,
    quiet_stderr,
    rescan,
    sounddevice,
    supported_rates,
)
from edge.config import AudioConfig
from edge.errors import SonotrapError

log = logging.getLogger("sonotrap.audio")

RESYNC_S = 0.25  # re-anchor timestamps when sample-count time and wall time disagree by this much
RESYNC_WINDOW_S = 10.0  # ... persistently (the minimum over this much audio) for late-running counts
PA_INVALID_CHANNELS = -9998
PA_INVALID_RATE = -9997


def _pa_code(err: Exception) -> int | None:
    args: tuple[Any, ...] = tuple(getattr(err, "args", ()))
    return args[1] if len(args) > 1 and isinstance(args[1], int) else None


class MicSource(AudioSource):
    kind = "mic"

    def __init__(self, cfg: AudioConfig, model_rate: int, on_event: EventSink | None = None):
        super().__init__(cfg, cfg.sample_rate or model_rate, on_event)
        self.model_rate = int(model_rate)
        self._device = str(cfg.device) if cfg.device is not None else "default"
        self._stream = None
        self._dead = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._anchor: float | None = None
        self._win_min = 0.0
        self._win_n = 0
        self._counter = 0
        self._channel = cfg.channel
        self._last_callback = 0.0
        self._down_since: float | None = None
        self.resyncs = 0
        self.stream_restarts = 0
        self.stall_s = max(5.0, 10 * cfg.block_s)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        sounddevice()  # PortAudio missing: a clear error now, no retry can fix it
        self._state = "starting"
        try:
            self._open()
        except SonotrapError:
            self._state = "error"
            raise
        except Exception as err:  # DeviceMissing, sounddevice.PortAudioError: retry in the background
            self._went_down(f"audio device {self._device!r} not available ({_short(err)})")
        self._supervisor = threading.Thread(target=self._supervise, name="sonotrap-audio", daemon=True)
        self._supervisor.start()

    def stop(self) -> None:
        super().stop()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        self._close()

    # ------------------------------------------------------------ opening

    def _choose_rate(self, sd, dev: dict) -> int:
        wanted = self.cfg.sample_rate or self.model_rate
        try:
            sd.check_input_settings(device=dev["index"], samplerate=wanted,
                                    channels=self.cfg.channels, dtype="float32")
            return wanted
        except Exception as err:
            code = _pa_code(err)
            if code == PA_INVALID_CHANNELS or "channel" in str(err).lower():
                raise SonotrapError(
                    f"audio device {dev['name']!r} has {dev['max_input_channels']} input channel(s), "
                    f"cannot open {self.cfg.channels}; set audio.channels (and audio.channel)"
                ) from None
            if code != PA_INVALID_RATE and "sample rate" not in str(err).lower():
                raise DeviceMissing(_short(err)) from None
        with quiet_stderr():
            rates = supported_rates(dev["index"], self.cfg.channels)
        if self.cfg.sample_rate:
            raise SonotrapError(
                f"audio device {dev['name']!r} does not support {wanted} Hz; "
                f"supported: {', '.join(map(str, rates)) or 'none of the common rates'}; set audio.sample_rate"
            )
        fallback = int(dev["default_samplerate"])
        log.warning("audio device %r cannot capture at the model rate %d Hz; using its default %d Hz "
                    "(windows are resampled)", dev["name"], wanted, fallback)
        return fallback

    def _open(self) -> None:
        sd = sounddevice()
        dev = find_input_device(self.cfg.device)
        if self.cfg.channels > dev["max_input_channels"]:
            raise SonotrapError(
                f"audio device {dev['name']!r} has {dev['max_input_channels']} input channel(s), "
                f"cannot open {self.cfg.channels}; set audio.channels (and audio.channel)"
            )
        rate = self._choose_rate(sd, dev)
        self._dead.clear()
        self._anchor = None
        self._counter = 0
        self.sample_rate = rate
        self._device = dev["name"]
        stream = open_stream(lambda: sd.InputStream(
            device=dev["index"], samplerate=rate, channels=self.cfg.channels, dtype="float32",
            blocksize=max(1, round(self.cfg.block_s * rate)), callback=self._callback,
            finished_callback=self._dead.set,
        ))
        try:
            self._last_callback = time.monotonic()
            stream.start()
        except Exception:
            close_stream(stream)
            raise
        self._stream = stream
        self._state = "running"
        log.info("audio: capturing %r (index %d) at %d Hz, %d ch, channel %d, block %.3f s",
                 dev["name"], dev["index"], rate, self.cfg.channels, self._channel, self.cfg.block_s)

    def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        # A stream whose device vanished may hang in close(): never let it take the supervisor.
        if not close_stream(stream):
            log.warning("audio: closing the dead stream hangs; abandoning it "
                        "(devices are not re-listed until it returns)")

    # ------------------------------------------------------------ the audio callback

    def _callback(self, indata, frames, time_info, status) -> None:
        now = time.monotonic()
        rate = self.sample_rate
        if status:
            self.overflows += 1
        # The block's last sample arrived about now. (PortAudio's inputBufferAdcTime is not used:
        # through the ALSA pulse plugin it is off by up to half a second.) Scheduling delays
        # only make this estimate late, so a negative error means the anchor was late, and
        # only a persistent positive error (the window minimum) means real drift or lost samples.
        observed = time.time() - frames / rate
        if self._anchor is None:
            self._anchor, self._counter, self._win_min, self._win_n = observed, 0, 0.0, 0
        start = self._anchor + self._counter / rate
        err = observed - start
        self._win_min = min(self._win_min, err)
        self._win_n += frames
        if err < -RESYNC_S:
            self._anchor += err
            start += err
            self.resyncs += 1
            self._win_min, self._win_n = 0.0, 0
        elif self._win_n >= RESYNC_WINDOW_S * rate:
            if self._win_min > RESYNC_S:
                self._anchor += self._win_min
                start += self._win_min
                self.resyncs += 1
            self._win_min, self._win_n = math.inf, 0
        self._counter += frames
        self._last_callback = now
        self._offer(AudioBlock(indata[:, self._channel].copy(), rate, start, now))

    # ------------------------------------------------------------ supervision

    def _went_down(self, why: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
        log.warning("%s; retrying every %g..%g s", why, self.cfg.retry_initial_s, self.cfg.retry_max_s)
        self._emit("audio_error", {"device": self._device, "error": why, "fatal": False})
        # The state last: whoever sees "waiting for device" has already been sent the event.
        self._state = "waiting for device"

    def _supervise(self) -> None:
        backoff = self.cfg.retry_initial_s
        while not self._stop.is_set():
            if self._stream is None:
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, self.cfg.retry_max_s)
                self.retries += 1
                rescan()
                try:
                    self._open()
                except SonotrapError as err:
                    self._error = err
                    self._state = "error"
                    log.error("%s", err)
                    return
                except Exception as err:  # DeviceMissing, PortAudioError
                    log.debug("audio retry %d failed: %s", self.retries, _short(err))
                    self._check_timeout(err)
                    if self._error is not None:
                        return
                    continue
                down_for = time.monotonic() - (self._down_since or time.monotonic())
                self._down_since = None
                backoff = self.cfg.retry_initial_s
                log.info("audio device %r is back after %.1f s (%d retries)", self._device, down_for, self.retries)
                self._emit("audio_recovered", {"device": self._device, "down_s": round(down_for, 2),
                                               "retries": self.retries, "sample_rate": self.sample_rate})
                continue
            if self._dead.wait(0.25):
                why = f"audio stream on {self._device!r} stopped unexpectedly (device gone?)"
            elif time.monotonic() - self._last_callback > self.stall_s:
                why = f"audio device {self._device!r} delivered nothing for {self.stall_s:.0f} s"
            else:
                continue
            if self._stop.is_set():
                break
            self.stream_restarts += 1
            self._close()
            self._went_down(why)

    def _check_timeout(self, err: Exception) -> None:
        limit = self.cfg.device_timeout_s
        if limit > 0 and self._down_since is not None and time.monotonic() - self._down_since >= limit:
            self._error = SonotrapError(
                f"audio device {self.cfg.device if self.cfg.device is not None else 'default'!r} not available "
                f"after {limit:g} s ({_short(err)}); connect it or fix audio.device (see 'sonotrap devices')"
            )
            self._state = "error"
            log.error("%s", self._error)

    def stats(self) -> dict:
        s = super().stats()
        s["resyncs"] = self.resyncs
        s["stream_restarts"] = self.stream_restarts
        s["down_for_s"] = round(time.monotonic() - self._down_since, 1) if self._down_since else 0.0
        return s


def _short(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
