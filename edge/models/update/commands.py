"""``cmd/update`` payloads: what an MQTT command asks the updater to do.

Parsing is kept apart from acting on it so the rules for accepting a command from the broker
live in one place.
"""

from __future__ import annotations

import json
import re

from edge.errors import SonotrapError

COMMAND_FIELDS = ("version", "url", "sha256", "size", "channel")
MAX_FIELD_CHARS = 1024
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _short(v: object) -> str:
    """A bounded description of a bad value: its type, never its (possibly huge) content."""
    return f"a {type(v).__name__}"


def _check_text(key: str, v: object) -> None:
    """A field that ends up in URLs, file names, logs and events: one short printable line."""
    if not isinstance(v, str) or not v or len(v) > MAX_FIELD_CHARS or not v.isprintable():
        raise SonotrapError(
            f"cmd/update field {key!r} must be a non-empty string of at most {MAX_FIELD_CHARS} printable characters"
        )


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
    except RecursionError:
        raise SonotrapError("cmd/update payload is nested too deeply; send a flat JSON object") from None
    except ValueError:
        data = text
    if isinstance(data, str):
        _check_text("url" if "://" in data else "version", data)
        return {"url": data} if "://" in data else {"version": data}
    if not isinstance(data, dict):
        raise SonotrapError(f"cmd/update payload ({_short(data)}) must be a JSON object, a version or a URL")
    out = {k: data[k] for k in COMMAND_FIELDS if data.get(k) is not None}
    for k, v in out.items():
        if k == "size":
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise SonotrapError(f"cmd/update field 'size' must be a non-negative integer (bytes), not {_short(v)}")
        else:
            _check_text(k, v)
    if "sha256" in out and not _SHA256.fullmatch(out["sha256"]):
        raise SonotrapError("cmd/update field 'sha256' must be 64 hexadecimal digits")
    if data.get("action") == "rollback":
        out["rollback"] = True
    return out or {"check": True}
