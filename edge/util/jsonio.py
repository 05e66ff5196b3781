"""JSON in and out: plain values for documents that must stay valid JSON, tolerant reads,
atomic writes.

NaN and infinities are not JSON (``json.dumps`` writes ``NaN``, which strict readers reject),
and metrics, scores and statuses contain them; numpy scalars and arrays are not JSON either.
:func:`json_safe` is the one cleaner for MQTT payloads, training summaries, checkpoints'
metrics and bundle manifests.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def json_safe(value: Any, *, max_depth: int | None = None, max_items: int | None = None, _depth: int = 0) -> Any:
    """``value`` as plain JSON values: non-finite floats -> None, numpy -> python, others -> str.

    ``max_depth`` cuts mappings nested deeper than that to ``"..."``; ``max_items`` replaces
    longer lists and arrays by a short description (for provenance blobs in manifests).
    """
    if isinstance(value, Mapping):
        if max_depth is not None and _depth > max_depth:
            return "..."
        return {str(k): json_safe(v, max_depth=max_depth, max_items=max_items, _depth=_depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if max_items is not None and len(value) > max_items:
            return f"<{len(value)} items>"
        return [json_safe(v, max_depth=max_depth, max_items=max_items, _depth=_depth + 1) for v in value]
    if getattr(value, "ndim", 0) and hasattr(value, "tolist"):  # numpy arrays (and tensors)
        if max_items is not None and math.prod(value.shape) > max_items:
            return f"<array {tuple(value.shape)}>"
        return json_safe(value.tolist(), max_depth=max_depth, max_items=max_items, _depth=_depth)
    if not isinstance(value, str | bytes | int | float) and hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def read_json(path: str | Path) -> dict | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write ``data`` to a temporary sibling and rename it over ``path``: readers never see half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
