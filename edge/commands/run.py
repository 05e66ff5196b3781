"""``sonotrap run``: the streaming detector (microphone / file / stdin -> MQTT).

Settings come from the TOML config (``/etc/sonotrap/config.toml`` when it exists), then
``--set section.key=value``, then the dedicated flags below, later ones winning.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from edge.config import DEFAULT_CONFIG_PATH, Config, load_config
from edge.errors import SonotrapError

log = logging.getLogger("sonotrap.run")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by run / check / analyze: config file and overrides."""
    parser.add_argument("--config", metavar="PATH",
                        help=f"TOML config (default: {DEFAULT_CONFIG_PATH} if it exists, else built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set detector.min_hops=2 (repeatable)")
    parser.add_argument("--model", metavar="PATH", help="model bundle dir or .tar.gz (default: models/demo)")
    parser.add_argument("--threads", type=int, metavar="N", help="onnxruntime threads (model.threads)")
    parser.add_argument("--hop", type=float, metavar="SECONDS", help="seconds between windows (model.hop_s)")
    parser.add_argument("--state-dir", metavar="DIR", help="status.json, outbox and clips go here (state_dir)")
    parser.add_argument("--enable-labels", metavar="all|A,B",
                        help="also publish labels the bundle ships disabled as unreliable (detector.enable_labels)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    src = parser.add_argument_group("audio")
    src.add_argument("--source", choices=("mic", "file", "stdin"), help="audio source (audio.source)")
    src.add_argument("--device", metavar="NAME|INDEX", help="input device name substring or index (audio.device)")
    src.add_argument("--file", metavar="PATH", help="replay a recording (implies --source file)")
    pace = src.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=None,
                      help="replay the file at real-time pace (default)")
    pace.add_argument("--fast", dest="realtime", action="store_false", help="replay the file as fast as possible")
    src.add_argument("--loop", action="store_true", default=None, help="loop the file forever")
    src.add_argument("--sample-rate", type=int, metavar="HZ", help="capture rate (audio.sample_rate)")
    out = parser.add_argument_group("output")
    out.add_argument("--broker", metavar="HOST[:PORT]", help="MQTT broker (mqtt.host / mqtt.port); 'none' disables MQTT")
    out.add_argument("--no-mqtt", action="store_true", help="do not connect to a broker (mqtt.enabled = false)")
    out.add_argument("--device-id", metavar="ID", help="device id in topics and payloads (mqtt.device_id)")
    out.add_argument("--jsonl", metavar="PATH|-", help="also write each detection as a JSON line ('-' = stdout)")
    out.add_argument("--hops-jsonl", metavar="PATH", help="write every hop's scores as JSON lines (debugging, tests)")


def _toml(value) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the config file and apply --set and the dedicated flags (flags win)."""
    path = args.config
    if path is None and DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH
    overrides = list(getattr(args, "overrides", []) or [])
    flag: dict[str, Any] = {}
    if getattr(args, "model", None):
        flag["model.bundle"] = str(Path(args.model).expanduser())
    for attr, key in (("threads", "model.threads"), ("hop", "model.hop_s"), ("state_dir", "state_dir"),
                      ("source", "audio.source"), ("sample_rate", "audio.sample_rate"),
                      ("realtime", "audio.realtime"), ("loop", "audio.loop"), ("device_id", "mqtt.device_id")):
        value = getattr(args, attr, None)
        if value is not None:
            flag[key] = value
    if getattr(args, "file", None):
        flag["audio.file"] = str(Path(args.file).expanduser())
        flag.setdefault("audio.source", "file")
    enable = getattr(args, "enable_labels", None)
    if enable is not None:
        flag["detector.enable_labels"] = enable if enable == "all" else [x.strip() for x in enable.split(",") if x.strip()]
    device = getattr(args, "device", None)
    if device is not None:
        flag["audio.device"] = int(device) if device.isdigit() else device
    broker = getattr(args, "broker", None)
    if getattr(args, "no_mqtt", False) or (broker and broker.lower() == "none"):
        flag["mqtt.enabled"] = False
    elif broker:
        host, _, port = broker.rpartition(":") if ":" in broker else (broker, "", "")
        if (port and not port.isdigit()) or not host:
            raise SonotrapError(f"--broker {broker!r} must look like HOST or HOST:PORT (port a number)")
        flag["mqtt.host"] = host.strip("[]")
        if port:
            flag["mqtt.port"] = int(port)
        flag["mqtt.enabled"] = True
    overrides += [f"{k}={json.dumps(v) if isinstance(v, list) else _toml(v)}" for k, v in flag.items()]
    return load_config(path, overrides)


def make_publisher(cfg: Config):
    """The MQTT publisher with its on-disk outbox, or None when MQTT is disabled."""
    if not cfg.mqtt.enabled:
        return None
    from edge.mqtt.discovery import RECORD_FILE
    from edge.mqtt.outbox import Outbox
    from edge.mqtt.publisher import Publisher
    from edge.util.identity import device_id

    outbox = Outbox.from_config(cfg.outbox, cfg.state_dir)  # path, size bound, fsync policy, disk retry
    return Publisher(cfg.mqtt, outbox, device_id(cfg.mqtt.device_id), ha_record=Path(cfg.state_dir) / RECORD_FILE)


def run(args: argparse.Namespace) -> int:
    from edge.models.bundle import load_bundle
    from edge.service.daemon import Daemon, model_bundle_path

    cfg = config_from_args(args)
    if args.verbose:
        cfg.log_level = "DEBUG"
    logging.getLogger().setLevel(cfg.log_level.upper())
    if cfg.audio.source == "file" and not Path(cfg.audio.file or "").is_file():
        raise SonotrapError(f"audio file {cfg.audio.file} does not exist; check --file / audio.file")
    ensure_state_dir(cfg.state_dir)
    bundle = load_bundle(model_bundle_path(cfg))
    publisher = make_publisher(cfg)
    daemon = Daemon(cfg, bundle=bundle, publisher=publisher, jsonl=args.jsonl, hops_jsonl=args.hops_jsonl)
    if publisher is not None:  # MQTT .../cmd/update: verified update + in-process hot swap (edge/models/update/)
        from edge.models.update.attach import attach_mqtt_updates

        attach_mqtt_updates(cfg, daemon, publisher, config_path=args.config)
    return daemon.run()


def ensure_state_dir(path: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SonotrapError(
            f"state directory {path} cannot be created ({err.strerror or err}); pass --state-dir or fix permissions"
        ) from None
