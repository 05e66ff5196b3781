"""JSON payloads sent over MQTT: one versioned schema, documented in docs/mqtt.md.

Field names here are a public contract (Home Assistant templates, Node-RED flows and
databases read them), so they only ever get *added*; a rename or a change of meaning bumps
``SCHEMA_VERSION``. Pure functions: the caller passes the clock, so payloads are testable.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

SCHEMA_VERSION = 1


class EventLike(Protocol):
    """What :func:`detection_payload` reads from ``edge.inference.detector.DetectionEvent``."""

    id: str
    label: str
    name: str
    state: str
    start: float
    end: float
    peak_score: float
    mean_score: float
    hops: int


@dataclass
class MessageContext:
    """What every detection message says about where it came from."""

    device: str
    model_name: str
    model_version: str
    hop_s: float
    window_s: float


@dataclass
class FileOffset:
    """Seconds from the start of a replayed file (a looped file wraps at its length)."""

    file: str  # the file's name, without its directory
    start_s: float
    end_s: float


def iso_utc(epoch: float) -> str:
    """``2026-11-25T05:51:11.123Z``: UTC, millisecond precision, always with ``Z``."""
    dt = datetime.fromtimestamp(epoch, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def detection_payload(
    event: EventLike, ctx: MessageContext, now: float | None = None, offset: FileOffset | None = None
) -> dict[str, Any]:
    """The ``.../detections`` message for one event (``state`` "started" or "ended").

    ``offset``: where the event lies in a replayed recording (file sources only), so a
    listener can find the call in the file; ``start``/``end`` stay wall-clock times.
    """
    now = time.time() if now is None else now
    payload = {
        "schema_version": SCHEMA_VERSION,
        "id": event.id,
        "device": ctx.device,
        "label": event.label,
        "name": event.name,
        "state": event.state,
        "score": round(float(event.peak_score), 4),
        "mean_score": round(float(event.mean_score), 4),
        "hops": int(event.hops),
        "start": iso_utc(event.start),
        "end": iso_utc(event.end),
        "start_epoch": round(float(event.start), 3),
        "end_epoch": round(float(event.end), 3),
        "duration_s": round(float(event.end) - float(event.start), 3),
        "model": {"name": ctx.model_name, "version": ctx.model_version},
        "hop_s": float(ctx.hop_s),
        "window_s": float(ctx.window_s),
        "published_at": iso_utc(now),
    }
    if offset is not None:
        payload["offset"] = {"file": offset.file, "start_s": round(offset.start_s, 3), "end_s": round(offset.end_s, 3)}
    return payload


def status_payload(
    device: str, state: str, fields: dict[str, Any] | None = None, now: float | None = None
) -> dict[str, Any]:
    """The retained ``.../status`` message; ``fields`` come from the daemon and publisher."""
    now = time.time() if now is None else now
    payload: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "device": device,
        "state": state,
        "ts": iso_utc(now),
        "ts_epoch": round(now, 3),
    }
    for key, value in (fields or {}).items():
        payload.setdefault(key, value)
    return payload


def offline_payload(device: str, reason: str, now: float | None = None) -> dict[str, Any]:
    """``state: offline``: the Last Will (``reason`` "connection lost") and clean shutdown."""
    return status_payload(device, "offline", {"reason": reason}, now)


def event_payload(device: str, kind: str, data: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """A ``.../events`` message (``model_changed``, ``audio_error``, ...); ``id`` for dedup."""
    now = time.time() if now is None else now
    return {
        "schema_version": SCHEMA_VERSION,
        "id": uuid.uuid4().hex,
        "device": device,
        "event": kind,
        "ts": iso_utc(now),
        "ts_epoch": round(now, 3),
        "data": data,
    }


def encode(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as sent on the wire."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def status_fields(daemon_fields: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """The online status body: the daemon's fields plus the publisher's outbox and MQTT counters.

    The top-level ``state`` of a status message is online/offline, so the daemon's own state
    moves to ``daemon_state``; outbox problems appear only while there are any.
    """
    fields = dict(daemon_fields)
    if "state" in fields:
        fields["daemon_state"] = fields.pop("state")
    fields.setdefault("outbox_depth", stats["outbox_depth"])
    fields.setdefault("outbox_dropped", stats["dropped"])
    fields.setdefault("outbox_mode", stats["outbox_mode"])
    for key in ("outbox_error", "outbox_unpersisted", "outbox_recovered"):
        if stats.get(key):
            fields.setdefault(key, stats[key])
    fields.setdefault(
        "mqtt", {"published": stats["published"], "reconnects": stats["reconnects"], "inflight": stats["inflight"]},
    )
    return fields
