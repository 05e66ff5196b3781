"""``sonotrap update``: check for a newer model and install it safely (see edge/models/update/).

Run by ``sonotrap-update.timer`` (with ``--no-jitter``: the timer randomises itself) or by
hand. Exit status: 0 updated / up to date / installed, 1 rejected or rolled back, 2 bad usage,
75 refused because another update activity (the daemon's MQTT command, another ``sonotrap
update`` or ``sonotrap model``) holds the device's update lock (see edge/models/update/lock.py).
"""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger("sonotrap.update")


def add_common(parser: argparse.ArgumentParser) -> None:
    """--config / --set / --state-dir, as for ``sonotrap run``."""
    parser.add_argument("--config", metavar="PATH", help="TOML config (default: /etc/sonotrap/config.toml if it exists)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set update.channel=beta (repeatable)")
    parser.add_argument("--state-dir", metavar="DIR", help="where the model store and status live (state_dir)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--check", action="store_true", help="only say whether an update is available")
    parser.add_argument("--source", dest="update_source", metavar="local:DIR|URL",
                        help="where to look (default: update.url, else update.local_dir)")
    parser.add_argument("--channel", metavar="NAME", help="index channel to follow (update.channel)")
    parser.add_argument("--version", dest="model_version", metavar="VERSION",
                        help="install exactly this version (an older one needs --allow-downgrade)")
    parser.add_argument("--allow-downgrade", action="store_true",
                        help="allow installing a version older than the current one (update.allow_downgrade)")
    parser.add_argument("--if-configured", action="store_true",
                        help="exit 0 quietly when no update source is configured (what the timer runs)")
    jit = parser.add_mutually_exclusive_group()
    jit.add_argument("--no-jitter", action="store_true", help="poll at once (the systemd timer randomises itself)")
    jit.add_argument("--jitter", type=float, metavar="SECONDS", help="random delay before polling (update.jitter_s)")


def load(args: argparse.Namespace):
    from edge.commands.run import config_from_args

    cfg = config_from_args(args)
    return cfg


def run(args: argparse.Namespace) -> int:
    from edge.models.update.events import MqttEvents
    from edge.models.update.procedure import Updater

    cfg = load(args)
    if args.if_configured and not (args.update_source or cfg.update.url or cfg.update.local_dir):
        log.info("no update source configured (update.url / update.local_dir); nothing to do")
        return 0
    if args.check:
        up = Updater(cfg, config_path=args.config)
        offer = up.check(args.update_source, args.channel, args.model_version)
        cur = up.store.current()
        result = {"current": cur.version if cur else None, "available": offer.version if offer else None,
                  "url": offer.location if offer else None}
        if args.json:
            print(json.dumps(result))
        elif offer is None:
            print(f"up to date ({result['current'] or 'no model installed'})")
        else:
            print(f"update available: {result['current'] or 'none'} -> {offer.version} ({offer.location})")
        return 0
    events = MqttEvents(cfg)
    try:
        up = Updater(cfg, report=events, config_path=args.config)
        up.jitter(0.0 if args.no_jitter else args.jitter)
        res = up.update(args.update_source, args.channel, args.model_version, allow_downgrade=args.allow_downgrade)
    finally:
        events.close()
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        msg = {
            "updated": f"updated {res.previous} -> {res.version}; the daemon runs it",
            "installed": f"installed {res.version} (daemon not running: used at its next start)",
            "up-to-date": f"up to date ({res.version or 'no model installed'})",
        }.get(res.result, f"update {res.result}: {res.reason}")
        print(msg)
    return 0 if res.ok else 1
