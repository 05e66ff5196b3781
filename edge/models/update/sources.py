"""Where updates come from: a local folder or an HTTP index, turned into :class:`Offer` s.

A source is ``local:DIR`` (a USB stick or rsync target, with or without ``index.json``) or an
http(s) URL serving ``index.json``; :func:`url_allowed` is the allow-list a URL named by a
command must pass. Fetching goes through :mod:`.download`, archives are peeked at through
:mod:`edge.models.archive`, manifests read by :mod:`edge.models.manifest`.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config import Config
from edge.errors import SonotrapError
from edge.models.archive import read_manifest_bytes
from edge.models.manifest import MANIFEST_FILE, manifest_data, read_manifest_data, version_key
from edge.models.update.download import fetch_bytes

log = logging.getLogger("sonotrap.update")

INDEX_FILE = "index.json"
MAX_INDEX_BYTES = 1 << 20


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


def fetch_index(source: str, timeout: float = 30.0) -> tuple[dict | None, str]:
    """(parsed index.json or None when a local dir has none, base location for relative URLs)."""
    if source.startswith("local:"):
        d = Path(source[len("local:"):])
        if not d.is_dir():
            raise SonotrapError(f"update directory {d} does not exist; mount the stick or fix update.local_dir")
        idx = d / INDEX_FILE
        if not idx.is_file():
            return None, str(d)
        try:
            return json.loads(idx.read_text()), str(d)
        except (OSError, ValueError) as err:
            raise SonotrapError(f"{idx} is not valid JSON ({err}); fix or remove it") from None
    if not source.startswith(("http://", "https://")):
        raise SonotrapError(f"update source {source!r} must be local:DIR or an http(s) URL")
    url = source if source.endswith(".json") else source.rstrip("/") + "/" + INDEX_FILE
    body = fetch_bytes(url, max_bytes=MAX_INDEX_BYTES, timeout=timeout)
    try:
        return json.loads(body), url
    except ValueError as err:
        raise SonotrapError(f"update index {url} is not valid JSON ({err}); fix it on the server") from None


def _offer_from_entry(entry: Any, base: str, source: str, channel: str | None) -> Offer:
    if not isinstance(entry, dict) or "version" not in entry or "url" not in entry:
        raise SonotrapError(f"update index at {base} has an entry without version/url: {entry!r}; fix index.json")
    loc = str(entry["url"])
    if base.startswith(("http://", "https://")):
        loc = urllib.parse.urljoin(base, loc)
    elif not loc.startswith(("http://", "https://")):
        loc = str(Path(base) / loc)
    size = entry.get("size")
    return Offer(
        version=str(entry["version"]),
        location=loc,
        sha256=(str(entry["sha256"]).lower() if entry.get("sha256") else None),
        size=int(size) if size is not None else None,
        name=entry.get("name"),
        channel=channel,
        source=source,
    )


def find_offer(source: str, *, channel: str, version: str | None = None, timeout: float = 30.0) -> Offer | None:
    """The offer for ``channel`` (or the given ``version``) at ``source``; None if it has none."""
    index, base = fetch_index(source, timeout)
    if index is not None:
        channels = index.get("channels", {}) if isinstance(index, dict) else {}
        versions = index.get("versions", {}) if isinstance(index, dict) else {}
        if version is None:
            if channel not in channels:
                raise SonotrapError(
                    f"update index {base} has no channel {channel!r} (has: {', '.join(channels) or 'none'}); "
                    "fix update.channel"
                )
            return _offer_from_entry(channels[channel], base, source, channel)
        if version in versions:
            return _offer_from_entry({"version": version, **versions[version]}, base, source, None)
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


def scan_local_dir(d: Path) -> list[Offer]:
    """Bundles lying in a directory (``*.tar.gz`` or sub-directories with a manifest)."""
    offers = []
    for p in sorted(d.iterdir()):
        manifest = None
        try:
            if p.is_dir() and (p / MANIFEST_FILE).is_file():
                manifest = read_manifest_data(p)
            elif p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
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



def url_allowed(url: str, allowed: list[str]) -> bool:
    """True when ``url`` lies under one of the allowed base URLs (same scheme, host, path prefix)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or ".." in u.path.split("/"):
        return False
    for base in allowed:
        b = urllib.parse.urlsplit(base)
        prefix = b.path if b.path.endswith("/") else b.path + "/"
        if (u.scheme, u.netloc) == (b.scheme, b.netloc) and (u.path.startswith(prefix) or u.path == b.path):
            return True
    return False


