"""The ``status.json`` contract between the daemon (writer) and the updater (reader).

The daemon rewrites ``<state_dir>/status.json`` every couple of seconds; the out-of-process
updater reads it to find the daemon's pid and to decide whether a new model is healthy (the
right version serving fresh hops). Both sides use this module, so a field renamed on one
side cannot silently break the other.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


@dataclass(frozen=True)
class Health:
    """The fields the updater relies on (everything else in status.json is for operators)."""

    pid: int | None
    model_version: str | None
    last_hop_epoch: float | None

    @classmethod
    def of(cls, status: dict[str, Any]) -> Health:
        """Read the writer's schema: ``pid``, ``model.version``, ``last_hop_epoch``."""
        pid = status.get("pid")
        model = status.get("model")
        version = model.get("version") if isinstance(model, dict) else None
        hop = status.get("last_hop_epoch")
        return cls(
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            model_version=str(version) if isinstance(version, str | int | float) else None,
            last_hop_epoch=float(hop) if isinstance(hop, int | float) and not isinstance(hop, bool) else None,
        )


def read_status(state_dir: str | Path) -> dict[str, Any]:
    """The daemon's last status (``{}`` when absent or unreadable: the daemon may be starting)."""
    try:
        data = json.loads((Path(state_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_health(state_dir: str | Path) -> Health:
    return Health.of(read_status(state_dir))


def write_status(state_dir: str | Path, status: dict[str, Any]) -> None:
    """Atomically replace status.json (readers never see a half-written file). Raises OSError."""
    path = Path(state_dir) / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status, indent=1))
    os.replace(tmp, path)
