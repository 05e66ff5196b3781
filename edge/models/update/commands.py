"""``cmd/update`` payloads: what an MQTT command asks the updater to do.

Parsing is kept apart from acting on it so the rules for accepting a command from the broker
live in one place.
"""

from __future__ import annotations

import json

from edge.errors import SonotrapError

COMMAND_FIELDS = ("version", "url", "sha256", "size", "channel")


def parse_command(payload: bytes) -> dict:
    """``cmd/update`` payload -> {"version": ...} or {"url": ..., "sha256": ...} or {"check": True}.

    Accepts JSON (``{"version": "1.2.0"}``, ``{"url": "...", "sha256": "..."}``, ``{}`` = check
    the channel now, ``{"action": "rollback"}``) or a bare string (a URL or a version).
    """
    text = payload.decode("utf-8", "replace").strip()
    if not text:
        return {"check": True}
    try:
        data = json.loads(text)
    except ValueError:
        data = text
    if isinstance(data, str):
        return {"url": data} if "://" in data else {"version": data}
    if not isinstance(data, dict):
        raise SonotrapError(f"cmd/update payload {text[:80]!r} must be a JSON object, a version or a URL")
    out = {k: data[k] for k in COMMAND_FIELDS if data.get(k) is not None}
    if data.get("action") == "rollback":
        out["rollback"] = True
    return out or {"check": True}
