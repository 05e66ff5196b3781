"""PortAudio device discovery: import sounddevice with a clear error, find devices, probe rates.

PortAudio enumerates devices once, in ``Pa_Initialize``; a USB microphone plugged in (or a
PulseAudio server started) later is only seen after :func:`rescan`, which the microphone
source calls before each retry while no stream is open.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
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


def rescan() -> None:
    """Re-initialise PortAudio so devices that appeared since start are listed."""
    sd = sounddevice()
    try:
        sd._terminate()
        sd._initialize()
    except Exception as err:  # PortAudio in a bad state: the next open attempt reports it
        log.debug("PortAudio re-initialisation failed: %s", err)


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
