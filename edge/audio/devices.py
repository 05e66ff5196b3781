"""PortAudio device discovery: import sounddevice with a clear error, find devices, probe rates.

PortAudio enumerates devices once, in ``Pa_Initialize``; a USB microphone plugged in (or a
PulseAudio server started) later is only seen after :func:`rescan`, which the microphone
source calls before each retry while no stream is open.

``Pa_Terminate`` frees every stream of the process. Called while another thread is still
inside ``Pa_CloseStream`` (a stream whose device vanished can hang there, and the microphone
abandons such a close after a few seconds) it crashes the interpreter. So streams are opened
and closed through :func:`open_stream` / :func:`close_stream`, which count them, and
:func:`rescan` re-initialises only when no stream of this process is open or closing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from edge.errors import SonotrapError

log = logging.getLogger("sonotrap.audio")

COMMON_RATES = (8000, 16000, 22050, 32000, 44100, 48000, 96000)


def sounddevice() -> Any:
    """The sounddevice module, or a one-line error when PortAudio is missing."""
    try:
        import sounddevice as sd
    except OSError as err:  # raised at import when libportaudio cannot be loaded
        raise SonotrapError(
            f"PortAudio is not available ({err}); install it: apt install libportaudio2"
        ) from None
    except ImportError:
        raise SonotrapError("the sounddevice package is missing; pip install sounddevice") from None
    return sd


_pa_lock = threading.Lock()  # held while PortAudio re-initialises and while streams are counted
_streams = 0  # streams of this process that are open or still closing


def rescan() -> bool:
    """Re-initialise PortAudio so devices that appeared since start are listed.

    Returns False (and leaves PortAudio alone) while a stream of this process is open or
    still closing: terminating under it would crash; the caller retries with the old list.
    """
    sd = sounddevice()
    with _pa_lock:
        if _streams:
            log.debug("PortAudio not re-initialised: %d stream(s) open or closing", _streams)
            return False
        try:
            sd._terminate()
            sd._initialize()
        except Exception as err:  # PortAudio in a bad state: the next open attempt reports it
            log.debug("PortAudio re-initialisation failed: %s", err)
        return True


def open_stream(factory: Callable[[], Any]) -> Any:
    """Create a stream with ``factory()``, counted so :func:`rescan` never terminates under it."""
    global _streams
    with _pa_lock:
        stream = factory()
        _streams += 1
    return stream


def close_stream(stream: Any, timeout_s: float = 3.0) -> bool:
    """Close a stream from :func:`open_stream` in a helper thread; False if it still hangs.

    A stream whose device vanished may hang in ``close()``: the caller must not hang with it.
    The stream stays counted until its close really returns, however late.
    """
    def close() -> None:
        global _streams
        try:
            stream.close(ignore_errors=True)
        finally:
            with _pa_lock:
                _streams -= 1

    t = threading.Thread(target=close, name="sonotrap-audio-close", daemon=True)
    t.start()
    t.join(timeout=timeout_s)
    return not t.is_alive()


def input_devices() -> list[dict]:
    sd = sounddevice()
    out = []
    for dev in sd.query_devices():
        if dev["max_input_channels"] > 0:
            out.append(dict(dev))
    return out


class DeviceMissing(Exception):
    """The configured input device is not (yet) present; the caller retries."""


def find_input_device(spec: str | int | None) -> dict:
    """Resolve ``audio.device`` (index, name or name substring, None = default) to a device dict."""
    sd = sounddevice()
    devices = [dict(d) for d in sd.query_devices()]
    inputs = [d for d in devices if d["max_input_channels"] > 0]
    if not inputs:
        raise DeviceMissing("no audio input devices")
    if spec is None or spec == "":
        idx = sd.default.device[0]
        if idx is None or idx < 0:
            return inputs[0]
        dev = devices[idx]
        if dev["max_input_channels"] <= 0:
            return inputs[0]
        return dev
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        idx = int(spec)
        if idx >= len(devices) or devices[idx]["max_input_channels"] <= 0:
            raise DeviceMissing(f"no input device with index {idx}")
        return devices[idx]
    want = spec.lower()
    exact = [d for d in inputs if d["name"].lower() == want]
    if exact:
        return exact[0]
    partial = [d for d in inputs if want in d["name"].lower()]
    if not partial:
        raise DeviceMissing(f"no input device matches {spec!r}")
    if len(partial) > 1:
        log.warning("audio.device %r matches %s; using %r (give the index to choose)",
                    spec, [d["name"] for d in partial], partial[0]["name"])
    return partial[0]


def supported_rates(device: int, channels: int = 1, rates: tuple[int, ...] = COMMON_RATES) -> list[int]:
    sd = sounddevice()
    ok = []
    for rate in rates:
        try:
            sd.check_input_settings(device=device, samplerate=rate, channels=channels, dtype="float32")
            ok.append(rate)
        except Exception:
            pass
    return ok


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Hide the C-level 'Expression ... failed' lines PortAudio prints for every rejected probe."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def list_input_devices() -> list[dict]:
    """Input devices with ``name, index, hostapi, channels, default_rate, supported_rates``."""
    sd = sounddevice()
    hostapis = sd.query_hostapis()
    out = []
    with quiet_stderr():
        devices = input_devices()
        rates = {dev["index"]: supported_rates(dev["index"]) for dev in devices}
    for dev in devices:
        out.append({
            "name": dev["name"],
            "index": dev["index"],
            "hostapi": hostapis[dev["hostapi"]]["name"],
            "channels": dev["max_input_channels"],
            "default_rate": int(dev["default_samplerate"]),
            "supported_rates": rates[dev["index"]],
        })
    return out
