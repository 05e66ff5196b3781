"""Signed MQTT commands: a device obeys ``cmd/*`` only from its operator, not from the broker.

Anyone who can publish on the broker can send a message to ``<prefix>/<device>/cmd/update``,
so the broker's word is worth nothing. A command is obeyed only when it is

* **signed** by one of the fleet keys the device already trusts for model bundles (ed25519,
  :mod:`edge.models.signing`), over the exact bytes of its body;
* **addressed** to this device (``device`` in the signed body) and to this topic (``topic``);
* **fresh**: ``issued_at`` within ``window_s`` of the device's clock, with a ``nonce`` never
  seen before -- the seen nonces are kept in ``<state_dir>/command-nonces.json`` (bounded:
  entries older than the window are dropped, and at most ``MAX_NONCES`` are kept), so a replay
  is refused even after a restart;
* **small**: the payload's size is checked before anything parses it.

What is published (``sonotrap command sign`` prints it)::

    {"format": "sonotrap-command/1", "key_id": "<16 hex>", "signature": "<base64>",
     "body": "{\\"device\\": \\"rec-1\\", \\"topic\\": \\"update\\", \\"issued_at\\": 1700000000.0,
               \\"nonce\\": \\"<32 hex>\\", \\"command\\": {\\"version\\": \\"1.2.0\\"}}"}

Everything else is refused with a short reason that never echoes the payload.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.errors import SonotrapError
from edge.models.signing import key_id, load_private_key, load_trusted_keys
from edge.util.jsonio import read_json

COMMAND_FORMAT = "sonotrap-command/1"
MAX_COMMAND_BYTES = 4096  # a signed command is ~400 bytes; anything larger is refused unparsed
DEFAULT_WINDOW_S = 300.0  # how far issued_at may lie from the device's clock
MAX_NONCES = 1000  # seen nonces kept (within the window); more commands than that are refused
NONCE_FILE = "command-nonces.json"
_NONCE = re.compile(r"[0-9a-f]{16,64}")


def _finite(x: int | float) -> bool:
    """A number a float can hold (JSON allows NaN, Infinity and 400-digit integers)."""
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


class CommandRefused(SonotrapError):
    """A command that is not obeyed; the message is short and never contains the payload."""


@dataclass
class SignedCommand:
    """A command that passed every check."""

    command: dict[str, Any]
    key_id: str
    nonce: str
    issued_at: float


def sign_command(private_key: str | Path, device: str, command: dict[str, Any], *, topic: str = "update",
                 now: float | None = None) -> bytes:
    """The payload to publish on ``<prefix>/<device>/cmd/<topic>``, signed with ``private_key``."""
    if not isinstance(command, dict):
        raise SonotrapError("a command must be a JSON object, e.g. '{\"version\": \"1.2.0\"}'")
    key = load_private_key(private_key)
    body = json.dumps({
        "device": device,
        "topic": topic,
        "issued_at": round(time.time() if now is None else now, 3),
        "nonce": os.urandom(16).hex(),
        "command": command,
    }, separators=(",", ":"), sort_keys=True)
    doc = {
        "format": COMMAND_FORMAT,
        "key_id": key_id(key.public_key()),
        "body": body,
        "signature": base64.b64encode(key.sign(body.encode())).decode("ascii"),
    }
    payload = json.dumps(doc, separators=(",", ":")).encode()
    if len(payload) > MAX_COMMAND_BYTES:
        raise SonotrapError(f"the signed command is {len(payload)} bytes, over the {MAX_COMMAND_BYTES}-byte limit")
    return payload


class CommandGate:
    """Checks commands for one device; remembers nonces in its state directory."""

    def __init__(self, device: str, trusted_keys: str | Path | None, state_dir: str | Path, *,
                 window_s: float = DEFAULT_WINDOW_S, clock=time.time) -> None:
        self.device = device
        self.trusted_keys = trusted_keys
        self.path = Path(state_dir) / NONCE_FILE
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()

    def check(self, payload: bytes, topic: str) -> SignedCommand:
        """The verified command, or :class:`CommandRefused` naming why (nothing of the payload)."""
        if len(payload) > MAX_COMMAND_BYTES:
            raise CommandRefused(f"command of {len(payload)} bytes is over the {MAX_COMMAND_BYTES}-byte limit")
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[...", nested too deeply
            raise CommandRefused("command is not a signed command (not JSON); sign it with 'sonotrap command sign'") from None
        if not isinstance(doc, dict) or doc.get("format") != COMMAND_FORMAT:
            raise CommandRefused("command is not signed; sign it with 'sonotrap command sign'")
        body, sig, kid = doc.get("body"), doc.get("signature"), doc.get("key_id")
        if not isinstance(body, str) or not isinstance(sig, str) or not isinstance(kid, str):
            raise CommandRefused("signed command lacks body, signature or key_id")
        key = self._key(kid)
        try:
            key.verify(base64.b64decode(sig, validate=True), body.encode())
        except (InvalidSignature, binascii.Error, ValueError):
            raise CommandRefused(f"command signature does not verify with key {kid[:16]}") from None
        return self._accept(body, kid, topic)

    def _key(self, kid: str) -> Ed25519PublicKey:
        if self.trusted_keys is None:
            raise CommandRefused("no trusted keys configured (update.trusted_keys_dir); commands are refused")
        try:
            keys = load_trusted_keys(self.trusted_keys)
        except SonotrapError as err:
            raise CommandRefused(str(err)) from None
        if kid not in keys:
            raise CommandRefused(f"command is signed by key {kid[:16]!r}, which is not trusted")
        return keys[kid]

    def _accept(self, body: str, kid: str, topic: str) -> SignedCommand:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise CommandRefused("signed command body is not JSON (or nested too deeply)") from None
        if not isinstance(data, dict):
            raise CommandRefused("signed command body is not a JSON object")
        if data.get("device") != self.device:
            raise CommandRefused("command is addressed to another device")
        if data.get("topic") != topic:
            raise CommandRefused(f"command was signed for another topic, not cmd/{topic}")
        issued, nonce, command = data.get("issued_at"), data.get("nonce"), data.get("command")
        if not isinstance(issued, int | float) or isinstance(issued, bool) or not _finite(issued):
            raise CommandRefused("signed command has no valid issued_at")
        if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
            raise CommandRefused("signed command has no valid nonce (16-64 lowercase hex digits)")
        if not isinstance(command, dict):
            raise CommandRefused("signed command carries no command object")
        now = self.clock()
        issued = float(issued)
        if abs(now - issued) > self.window_s:
            skew = max(-1e9, min(1e9, now - issued))  # a bounded figure, whatever the body claims
            raise CommandRefused(
                f"command was issued {skew:+.0f} s from now, outside the {self.window_s:.0f} s window "
                "(stale, replayed, or a clock is wrong)"
            )
        with self._lock:
            seen = self._load(now)
            if nonce in seen:
                raise CommandRefused("command was already received (replay)")
            if len(seen) >= MAX_NONCES:
                raise CommandRefused(f"more than {MAX_NONCES} commands within {self.window_s:.0f} s; try later")
            seen[nonce] = float(issued)
            try:
                self._save(seen)
            except OSError as err:  # fail closed: a nonce that is not on disk could be replayed
                raise CommandRefused(f"cannot record the command's nonce ({err.strerror}); command refused") from None
        return SignedCommand(command=command, key_id=kid, nonce=nonce, issued_at=issued)

    def _load(self, now: float) -> dict[str, float]:
        doc = read_json(self.path) or {}
        seen = doc.get("nonces") if isinstance(doc, dict) else None
        if not isinstance(seen, dict):
            return {}
        # older than the window: refused by their timestamp anyway, so they need not be kept
        return {n: t for n, t in seen.items() if isinstance(t, int | float) and abs(now - t) <= self.window_s}

    def _save(self, seen: dict[str, float]) -> None:
        """Atomically and durably: a nonce must survive a power cut that follows the command."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w") as fh:
            json.dump({"nonces": seen}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
