"""Bundle ``.tar.gz`` archives: the one module that opens, unpacks and writes tar files.

Archives come from the network and USB sticks, so they are hostile until verified. Every
path that unpacks one (the loader's cache, the store's install, the updater's peek at a
manifest) goes through :func:`check_members`, one set of rules: regular files only (no links,
devices or FIFOs), no absolute or ``..`` paths, the files either at the top level or inside
one folder, no duplicate names, each member and the total under a size cap checked *before*
anything is written.
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from edge.errors import SonotrapError, shown
from edge.models.manifest import (
    BUNDLE_FILES,
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    MODEL_FILE,
    SAFE_FILE_NAME,
    SIGNATURE_FILE,
    manifest_data,
)
from edge.util.hashing import sha256_file

MAX_MEMBER_BYTES = 512 * 1024 * 1024
MAX_TOTAL_BYTES = 1024 * 1024 * 1024
MAX_MEMBERS = 64
MAX_SIGNATURE_BYTES = 64 * 1024
_SMALL_FILES = {MANIFEST_FILE: MAX_MANIFEST_BYTES, SIGNATURE_FILE: MAX_SIGNATURE_BYTES}


# what a damaged archive raises while it is read: tar, gzip/zlib, bzip2 and xz errors
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def _why(err: BaseException) -> str:
    """The library's reason on one short line (tarfile's "r:*" error lists every method it tried)."""
    return " ".join(str(err).split())[:120] or type(err).__name__


def check_members(
    tar: tarfile.TarFile,
    archive: Path,
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    listing: bool = True,
) -> list[tarfile.TarInfo]:
    """The regular-file members of ``tar``, or SonotrapError naming the first unsafe member.

    With ``listing`` (unpacking), every member must be the manifest, its signature or a file the
    manifest lists (:func:`listed_files`) with exactly the listed size, so an archive cannot
    carry bytes its signature does not cover.
    """
    files: list[tarfile.TarInfo] = []
    names: set[str] = set()
    tops: set[str] = set()
    total = 0
    members: list[tarfile.TarInfo] = []
    for m in tar:  # lazily, not getmembers(): a 1 MB .tar.gz can hold millions of headers
        members.append(m)
        if len(members) > MAX_MEMBERS:
            raise SonotrapError(f"bundle archive {archive} has more than {MAX_MEMBERS} members; refuse to unpack it")
    for m in members:
        name = m.name
        parts = PurePosixPath(name).parts
        if not parts and m.isdir():  # "." (tar -C dir .)
            continue
        if not parts or name.startswith(("/", "\\")) or ".." in parts or "\\" in name or len(parts) > 2:
            raise SonotrapError(f"bundle archive {archive} has an unsafe path {shown(name)}; refuse to unpack it")
        if len(parts) == 2 or m.isdir():
            tops.add(parts[0])
        if len(tops) > 1:
            raise SonotrapError(
                f"bundle archive {archive} has more than one top folder ({shown(sorted(tops))}); refuse to unpack it"
            )
        if m.isdir():
            continue
        if not m.isfile():
            raise SonotrapError(
                f"bundle archive {archive} holds {shown(name)}, a link or special file, not a plain file; "
                "refuse to unpack it (rebuild the archive with 'sonotrap bundle pack')"
            )
        key = "/".join(parts)
        if key in names:
            raise SonotrapError(f"bundle archive {archive} holds {shown(name)} twice; refuse to unpack it")
        names.add(key)
        if m.size > _SMALL_FILES.get(parts[-1], max_member_bytes):
            raise SonotrapError(f"bundle archive {archive} member {shown(name)} is implausibly large ({m.size} bytes)")
        total += m.size
        if total > max_total_bytes:
            raise SonotrapError(
                f"bundle archive {archive} unpacks to more than {max_total_bytes / 1e6:.0f} MB; refuse to unpack it"
            )
        files.append(m)
    if listing:
        listed = _listed_files(tar, files, archive)
        for m in files:
            base = PurePosixPath(m.name).name
            if base not in listed and base not in (MANIFEST_FILE, SIGNATURE_FILE):
                raise SonotrapError(
                    f"bundle archive {archive} holds {shown(m.name)}, which its manifest does not list; refuse to unpack it"
                )
            if base in listed and m.size != listed[base]:
                raise SonotrapError(
                    f"bundle archive {archive} member {shown(m.name)} has {m.size} bytes, its manifest says "
                    f"{listed[base]}; refuse to unpack it"
                )
    return files


def listed_files(data: dict[str, Any], where: str | Path) -> dict[str, int]:
    """File name -> size of the files a manifest covers besides itself (and its signature).

    A manifest with ``files`` (``{"model.onnx": {"size": N, "sha256": "..."}}``, written by
    :func:`edge.models.bundle.write_bundle`) lists them all; an older manifest without it covers
    exactly its model file (pinned by ``model_sha256``), so nothing else may come with it.
    """
    files = data.get("files")
    if files is None:
        return {str(data.get("model_file", MODEL_FILE)): -1}
    if not isinstance(files, dict) or not files:
        raise SonotrapError(f"manifest {where} field 'files' must be a non-empty JSON object; rebuild the bundle")
    out = {}
    for name, entry in files.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("size"), int) and not isinstance(entry.get("size"), bool)
        if not ok or entry["size"] < 0 or not isinstance(entry.get("sha256"), str) or not SAFE_FILE_NAME.fullmatch(name):
            raise SonotrapError(
                f"manifest {where} lists {shown(name)} without a plain file name, integer size and sha256; rebuild the bundle"
            )
        out[name] = entry["size"]
    return out


def _listed_files(tar: tarfile.TarFile, members: list[tarfile.TarInfo], archive: Path) -> dict[str, int]:
    """:func:`listed_files` of the archive's manifest (read from the archive, size-capped).

    The manifest is not authenticated yet; an attacker who edits it fails the signature check
    later, so trusting it here only decides what is *written*, never what is accepted.
    """
    for m in members:
        if m.isfile() and PurePosixPath(m.name).name == MANIFEST_FILE and m.size <= MAX_MANIFEST_BYTES:
            fh = tar.extractfile(m)
            if fh is not None:
                data = manifest_data(fh.read(MAX_MANIFEST_BYTES + 1), f"{archive}:{MANIFEST_FILE}")
                sizes = listed_files(data, f"{archive}:{MANIFEST_FILE}")
                return {k: (v if v >= 0 else _size_of(members, k)) for k, v in sizes.items()}
    raise SonotrapError(f"bundle archive {archive} has no {MANIFEST_FILE}; it is not a model bundle")


def _size_of(members: list[tarfile.TarInfo], name: str) -> int:
    return next((m.size for m in members if PurePosixPath(m.name).name == name), 0)


def check_listed_files(bundle_dir: Path, data: dict[str, Any]) -> None:
    """Every file the manifest lists exists as a regular file with its size and sha256."""
    if data.get("files") is None:
        return  # an older manifest: the model is checked against model_sha256 by the caller
    for name in listed_files(data, bundle_dir / MANIFEST_FILE):
        entry = data["files"][name]
        p = bundle_dir / name
        if not p.is_file() or p.is_symlink():
            raise SonotrapError(f"bundle {bundle_dir} lacks {name}, which its manifest lists; re-download the bundle")
        if p.stat().st_size != entry["size"] or sha256_file(p) != entry["sha256"].lower():
            raise SonotrapError(f"bundle file {p} fails its size/sha256 check (corrupt or tampered); re-download the bundle")


def copy_bundle_dir(src: str | Path, dest: str | Path, *, max_total_bytes: int = MAX_TOTAL_BYTES) -> Path:
    """Copy a bundle directory's covered files (manifest, signature, listed files) into new ``dest``.

    A local folder (a USB stick) is as hostile as an archive: only regular files are read, never
    symlinks (a link to a secret would be copied into the store) or FIFOs/devices (which block or
    never end), each under its size cap and the total under ``max_total_bytes`` before copying.
    Files the manifest does not cover are not copied.
    """
    src, dest = Path(src), Path(dest)
    man = _regular(src / MANIFEST_FILE, MAX_MANIFEST_BYTES)
    if man is None:
        raise SonotrapError(f"bundle {src} has no regular {MANIFEST_FILE}; it is not a model bundle")
    names = [MANIFEST_FILE, SIGNATURE_FILE, *listed_files(manifest_data((src / MANIFEST_FILE).read_bytes(), src), src)]
    total = 0
    plan = []
    for name in dict.fromkeys(names):
        size = _regular(src / name, _SMALL_FILES.get(name, MAX_MEMBER_BYTES))
        if size is None:
            continue
        total += size
        if total > max_total_bytes:
            raise SonotrapError(f"bundle {src} holds more than {max_total_bytes / 1e6:.0f} MB; refuse to copy it")
        plan.append((name, size))
    dest.mkdir(parents=True)
    for name, size in plan:
        fd = os.open(src / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fin, open(dest / name, "wb") as fout:
            if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
                raise SonotrapError(f"bundle file {src / name} changed into a special file; refuse to copy it")
            shutil.copyfileobj(_Capped(fin, size), fout)
    return dest


class _Capped:
    """A reader that stops at ``limit`` bytes (a file growing while it is copied stays bounded)."""

    def __init__(self, fh: Any, limit: int) -> None:
        self.fh, self.left = fh, limit

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.fh.read(n) if n else b""
        self.left -= len(data)
        return data


def _regular(p: Path, max_bytes: int) -> int | None:
    """Size of ``p`` if it is a regular file (not a link); None if absent; SonotrapError otherwise."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise SonotrapError(f"bundle file {p} is a link or special file, not a plain file; refuse to read it")
    if st.st_size > max_bytes:
        raise SonotrapError(f"bundle file {p} is implausibly large ({st.st_size} bytes); refuse to read it")
    return st.st_size


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
    except _READ_ERRORS as err:
        shutil.rmtree(dest, ignore_errors=True)
        raise SonotrapError(f"bundle archive {archive} cannot be unpacked ({_why(err)}); download it again") from None
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
            for m in check_members(tar, archive, listing=False):
                if PurePosixPath(m.name).name == MANIFEST_FILE:
                    fh = tar.extractfile(m)
                    return fh.read(MAX_MANIFEST_BYTES + 1) if fh else None
    except _READ_ERRORS as err:
        raise SonotrapError(f"bundle archive {archive} cannot be read ({_why(err)}); download it again") from None
    return None


def write_archive(bundle_dir: str | Path, archive: str | Path) -> Path:
    """Pack a bundle directory as a flat ``.tar.gz`` (manifest, model, signature if present)."""
    bundle_dir, archive = Path(bundle_dir), Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".part")
    names = list(BUNDLE_FILES)
    if (bundle_dir / MANIFEST_FILE).is_file():
        names += listed_files(manifest_data((bundle_dir / MANIFEST_FILE).read_bytes(), bundle_dir), bundle_dir)
    with tarfile.open(tmp, "w:gz") as tar:
        for name in dict.fromkeys(names):
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


def is_archive(path: str | Path) -> bool:
    """Whether ``path`` is a file this module would unpack as a bundle archive."""
    p = Path(path)
    return p.is_file() and tarfile.is_tarfile(p)


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
    if not is_archive(p):
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
