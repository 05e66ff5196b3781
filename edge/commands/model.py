"""``sonotrap model list|activate VERSION|rollback|install PATH``: the on-device model store.

``activate`` and ``rollback`` switch the ``current`` link atomically, hot-swap the running
daemon (SIGHUP) and wait for it to report healthy -- rolling back by themselves otherwise.
"""

from __future__ import annotations

import argparse
import json
import time

from edge.commands.update import add_common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="installed models (current, previous)")
    add_common(p)
    p = sub.add_parser("activate", help="switch to an installed version and hot-swap the daemon")
    p.add_argument("version")
    add_common(p)
    p = sub.add_parser("rollback", help="go back to the previous model")
    add_common(p)
    p = sub.add_parser("install", help="verify and install a bundle (dir or .tar.gz) into the store")
    p.add_argument("bundle")
    p.add_argument("--activate", action="store_true", help="also switch to it (with health check)")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from edge.commands.update import load
    from edge.models.update.events import MqttEvents
    from edge.models.update.procedure import Updater

    cfg = load(args)
    if args.action == "list":
        up = Updater(cfg, config_path=args.config)
        models = up.store.list()
        if args.json:
            print(json.dumps([m.to_dict() for m in models], indent=2))
            return 0
        if not models:
            print(f"no models installed in {up.store.root}")
            return 0
        for m in models:
            mark = "*" if m.current else "p" if m.previous else " "
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.installed_at))
            signer = f"key {m.key_id}" if m.key_id else "unsigned"
            print(f"{mark} {m.name:<28} {m.version:<14} installed {when}  {signer}")
        print("(* current, p previous)")
        return 0
    events = MqttEvents(cfg) if args.action != "install" or args.activate else None
    try:
        up = Updater(cfg, report=events, config_path=args.config)
        if args.action == "install":
            with up.lock.hold("model install"):  # one update activity at a time (edge.models.update.lock)
                stored = up.store.install(args.bundle, trusted_keys=up.trusted_keys,
                                          allow_unsigned=cfg.update.allow_unsigned, label=args.bundle,
                                          timeout_s=cfg.update.verify_timeout_s,
                                          memory_mb=cfg.update.verify_memory_mb)
            print(f"installed {stored.name} {stored.version} ({stored.dirname})")
            if not args.activate:
                return 0
            res = up.activate(stored.dirname)
        elif args.action == "activate":
            res = up.activate(args.version)
        else:
            res = up.rollback()
    finally:
        if events is not None:
            events.close()
    if args.json:
        print(json.dumps(res.to_dict()))
    elif res.ok:
        print(f"now running {res.version}" + (f" (previous {res.previous})" if res.previous else ""))
    else:
        print(f"{res.result}: {res.reason}")
    return 0 if res.ok else 1
