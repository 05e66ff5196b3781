"""Ranges for every numeric setting and character sets for every string setting.

Why: a value of the right *type* can still take the daemon down far from the config file:
``model.hop_s = inf`` hangs the pipeline, ``mqtt.keepalive_s = 1e20`` kills paho's thread
silently, ``model.threads = 100000`` segfaults onnxruntime, ``mqtt.host = ""`` fails deep in
a socket call. Every setting therefore has a range or a character set here, checked by
``Config.validate`` with a one-line error that names the key, the limits and the fix. A
setting missing from these tables still gets the generic checks (finite number of sane size,
printable string of bounded length), and the tests insist that every setting is listed.

Also: warnings for secrets (a password file, a TLS key, a config file holding a password)
that group or others may read.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, NoReturn

from edge.errors import SonotrapError

log = logging.getLogger("sonotrap.config")

MIN_SAMPLE_RATE = 8000  # below this no call we detect survives; a 1 Hz "recording" is an error
MAX_SAMPLE_RATE = 384_000
_DAY = 86_400.0

# dotted name -> (low, high), both inclusive
RANGES: dict[str, tuple[float, float]] = {
    "audio.sample_rate": (MIN_SAMPLE_RATE, MAX_SAMPLE_RATE),
    "audio.channels": (1, 64),
    "audio.channel": (0, 63),
    "audio.block_s": (0.005, 10.0),
    "audio.stdin_rate": (MIN_SAMPLE_RATE, MAX_SAMPLE_RATE),
    "audio.stdin_channels": (1, 64),
    "audio.queue_s": (0.1, 3600.0),
    "audio.silence_timeout_s": (0.0, _DAY),
    "audio.retry_initial_s": (0.01, 3600.0),
    "audio.retry_max_s": (0.01, _DAY),
    "audio.device_timeout_s": (0.0, 365 * _DAY),
    "audio.device": (0, 1023),  # when given as an index
    "model.threads": (1, 64),
    "model.hop_s": (0.01, 60.0),
    "model.max_batch": (1, 1024),
    "detector.thresholds": (0.0, 1.0),
    "detector.default_threshold": (0.0, 1.0),
    "detector.max_gap_hops": (0, 10_000),
    "detector.min_hops": (1, 10_000),
    "detector.min_report_interval_s": (0.0, _DAY),
    "detector.max_event_s": (0.0, _DAY),
    "gate.threshold_db": (0.5, 60.0),
    "gate.bands": (1, 256),
    "gate.smooth_s": (0.0, 2.0),
    "gate.floor_quantile": (0.0, 0.99),
    "gate.floor_rise_db_per_s": (0.0, 100.0),
    "gate.hold_s": (0.0, 60.0),
    "mqtt.port": (1, 65535),
    "mqtt.keepalive_s": (5, 65535),  # MQTT encodes it in 16 bits
    "mqtt.reconnect_min_s": (0.01, 3600.0),
    "mqtt.reconnect_max_s": (0.01, _DAY),
    "mqtt.status_interval_s": (1.0, _DAY),
    "mqtt.qos": (1, 2),  # QoS 0 would lose detections while the broker is away
    "mqtt.max_inflight": (1, 65535),
    "mqtt.session_expiry_s": (0, 2**32 - 1),  # MQTT 5: 32 bits
    "mqtt.connect_timeout_s": (0.1, 600.0),
    "outbox.max_messages": (1, 10_000_000),
    "outbox.retry_s": (0.1, _DAY),
    "clips.pre_s": (0.0, 60.0),
    "clips.post_s": (0.0, 60.0),
    "clips.quota_mb": (0.01, 10_000_000.0),
    "update.keep_versions": (1, 100),
    "update.max_download_mb": (0.01, 100_000.0),
    "update.min_free_mb": (0.0, 10_000_000.0),
    "update.health_timeout_s": (1.0, _DAY),
    "update.jitter_s": (0.0, _DAY),
    "update.http_timeout_s": (0.1, 3600.0),
    "update.verify_timeout_s": (1.0, _DAY),
    "update.deadline_s": (1.0, _DAY),
    "update.verify_memory_mb": (256.0, 1_000_000.0),
    "update.command_window_s": (10.0, _DAY),
}
_GENERIC_RANGE = (-1e9, 1e9)

_NAME = (r"[A-Za-z0-9_.\-]{1,64}", "1-64 characters from A-Z a-z 0-9 _ . -")
_TOPIC = (r"[A-Za-z0-9_.\-]{1,64}(/[A-Za-z0-9_.\-]{1,64}){0,7}",
          "topic levels of A-Z a-z 0-9 _ . - separated by single '/' (no '#', '+', spaces)")
_PATH = (r"[^\x00-\x1f\x7f]{1,4096}", "a non-empty path without control characters")
_TEXT = (r"[^\x00-\x1f\x7f]{1,256}", "1-256 characters without control characters")
_URL = (r"https?://[^\s\x00-\x1f\x7f]{1,2040}", "an http:// or https:// URL without spaces")

# dotted name -> (regex that must match the whole value, what it allows)
CHARSETS: dict[str, tuple[str, str]] = {
    "state_dir": _PATH,
    "log_level": (r"[A-Za-z]{1,16}", "a level name such as INFO"),
    "audio.source": _NAME,
    "audio.device": _TEXT,
    "audio.file": _PATH,
    "audio.stdin_format": _NAME,
    "model.bundle": _PATH,
    "detector.thresholds": (r"[^\x00-\x1f\x7f]{1,128}", "label names without control characters"),
    "detector.include": (r"[^\x00-\x1f\x7f]{1,128}", "label names without control characters"),
    "detector.exclude": (r"[^\x00-\x1f\x7f]{1,128}", "label names without control characters"),
    "detector.enable_labels": (r"[^\x00-\x1f\x7f]{1,128}", "label names (or \"all\") without control characters"),
    "mqtt.host": (r"[A-Za-z0-9_.\-:%\[\]]{1,253}", "a host name or IP address"),
    "mqtt.prefix": _TOPIC,
    "mqtt.device_id": _NAME,
    "mqtt.client_id": (r"[A-Za-z0-9_.\-:]{1,128}", "1-128 characters from A-Z a-z 0-9 _ . - :"),
    "mqtt.username": _TEXT,
    "mqtt.password": (r"[^\x00\n\r]{1,256}", "1-256 characters without NUL or line breaks"),
    "mqtt.password_file": _PATH,
    "mqtt.ca_file": _PATH,
    "mqtt.cert_file": _PATH,
    "mqtt.key_file": _PATH,
    "mqtt.protocol": (r"3\.1\.1|5", "'3.1.1' or '5'"),
    "mqtt.discovery_prefix": _TOPIC,
    "outbox.path": _PATH,
    "outbox.synchronous": _NAME,
    "clips.dir": _PATH,
    "update.channel": _NAME,
    "update.url": _URL,
    "update.local_dir": _PATH,
    "update.allowed_base_urls": _URL,
    "update.trusted_keys_dir": _PATH,
}
_GENERIC_CHARSET = _PATH


def check_bounds(cfg: Any) -> None:
    """Raise SonotrapError for the first setting outside its range or character set."""
    for name, value in _leaves(cfg, ""):
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            _check_number(name, value)
        elif isinstance(value, str):
            _check_string(name, value)


def _leaves(obj: Any, where: str):
    """(dotted name, value) for every scalar setting; list items and table values share the
    name of their setting, table keys are checked against the same charset."""
    for f in dataclasses.fields(obj):
        name = f"{where}.{f.name}" if where else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, name)
        elif isinstance(value, dict):
            for k, v in value.items():
                yield name, k
                yield name, v
        elif isinstance(value, list):
            for v in value:
                yield name, v
        else:
            yield name, value


def _check_number(name: str, value: float) -> None:
    low, high = RANGES.get(name, _GENERIC_RANGE)
    if not math.isfinite(value) or not low <= value <= high:
        raise SonotrapError(f"config: {name} {value!r} is out of range; use a value within {low:g}..{high:g}")


def _check_string(name: str, value: str) -> None:
    pattern, allowed = CHARSETS.get(name, _GENERIC_CHARSET)
    if not re.fullmatch(pattern, value):
        raise SonotrapError(f"config: {name} {value!r} is not allowed; it must be {allowed}")


def secret_warnings(cfg: Any, config_path: str | Path | None = None) -> list[str]:
    """One line per secret that group or others can read (or that is not a regular file)."""
    found = []
    mqtt = cfg.mqtt
    for key in ("password_file", "key_file"):
        path = getattr(mqtt, key)
        if path:
            found.append((f"mqtt.{key}", Path(path)))
    if mqtt.password and config_path is not None:
        found.append(("the config file holding mqtt.password", Path(config_path)))
    out = []
    for what, path in found:
        try:
            st = os.stat(path)
        except OSError:
            continue  # a missing file is reported where it is opened
        if stat.S_IMODE(st.st_mode) & 0o077:
            out.append(
                f"{what} {path} can be read by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                f"run: chmod 600 {path}"
            )
    return out


def warn_about_secrets(cfg: Any, config_path: str | Path | None = None) -> None:
    for line in secret_warnings(cfg, config_path):
        log.warning("%s", line)


# ---------------------------------------------------------------- checks the config sections use


def bad(name: str, reason: str) -> NoReturn:
    """Stop with the one-line config error ``config: NAME REASON``."""
    raise SonotrapError(f"config: {name} {reason}")


def choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        bad(name, f"{value!r} must be one of {', '.join(map(repr, allowed))}")


def positive(name: str, value: float) -> None:
    if not value > 0:
        bad(name, f"{value!r} must be > 0")


def at_least(name: str, value: float, low: float) -> None:
    if value < low:
        bad(name, f"{value!r} must be >= {low}")
