"""``sonotrap ha-cleanup``: remove this device's entities from Home Assistant.

Publishes an empty retained payload on every discovery config the daemon announced (the
record in ``<state_dir>/homeassistant.json``) and on those the configured model's labels
would use (also the sensors of older sonotrap versions), then forgets the record. Home
Assistant deletes an MQTT entity whose retained config becomes empty. Safe to repeat.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from edge.errors import SonotrapError

log = logging.getLogger("sonotrap.ha_cleanup")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from edge.commands.run import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--broker", metavar="HOST[:PORT]", help="MQTT broker (mqtt.host / mqtt.port)")
    parser.add_argument("--device-id", metavar="ID", help="device id in topics (mqtt.device_id)")


def config_topics(cfg, device: str) -> set[str]:
    """Every config topic this device may have announced: the record plus the model's labels."""
    from edge.mqtt import discovery as ha
    from edge.service.daemon import model_bundle_path

    topics = ha.read_record(Path(cfg.state_dir) / ha.RECORD_FILE) or set()
    prefix = cfg.mqtt.discovery_prefix
    topics.add(ha.status_topic_config(prefix, device))
    try:
        from edge.models.bundle import load_bundle

        labels = load_bundle(model_bundle_path(cfg), self_test=False).labels
    except SonotrapError as err:
        log.warning("model not readable (%s); removing the recorded configs only", err)
        labels = []
    for label in labels:
        topics.add(ha.event_topic(prefix, device, label))
        topics.add(ha.legacy_sensor_topic(prefix, device, label))
    return topics


def run(args: argparse.Namespace) -> int:
    from edge.commands.run import config_from_args
    from edge.mqtt import discovery as ha
    from edge.mqtt.connection import publish_retained
    from edge.util.identity import device_id

    cfg = config_from_args(args)
    device = device_id(cfg.mqtt.device_id)
    topics = config_topics(cfg, device)
    where = publish_retained(cfg.mqtt, device, [(t, b"") for t, _ in ha.removal_messages(topics)])
    (Path(cfg.state_dir) / ha.RECORD_FILE).unlink(missing_ok=True)
    print(f"removed {len(topics)} Home Assistant discovery config(s) of device {device} "
          f"under {cfg.mqtt.discovery_prefix}/ on {where}")
    return 0
