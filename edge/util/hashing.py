"""sha256 of a file, streamed: model files are tens of MB and recorders have little RAM.

One definition for the bundle loader, the signature check, the updater's download check,
the trainer's bundle builder and the tests.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Lower-case hex sha256 of the file's bytes, read in 1 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
