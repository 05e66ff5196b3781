"""The on-device model store: versioned bundle directories and atomic ``current`` switching.

Layout under ``<state_dir>/models``::

    tiny-band-detector-1.0.0/      one directory per installed bundle (never modified)
    tiny-band-detector-1.1.0/
    current  -> tiny-band-detector-1.1.0     what the daemon runs (model.bundle points here)
    previous -> tiny-band-detector-1.0.0     what `sonotrap model rollback` goes back to

Switching writes a new symlink under a temporary name and ``os.replace``-s it over
``current``: at every instant ``current`` names a complete, verified bundle, even if the
power is cut mid-update. A bundle is verified *before* it enters the store, in a separate
process (:mod:`edge.models.verify`), so a model that crashes onnxruntime, or a malicious
archive, can never take the daemon or the updater down with it. Archives are unpacked by
:mod:`edge.models.archive`, the one extractor.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.errors import SonotrapError
from edge.models.archive import extract_archive
from edge.models.manifest import MANIFEST_FILE, read_manifest_data, version_key
from edge.models.verify import read_identity, verify_in_subprocess

CURRENT = "current"
PREVIOUS = "previous"
INSTALL_INFO = ".installed.json"
_STAGING_PREFIX = ".staging-"
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass
class StoredModel:
    """One installed bundle."""

    dirname: str
    name: str
    version: str
    installed_at: float
    source: str
    key_id: str | None
    current: bool = False
    previous: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def store_root(state_dir: str | Path) -> Path:
    return Path(state_dir) / "models"


class ModelStore:
    """Install, list, activate and roll back bundles under ``<state_dir>/models``."""

    def __init__(self, root: str | Path, keep_versions: int = 3) -> None:
        self.root = Path(root)
        self.keep_versions = max(1, keep_versions)

    # ------------------------------------------------------------ queries

    def current_path(self) -> Path:
        """The path the daemon loads (``model.bundle``): the ``current`` symlink."""
        return self.root / CURRENT

    def current(self) -> StoredModel | None:
        return self._link_target(CURRENT)

    def previous(self) -> StoredModel | None:
        return self._link_target(PREVIOUS)

    def list(self) -> list[StoredModel]:
        """Installed bundles, oldest version first."""
        if not self.root.is_dir():
            return []
        cur = self._link_name(CURRENT)
        prev = self._link_name(PREVIOUS)
        out = []
        for d in self.root.iterdir():
            if d.is_symlink() or not d.is_dir() or d.name.startswith("."):
                continue
            m = self._describe(d)
            if m is None:
                continue
            m.current = d.name == cur
            m.previous = d.name == prev
            out.append(m)
        return sorted(out, key=lambda m: (m.name, version_key(m.version)))

    def find(self, version: str) -> StoredModel:
        """The installed bundle with this version (or directory name)."""
        models = self.list()
        hits = [m for m in models if version in (m.version, m.dirname)]
        if not hits:
            have = ", ".join(m.version for m in models) or "none"
            raise SonotrapError(
                f"model version {version} is not installed (installed: {have}); "
                "install it with 'sonotrap update' first"
            )
        if len(hits) > 1:
            raise SonotrapError(
                f"model version {version} is ambiguous ({', '.join(m.dirname for m in hits)}); "
                "pass the directory name instead"
            )
        return hits[0]

    # ------------------------------------------------------------ changes

    def install(
        self,
        source: str | Path,
        *,
        trusted_keys: str | Path | None,
        allow_unsigned: bool = False,
        verify: bool = True,
        label: str = "",
        timeout_s: float = 120.0,
    ) -> StoredModel:
        """Unpack/copy a bundle (dir or .tar.gz) into the store after verifying it; not activated.

        Re-installing a version that is already present with the same model is a no-op; the
        same version with different content is refused (versions are immutable).
        """
        source = Path(source)
        if not source.exists():
            raise SonotrapError(f"bundle {source} does not exist; check the path")
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            self._clean_staging()
            staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.root))
            try:
                bundle_dir = staging / "bundle"
                if source.is_dir():
                    shutil.copytree(source, bundle_dir, symlinks=False)
                else:
                    os.rename(extract_archive(source, staging / "unpack"), bundle_dir)
                    if not (bundle_dir / MANIFEST_FILE).is_file():
                        raise SonotrapError(f"bundle archive {source} has no {MANIFEST_FILE}; it is not a model bundle")
                if verify:
                    info = verify_in_subprocess(
                        bundle_dir, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, timeout_s=timeout_s
                    )
                else:
                    info = read_identity(bundle_dir)
                dirname = _SAFE.sub("_", f"{info.name}-{info.version}")
                target = self.root / dirname
                if target.exists():
                    if _model_sha(target) == _model_sha(bundle_dir):
                        m = self._describe(target)
                        assert m is not None
                        return m
                    raise SonotrapError(
                        f"model {info.name} {info.version} is already installed with a different model "
                        "file; publish the new model under a new version"
                    )
                record = {
                    "installed_at": time.time(),
                    "source": label or str(source),
                    "key_id": info.key_id,
                }
                (bundle_dir / INSTALL_INFO).write_text(json.dumps(record, indent=2) + "\n")
                _fsync_tree(bundle_dir)
                os.rename(bundle_dir, target)
                _fsync_dir(self.root)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        m = self._describe(target)
        assert m is not None
        return m

    def activate(self, version: str) -> tuple[StoredModel | None, StoredModel]:
        """Make ``version`` current (the old current becomes previous); returns (old, new)."""
        with self._lock():
            target = self.find(version)
            old = self.current()
            if old is not None and old.dirname == target.dirname:
                return old, target
            if old is not None:
                self._set_link(PREVIOUS, old.dirname)
            self._set_link(CURRENT, target.dirname)
            self._prune()
        new = self.current()
        assert new is not None
        return old, new

    def rollback(self) -> tuple[StoredModel, StoredModel]:
        """Swap ``current`` and ``previous``; returns (rolled back from, now current)."""
        with self._lock():
            cur, prev = self.current(), self.previous()
            if prev is None:
                raise SonotrapError(
                    "there is no previous model to roll back to; use 'sonotrap model activate VERSION'"
                )
            self._set_link(CURRENT, prev.dirname)
            if cur is not None:
                self._set_link(PREVIOUS, cur.dirname)
        now = self.current()
        assert now is not None and cur is not None
        return cur, now

    def prune(self) -> builtins.list[str]:
        """Delete old versions beyond ``keep_versions`` (never current or previous)."""
        with self._lock():
            return self._prune()

    # ------------------------------------------------------------ internals

    def _prune(self) -> builtins.list[str]:
        models = self.list()
        keep = {m.dirname for m in models if m.current or m.previous}
        by_age = sorted(models, key=lambda m: m.installed_at, reverse=True)
        for m in by_age:
            if len(keep) >= self.keep_versions:
                break
            keep.add(m.dirname)
        removed = []
        for m in models:
            if m.dirname not in keep:
                shutil.rmtree(self.root / m.dirname, ignore_errors=True)
                removed.append(m.dirname)
        return removed

    def _set_link(self, link: str, dirname: str) -> None:
        tmp = self.root / f".{link}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(dirname, tmp)  # relative: the store can be moved or mounted elsewhere
        os.replace(tmp, self.root / link)
        _fsync_dir(self.root)

    def _link_name(self, link: str) -> str | None:
        try:
            return os.readlink(self.root / link)
        except OSError:
            return None

    def _link_target(self, link: str) -> StoredModel | None:
        name = self._link_name(link)
        if not name:
            return None
        m = self._describe(self.root / name)
        if m is not None:
            m.current = link == CURRENT
            m.previous = link == PREVIOUS
        return m

    def _describe(self, d: Path) -> StoredModel | None:
        try:
            manifest = read_manifest_data(d)
        except (SonotrapError, OSError):
            return None
        try:
            info = json.loads((d / INSTALL_INFO).read_text())
        except (OSError, ValueError):
            info = {}
        return StoredModel(
            dirname=d.name,
            name=str(manifest.get("name", "?")),
            version=str(manifest.get("version", "?")),
            installed_at=float(info.get("installed_at", d.stat().st_mtime)),
            source=str(info.get("source", "")),
            key_id=info.get("key_id"),
        )

    def _clean_staging(self) -> None:
        for d in self.root.glob(_STAGING_PREFIX + "*"):
            shutil.rmtree(d, ignore_errors=True)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One writer at a time (timer-driven update vs. an operator's `sonotrap model`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _model_sha(d: Path) -> str | None:
    try:
        return str(read_manifest_data(d).get("model_sha256"))
    except (SonotrapError, OSError):
        return None


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(d: Path) -> None:
    for p in d.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(d)
