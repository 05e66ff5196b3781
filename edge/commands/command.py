"""``sonotrap command sign``: produce a signed MQTT command for one device.

Devices obey ``cmd/*`` only when the command is signed by a fleet key they trust, addressed
to them and fresh (see :mod:`edge.models.update.command_auth`); this is how an operator makes
one. It prints the payload (or, with ``--json``, the topic too); publish it within
``update.command_window_s`` (default 5 minutes) of signing.
"""

from __future__ import annotations

import argparse
import json

from edge.errors import SonotrapError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("sign", help="sign a command for one device and print the MQTT payload")
    p.add_argument("payload", metavar="COMMAND", help="the command as JSON, e.g. '{\"version\": \"1.2.0\"}', '{}' (check now), "
                                   "'{\"action\": \"rollback\"}'")
    p.add_argument("--key", required=True, metavar="PATH", help="the fleet's private key (from 'sonotrap bundle keygen')")
    p.add_argument("--device", required=True, metavar="ID", help="the device id the command is for")
    p.add_argument("--topic", default="update", help="the command topic under cmd/ (default: update)")
    p.add_argument("--prefix", default="sonotrap", help="MQTT topic prefix (mqtt.prefix) for the printed topic")
    p.add_argument("--json", action="store_true", help="print {\"topic\", \"payload\"} as one JSON line")


def run(args: argparse.Namespace) -> int:
    from edge.models.update.command_auth import sign_command

    try:
        command = json.loads(args.payload)
    except ValueError as err:
        raise SonotrapError(f"command {args.payload[:60]!r} is not JSON ({err}); e.g. '{{\"version\": \"1.2.0\"}}'") from None
    payload = sign_command(args.key, args.device, command, topic=args.topic).decode()
    topic = f"{args.prefix}/{args.device}/cmd/{args.topic}"
    if args.json:
        print(json.dumps({"topic": topic, "payload": payload}))
    else:
        print(payload)
    return 0
