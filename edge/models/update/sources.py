"""Where updates come from: a local folder or an HTTP index, turned into :class:`Offer` s.

A source is ``local:DIR`` (a USB stick or rsync target, with or without ``index.json``) or an
http(s) URL serving ``index.json``; :func:`url_allowed` is the allow-list a URL named by a
command must pass. Fetching goes through :mod:`.download`, archives are peeked at through
:mod:`edge.models.archive`, manifests read by :mod:`edge.models.manifest`.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config import Config
from edge.errors import SonotrapError
from edge.models.archive import read_manifest_bytes
from edge.models.manifest import MANIFEST_FILE, manifest_data, read_manifest_data, version_key
from edge.models.update.download import fetch_bytes, url_allowed  # noqa: F401  (re-exported)

log = logging.getLogger("sonotrap.update")

INDEX_FILE = "index.json"
MAX_INDEX_BYTES = 1 << 20
DEFAULT_MAX_LOCAL_BYTES = 200_000_000  # update.max_download_mb's default


@dataclass
class Offer:
    """One bundle a source offers."""

    version: str
    location: str  # URL or local path
    sha256: str | None = None
    size: int | None = None
    name: str | None = None
    channel: str | None = None
    source: str = ""

    @property
    def is_remote(self) -> bool:
        return self.location.startswith(("http://", "https://"))


def resolve_source(cfg: Config, source: str | None = None) -> str:
    """The source spec to use: explicit, else update.url, else local:update.local_dir."""
    if source:
        return source
    if cfg.update.url:
        return cfg.update.url
    if cfg.update.local_dir:
        return f"local:{cfg.update.local_dir}"
    raise SonotrapError(
        "no update source configured; set update.url or update.local_dir in the config, or pass --source"
    )


def fetch_index(source: str, timeout: float = 30.0, deadline_s: float = 600.0,
                allowed: list[str] | None = None) -> tuple[dict | None, str]:
    """(parsed index.json or None when a local dir has none, base location for relative URLs)."""
    if source.startswith("local:"):
        d = Path(source[len("local:"):])
        if not d.is_dir():
            raise SonotrapError(f"update directory {d} does not exist; mount the stick or fix update.local_dir")
        idx = d / INDEX_FILE
        if not idx.exists() and not idx.is_symlink():
            return None, str(d)
        try:
            st = os.lstat(idx)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_INDEX_BYTES:
                raise SonotrapError(f"{idx} is not a plain file under {MAX_INDEX_BYTES} bytes; replace it")
            return json.loads(idx.read_bytes()), str(d)
        except (OSError, ValueError) as err:
            raise SonotrapError(f"{idx} is not valid JSON ({err}); fix or remove it") from None
    if not source.startswith(("http://", "https://")):
        raise SonotrapError(f"update source {source!r} must be local:DIR or an http(s) URL")
    url = source if source.endswith(".json") else source.rstrip("/") + "/" + INDEX_FILE
    body = fetch_bytes(url, max_bytes=MAX_INDEX_BYTES, timeout=timeout, deadline_s=deadline_s,
                       allowed=[*(allowed or []), source_base(source)])
    try:
        return json.loads(body), url
    except ValueError as err:
        raise SonotrapError(f"update index {url} is not valid JSON ({err}); fix it on the server") from None


def _offer_from_entry(entry: Any, base: str, source: str, channel: str | None) -> Offer:
    if not isinstance(entry, dict) or "version" not in entry or "url" not in entry:
        raise SonotrapError(f"update index at {base} has an entry without version/url; fix index.json")
    if not isinstance(entry["version"], str) or not isinstance(entry["url"], str):
        raise SonotrapError(f"update index at {base}: 'version' and 'url' must be strings; fix index.json")
    loc = entry["url"]
    if base.startswith(("http://", "https://")):
        loc = urllib.parse.urljoin(base, loc)
    elif not loc.startswith(("http://", "https://")):
        loc = str(Path(base) / loc)
    size, sha, name = entry.get("size"), entry.get("sha256"), entry.get("name")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise SonotrapError(f"update index at {base}: 'size' of {entry['version']!r} must be a non-negative integer; fix index.json")
    if sha is not None and not isinstance(sha, str):
        raise SonotrapError(f"update index at {base}: 'sha256' of {entry['version']!r} must be a string; fix index.json")
    return Offer(
        version=str(entry["version"]),
        location=loc,
        sha256=sha.lower() if sha else None,
        size=size,
        name=name if isinstance(name, str) else None,
        channel=channel,
        source=source,
    )


def source_base(source: str) -> str:
    """The base URL an HTTP source's index and bundles (and redirects) must stay under."""
    return source.rsplit("/", 1)[0] + "/" if source.endswith(".json") else source.rstrip("/") + "/"


def find_offer(source: str, *, channel: str, version: str | None = None, timeout: float = 30.0,
               deadline_s: float = 600.0, allowed: list[str] | None = None) -> Offer | None:
    """The offer for ``channel`` (or the given ``version``) at ``source``; None if it has none."""
    index, base = fetch_index(source, timeout, deadline_s, allowed)
    if index is not None:
        if not isinstance(index, dict):
            raise SonotrapError(f"update index {base} is not a JSON object; fix index.json")
        channels, versions = index.get("channels", {}), index.get("versions", {})
        if not isinstance(channels, dict) or not isinstance(versions, dict):
            raise SonotrapError(f"update index {base}: 'channels' and 'versions' must be JSON objects; fix index.json")
        if version is None:
            if channel not in channels:
                raise SonotrapError(
                    f"update index {base} has no channel {channel!r} (has: {', '.join(channels) or 'none'}); "
                    "fix update.channel"
                )
            return _offer_from_entry(channels[channel], base, source, channel)
        if version in versions:
            entry = versions[version]
            if not isinstance(entry, dict):
                raise SonotrapError(f"update index {base}: version {version!r} is not a JSON object; fix index.json")
            return _offer_from_entry({"version": version, **entry}, base, source, None)
        for ch, entry in channels.items():
            if isinstance(entry, dict) and str(entry.get("version")) == version:
                return _offer_from_entry(entry, base, source, ch)
        if not source.startswith("local:"):
            return None
    # a plain directory: scan for bundles (archives and directories) and read their manifests
    found = scan_local_dir(Path(base))
    if version is not None:
        found = [o for o in found if o.version == version]
    return max(found, key=lambda o: version_key(o.version)) if found else None


def check_local_bundle(path: str | Path, folder: str | Path, max_bytes: int) -> Path:
    """``path`` if it is a plain bundle inside ``folder``: a regular ``.tar.gz`` or a directory.

    A USB stick or rsync target is as hostile as the network: a symlink could point at
    ``/dev/zero`` (endless) or a secret (copied into the store), a FIFO blocks forever, a
    relative index URL could climb out with ``..``. Refused with a SonotrapError.
    """
    p, root = Path(path), Path(folder).resolve()
    try:
        st = os.lstat(p)
    except OSError as err:
        raise SonotrapError(f"update bundle {p} cannot be read ({err.strerror}); copy it again") from None
    if stat.S_ISLNK(st.st_mode) or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise SonotrapError(f"update bundle {p} is a link or special file, not a plain file or folder; refused")
    if not p.resolve().is_relative_to(root):
        raise SonotrapError(f"update bundle {p} lies outside the update folder {root}; refused")
    if stat.S_ISREG(st.st_mode) and st.st_size > max_bytes:
        raise SonotrapError(
            f"update bundle {p} is {st.st_size / 1e6:.1f} MB, over update.max_download_mb; refused"
        )
    return p


def scan_local_dir(d: Path, max_bytes: int = DEFAULT_MAX_LOCAL_BYTES) -> list[Offer]:
    """Bundles lying in a directory (``*.tar.gz`` or sub-directories with a manifest)."""
    offers = []
    for p in sorted(d.iterdir()):
        manifest = None
        try:
            if not p.name.endswith((".tar.gz", ".tgz")) and not p.is_dir():
                continue
            check_local_bundle(p, d, max_bytes)
            if p.is_dir() and (p / MANIFEST_FILE).is_file():
                manifest = read_manifest_data(p)
            elif p.is_file():
                raw = read_manifest_bytes(p)
                manifest = manifest_data(raw, p) if raw is not None else None
        except (OSError, SonotrapError) as err:
            log.warning("skipping %s: %s", p, err)
            continue
        if isinstance(manifest, dict) and "version" in manifest:
            offers.append(
                Offer(
                    version=str(manifest["version"]),
                    location=str(p),
                    name=manifest.get("name"),
                    size=p.stat().st_size if p.is_file() else None,
                    source=f"local:{d}",
                )
            )
    return offers
