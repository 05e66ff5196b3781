"""``sonotrap devices``: which microphones PortAudio sees and at which rates they can capture."""

from __future__ import annotations

import argparse
import json

from edge.errors import SonotrapError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the list as JSON")


def run(args: argparse.Namespace) -> int:
    from edge.audio import list_input_devices
    from edge.audio.devices import COMMON_RATES, sounddevice

    devices = list_input_devices()
    if not devices:
        raise SonotrapError(
            "no audio input devices found; plug in a microphone (check 'arecord -l') "
            "or start PulseAudio, then run 'sonotrap devices' again"
        )
    if args.json:
        print(json.dumps(devices, indent=2))
        return 0
    default = sounddevice().default.device[0]
    print(f"{'idx':>3}  {'name':<40} {'api':<6} {'ch':>3} {'default':>7}  supported rates ({'/'.join(map(str, COMMON_RATES))})")
    for d in devices:
        mark = "*" if d["index"] == default else " "
        rates = ", ".join(str(r) for r in d["supported_rates"]) or "none of the common rates"
        print(f"{d['index']:>3}{mark} {d['name'][:40]:<40} {d['hostapi'][:6]:<6} {d['channels']:>3} "
              f"{d['default_rate']:>7}  {rates}")
    print("* = default input; select one with audio.device = NAME or INDEX (or --device)")
    return 0
