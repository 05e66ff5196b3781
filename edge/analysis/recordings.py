"""Which recordings a batch analysis covers, under which name, and in which shard.

Archives from many recorders repeat file names (recorders name files by timestamp), so a
recording is named by its path relative to the common parent of everything given on the
command line: ``siteA/rec.flac`` and ``siteB/rec.flac`` stay apart in every output. The name
is also what shards are cut by: a hash of it, not of an absolute path, so the same inputs give
the same shards on a laptop and on every node of a cluster, in any order, on any run.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.errors import SonotrapError

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".w64", ".rf64", ".opus"}


@dataclass(frozen=True)
class Recording:
    path: Path  # as found (absolute)
    name: str  # POSIX path relative to the inputs' common parent: the key of every output


def find_recordings(paths: Iterable[str | Path]) -> list[Recording]:
    """Every recording given directly or found (recursively) in a folder, sorted by name.

    A folder's recordings are named relative to the common parent of all inputs (one folder:
    the folder itself; one file: its folder). The same file given twice counts once. Two names
    that differ only in letter case stop the run: their tables would overwrite each other on
    a case-insensitive disk (where archives often end up).
    """
    paths = list(paths)
    found: list[Path] = []
    roots: list[str] = []
    for raw in paths:
        p = Path(os.path.abspath(Path(raw).expanduser()))
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in AUDIO_SUFFIXES)
            roots.append(str(p))
        elif p.exists():
            found.append(p)
            roots.append(str(p.parent))
        else:
            raise SonotrapError(f"{p} does not exist; pass recordings or folders that contain them")
    if not found:
        raise SonotrapError(
            f"no recordings found in {', '.join(map(str, paths))} "
            f"(looked for {', '.join(sorted(AUDIO_SUFFIXES))})"
        )
    common = Path(os.path.commonpath(roots))
    by_name: dict[str, Recording] = {}
    folded: dict[str, Recording] = {}
    for path in found:
        rec = Recording(path, path.relative_to(common).as_posix())
        if rec.name in by_name:
            continue  # the same file twice (a folder and a file in it)
        clash = folded.get(rec.name.casefold())
        if clash is not None:
            raise SonotrapError(
                f"{clash.path} and {rec.path} would write the same output files ({rec.name!r} vs "
                f"{clash.name!r} differ only in letter case); rename one or analyse them separately "
                "into different --out folders"
            )
        by_name[rec.name] = folded[rec.name.casefold()] = rec
    return sorted(by_name.values(), key=lambda r: r.name)


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (1 <= K <= N) -> ``(K, N)``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise SonotrapError(f"--shard {text!r} must be K/N with 1 <= K <= N, e.g. --shard 3/8")
    return int(m.group(1)), int(m.group(2))


def shard_of(name: str, shards: int) -> int:
    """The shard (1..N) a recording name belongs to: stable across runs, machines and Python versions."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards + 1


def select_shard(recordings: Sequence[Recording], k: int, n: int) -> list[Recording]:
    return [r for r in recordings if shard_of(r.name, n) == k]
