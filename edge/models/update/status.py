"""The updater's record: ``update-status.json`` (outcomes, failed versions) and the history.

Kept apart from the procedure because the daemon reads it too (its status reports the
store's versions and the last update's outcome), and because the record of failed and
blocked versions is what keeps a bad bundle from being retried on every poll.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge.models.store import ModelStore, StoredModel, store_root
from edge.util.jsonio import read_json, write_json_atomic

UPDATE_STATUS_FILE = "update-status.json"
HISTORY_FILE = "update-history.jsonl"


@dataclass
class UpdateResult:
    """Outcome of one update attempt (also what ``update-status.json`` keeps as last_update)."""

    result: str  # "updated" | "up-to-date" | "rejected" | "rolled-back" | "failed" | "installed"
    version: str | None = None
    previous: str | None = None
    reason: str = ""
    source: str = ""
    time: float = field(default_factory=time.time)
    steps: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result in ("updated", "up-to-date", "installed")

    def to_dict(self) -> dict:
        return asdict(self)


class UpdateStatus:
    """``<state_dir>/update-status.json``: current/previous, last check/update, failed versions."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / UPDATE_STATUS_FILE

    def doc(self) -> dict:
        return read_json(self.path) or {}

    def failure(self, version: str) -> dict | None:
        """The recorded failure (or operator block) of ``version``, if any."""
        return self.doc().get("failed", {}).get(version)

    def remember_failure(self, key: str, sha256: str | None, reason: str) -> None:
        doc = self.doc()
        doc.setdefault("failed", {})[key] = {"sha256": sha256, "reason": reason, "time": time.time()}
        self._write(doc)

    def block(self, version: str, reason: str) -> None:
        """Automatic updates must not install ``version`` again (an operator rolled it back)."""
        doc = self.doc()
        doc.setdefault("failed", {})[version] = {"blocked": True, "reason": reason, "time": time.time()}
        self._write(doc)

    def unblock(self, version: str) -> None:
        doc = self.doc()
        if doc.get("failed", {}).pop(version, None) is not None:
            self._write(doc)

    def set_commands(self, counts: dict) -> None:
        """The MQTT command counters (accepted, refused, last refusal) shown in the status."""
        doc = self.doc()
        doc["commands"] = {**doc.get("commands", {}), **counts}
        self._write(doc)

    def finish(self, res: UpdateResult, cur: StoredModel | None, prev: StoredModel | None, record: bool = True) -> None:
        """Record the store's versions and (``record``) the attempt, also in the history file."""
        doc = self.doc()
        doc["current"] = cur.version if cur else None
        doc["previous"] = prev.version if prev else None
        doc["last_check"] = time.time()
        if record:
            doc["last_update"] = res.to_dict()
            append_history(self.state_dir, res)
        self._write(doc)

    def _write(self, doc: dict) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, doc)


def append_history(state_dir: Path, res: UpdateResult) -> None:
    """One JSON line per update attempt, in $LOGS_DIRECTORY (systemd) or the state dir."""
    logs = os.environ.get("LOGS_DIRECTORY")
    path = (Path(logs.split(":")[0]) if logs else state_dir) / HISTORY_FILE
    with contextlib.suppress(OSError):
        with open(path, "a") as fh:
            fh.write(json.dumps(res.to_dict()) + "\n")


def update_status_summary(state_dir: str | Path) -> dict:
    """For the daemon's status: the store's current/previous versions and the last update's outcome.

    Cheap (two symlinks, two small JSON files), so the daemon can call it for every status.
    """
    store = ModelStore(store_root(state_dir))
    cur, prev = store.current(), store.previous()
    doc = UpdateStatus(state_dir).doc()
    last = doc.get("last_update") or {}
    return {
        "current": cur.version if cur else None,
        "previous": prev.version if prev else None,
        "last_update": {k: last.get(k) for k in ("result", "version", "previous", "reason", "time")} if last else None,
        "commands": doc.get("commands"),
    }
