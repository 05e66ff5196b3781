"""Bundle ``.tar.gz`` archives: the one module that opens, unpacks and writes tar files.

Archives come from the network and USB sticks, so they are hostile until verified. Every
path that unpacks one (the loader's cache, the store's install, the updater's peek at a
manifest) goes through :func:`check_members`, one set of rules: regular files only (no links,
devices or FIFOs), no absolute or ``..`` paths, the files either at the top level or inside
one folder, no duplicate names, each member and the total under a size cap checked *before*
anything is written.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from edge.errors import SonotrapError
from edge.models.manifest import BUNDLE_FILES, MANIFEST_FILE, MAX_MANIFEST_BYTES
from edge.util.hashing import sha256_file

MAX_MEMBER_BYTES = 512 * 1024 * 1024
MAX_TOTAL_BYTES = 1024 * 1024 * 1024
MAX_MEMBERS = 64


def check_members(
    tar: tarfile.TarFile,
    archive: Path,
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> list[tarfile.TarInfo]:
    """The regular-file members of ``tar``, or SonotrapError naming the first unsafe member."""
    files: list[tarfile.TarInfo] = []
    names: set[str] = set()
    tops: set[str] = set()
    total = 0
    members = tar.getmembers()
    if len(members) > MAX_MEMBERS:
        raise SonotrapError(f"bundle archive {archive} has {len(members)} members (at most {MAX_MEMBERS}); refuse to unpack it")
    for m in members:
        name = m.name
        parts = PurePosixPath(name).parts
        if not parts and m.isdir():  # "." (tar -C dir .)
            continue
        if not parts or name.startswith(("/", "\\")) or ".." in parts or "\\" in name or len(parts) > 2:
            raise SonotrapError(f"bundle archive {archive} has an unsafe path {name!r}; refuse to unpack it")
        if len(parts) == 2 or m.isdir():
            tops.add(parts[0])
        if len(tops) > 1:
            raise SonotrapError(
                f"bundle archive {archive} has more than one top folder ({sorted(tops)}); refuse to unpack it"
            )
        if m.isdir():
            continue
        if not m.isfile():
            raise SonotrapError(
                f"bundle archive {archive} holds {name!r}, a link or special file, not a plain file; "
                "refuse to unpack it (rebuild the archive with 'sonotrap bundle pack')"
            )
        key = "/".join(parts)
        if key in names:
            raise SonotrapError(f"bundle archive {archive} holds {name!r} twice; refuse to unpack it")
        names.add(key)
        if m.size > max_member_bytes:
            raise SonotrapError(f"bundle archive {archive} member {name!r} is implausibly large ({m.size} bytes)")
        total += m.size
        if total > max_total_bytes:
            raise SonotrapError(
                f"bundle archive {archive} unpacks to more than {max_total_bytes / 1e6:.0f} MB; refuse to unpack it"
            )
        files.append(m)
    return files


def extract_archive(archive: str | Path, dest: str | Path, *, max_total_bytes: int = MAX_TOTAL_BYTES) -> Path:
    """Unpack ``archive`` into the new directory ``dest``; returns the folder holding the manifest.

    That is ``dest`` itself for a flat archive, or its one top folder.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = check_members(tar, archive, max_total_bytes=max_total_bytes)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as err:
        shutil.rmtree(dest, ignore_errors=True)
        raise SonotrapError(f"bundle archive {archive} cannot be unpacked ({err}); download it again") from None
    except SonotrapError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return bundle_root(dest)


def bundle_root(d: Path) -> Path:
    """``d`` when it holds a manifest, else its single sub-folder holding one, else ``d``."""
    if (d / MANIFEST_FILE).exists():
        return d
    subdirs = [c for c in d.iterdir() if c.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / MANIFEST_FILE).exists():
        return subdirs[0]
    return d


def read_manifest_bytes(archive: str | Path) -> bytes | None:
    """The bytes of the archive's ``manifest.json`` without unpacking anything else (None if absent)."""
    archive = Path(archive)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in check_members(tar, archive):
                if PurePosixPath(m.name).name == MANIFEST_FILE:
                    fh = tar.extractfile(m)
                    return fh.read(MAX_MANIFEST_BYTES + 1) if fh else None
    except (tarfile.TarError, EOFError, OSError) as err:
        raise SonotrapError(f"bundle archive {archive} cannot be read ({err}); download it again") from None
    return None


def write_archive(bundle_dir: str | Path, archive: str | Path) -> Path:
    """Pack a bundle directory as a flat ``.tar.gz`` (manifest, model, signature if present)."""
    bundle_dir, archive = Path(bundle_dir), Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for name in BUNDLE_FILES:
            f = bundle_dir / name
            if f.is_file():
                info = tar.gettarinfo(str(f), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(f, "rb") as fh:
                    tar.addfile(info, fh)
    os.replace(tmp, archive)
    return archive


# --------------------------------------------------------------------------- the loader's cache


def _cache_root() -> Path:
    base = os.environ.get("SONOTRAP_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    sub = "" if os.environ.get("SONOTRAP_CACHE_DIR") else "sonotrap"
    return Path(base) / sub / "bundles"


def open_bundle_dir(path: str | Path) -> Path:
    """A bundle directory for ``path``: itself, or a safely unpacked copy of a ``.tar.gz``.

    Archives are unpacked once into ``$SONOTRAP_CACHE_DIR`` (default ``~/.cache/sonotrap/bundles``)
    under their own sha256, falling back to a temporary directory when that is not writable.
    The unpacked files are validated like any bundle, so a tampered cache is still caught.
    """
    p = Path(path)
    if p.is_dir():
        return p
    if not p.exists():
        raise SonotrapError(f"model bundle {p} does not exist; point model.bundle at a bundle directory or .tar.gz")
    if not tarfile.is_tarfile(p):
        raise SonotrapError(f"model bundle {p} is neither a directory nor a .tar.gz archive; re-download it")
    digest = sha256_file(p)[:20]
    for root in (_cache_root(), None):
        try:
            if root is None:
                work = Path(tempfile.mkdtemp(prefix="sonotrap-bundle-"))
                extract_archive(p, work / "b")
                return bundle_root(work / "b")
            final = root / digest
            if (final / MANIFEST_FILE).is_file():
                return bundle_root(final)
            root.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
            try:
                extract_archive(p, work / "b")
                try:
                    os.rename(work / "b", final)
                except OSError:  # another process won the race
                    pass
            finally:
                shutil.rmtree(work, ignore_errors=True)
            return bundle_root(final)
        except SonotrapError:
            raise
        except OSError:
            if root is None:
                raise
            continue
    raise SonotrapError(f"bundle archive {p} cannot be unpacked anywhere; check disk space and permissions")
