"""The ``status.json`` contract between the daemon (writer) and the updater (reader).

The daemon rewrites ``<state_dir>/status.json`` every couple of seconds; the out-of-process
updater reads it to find the daemon's pid and to decide whether a new model is healthy (the
right version serving fresh hops). Both sides use this module, so a field renamed on one
side cannot silently break the other.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge import __version__
from edge.errors import SonotrapError
from edge.models.update.status import update_status_summary

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

def daemon_status(d: Any) -> dict[str, Any]:
    """What the daemon ``d`` writes to status.json (and publishes as its MQTT status): the
    fields :class:`Health` reads plus everything an operator wants to know, JSON-ready."""
    bundle = d.classifier.bundle if d.classifier else d.bundle
    audio = d._safe(d.source.stats) if d.source is not None else None
    outbox = d._safe(d.publisher.stats) if d.publisher is not None else None
    lat = d.classifier.latency_ms() if d.classifier else {"p50": None, "p99": None}
    pipe = d.pipeline
    return {
        "state": d.state,
        "device": d.device,
        "pid": os.getpid(),
        "sonotrap_version": __version__,
        "model": {"name": bundle.name, "version": bundle.version, "path": str(bundle.path)} if bundle else None,
        "started_epoch": round(d.started_epoch, 3),
        "uptime_s": round(time.monotonic() - d.started_mono, 1),
        "audio": audio,
        "inference_ms": lat,
        "hop_s": pipe.hop_s if pipe else d.cfg.model.hop_s,
        "window_s": bundle.frontend.window_s if bundle else None,
        "backlog_hops": d.backlog_hops,
        "max_backlog_hops": d.max_backlog_hops,
        "skipped_hops": pipe.skipped if pipe else 0,
        "gated_hops": pipe.gated if pipe else 0,  # hops that skipped the model (quiet/inactive)
        "hops": pipe.processed if pipe else 0,
        "batches": d.batches,
        "last_hop_epoch": round(d.last_hop_epoch, 3) if d.last_hop_epoch else None,
        "detections": d.detections,
        "outbox": outbox,
        "clips": d.clips.stats() if d.clips else None,
        "last_error": d.last_error,
        "models": d._safe(lambda: update_status_summary(d.state_dir)),  # store + last update
    }


def status_line(d: Any) -> str:
    """The one-line status systemd shows (``systemctl status sonotrap``)."""
    b = d.classifier.bundle if d.classifier else None
    model = f"{b.name} {b.version}" if b else "no model"
    pipe = d.pipeline
    hops = pipe.processed if pipe else 0
    depth = ""
    if d.publisher is not None:
        stats = d._safe(d.publisher.stats) or {}
        depth = f", outbox {stats.get('outbox_depth', '?')}"
    return f"{d.state}: {model}, {hops} hops, {d.detections} detections, backlog {d.backlog_hops}{depth}"


def ensure_writable(state_dir: Path) -> None:
    """The state directory exists and is writable (status.json, outbox and clips live there)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe = state_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise SonotrapError(
            f"state directory {state_dir} is not writable ({err.strerror or err}); "
            "pass --state-dir or fix its permissions"
        ) from None
