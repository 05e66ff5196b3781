"""HTTP downloads for updates: the index and the bundles, with size limits and resume.

Everything fetched here comes from the network and is hostile until verified: sizes are
capped while streaming (not after), a broken transfer resumes from the kept ``.part`` file
with an HTTP Range request, and a sha256 mismatch deletes the partial file. All network
reads of the updater go through this module, so limits and deadlines have one place.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from edge.errors import SonotrapError
from edge.util.hashing import sha256_file

log = logging.getLogger("sonotrap.update")

_CHUNK = 1 << 16


def fetch_bytes(url: str, *, max_bytes: int, timeout: float = 30.0, what: str = "update index") -> bytes:
    """The body of ``url`` (at most ``max_bytes``); SonotrapError naming ``what`` otherwise."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(max_bytes + 1)
    except (urllib.error.URLError, OSError) as err:
        raise SonotrapError(f"{what} {url} cannot be fetched ({http_reason(err)}); check the network and update.url") from None
    if len(body) > max_bytes:
        raise SonotrapError(f"{what} {url} is larger than {max_bytes / 1e6:.0f} MB; it is not a sonotrap index")
    return body


def download(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    expected_size: int | None = None,
    sha256: str | None = None,
    timeout: float = 30.0,
    attempts: int = 3,
    on_progress: Callable[[int], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` with an HTTP Range request.

    A connection that breaks mid-way is resumed (up to ``attempts`` times, and on the next run,
    because the partial file is kept). More than ``max_bytes`` is refused while streaming, not
    after. A sha256 mismatch deletes the partial file so the next attempt starts clean.
    """
    if expected_size is not None and expected_size > max_bytes:
        raise SonotrapError(
            f"bundle {url} is {expected_size / 1e6:.2f} MB, over update.max_download_mb "
            f"({max_bytes / 1e6:.2f} MB); raise the limit if this model is expected"
        )
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_err: Exception | None = None
    for attempt in range(attempts):
        try:
            _download_once(url, part, max_bytes=max_bytes, expected_size=expected_size, timeout=timeout, on_progress=on_progress)
            last_err = None
            break
        except SonotrapError:
            raise
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            last_err = err
            log.warning("download of %s interrupted (%s); resuming (attempt %d)", url, http_reason(err), attempt + 2)
            time.sleep(min(5.0, 0.2 * 2**attempt))
    if last_err is not None:
        raise SonotrapError(
            f"download of {url} failed ({http_reason(last_err)}); the partial file is kept and resumed next time"
        )
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise SonotrapError(f"download of {url} has {size} bytes, the index says {expected_size}; re-publish the index")
    if sha256 is not None:
        got = sha256_file(part)
        if got != sha256.lower():
            part.unlink()
            raise SonotrapError(
                f"download of {url} fails its sha256 check (got {got[:12]}..., index says {sha256[:12]}...); "
                "the file is corrupt or the index is stale"
            )
    os.replace(part, dest)
    return dest


def _download_once(
    url: str, part: Path, *, max_bytes: int, expected_size: int | None, timeout: float, on_progress
) -> None:
    have = part.stat().st_size if part.exists() else 0
    if expected_size is not None and have == expected_size:
        return
    if expected_size is not None and have > expected_size:
        part.unlink()
        have = 0
    headers = {"User-Agent": "sonotrap-updater"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing more to send: the partial file is complete (or bogus)
            if expected_size is None:
                return
            part.unlink()
            raise OSError("server refused to resume; restarting") from None
        raise SonotrapError(f"download of {url} failed: HTTP {err.code} {err.reason}; check the URL/index") from None
    with resp:
        if have and resp.status == 206:
            rng = resp.headers.get("Content-Range", "")
            if not rng.startswith(f"bytes {have}-"):
                part.unlink()
                raise OSError(f"server resumed at the wrong offset ({rng!r}); restarting")
            mode = "ab"
        else:
            have, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        if length is not None and have + int(length) > max_bytes:
            raise SonotrapError(
                f"bundle {url} is {(have + int(length)) / 1e6:.2f} MB, over update.max_download_mb "
                f"({max_bytes / 1e6:.2f} MB); raise the limit if this model is expected"
            )
        with open(part, mode) as fh:
            total = have
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    fh.close()
                    part.unlink()
                    raise SonotrapError(
                        f"bundle {url} is larger than update.max_download_mb ({max_bytes / 1e6:.2f} MB); "
                        "download stopped"
                    )
                fh.write(chunk)
                if on_progress:
                    on_progress(total)
            fh.flush()
            os.fsync(fh.fileno())
        if length is not None and total != have + int(length):
            raise OSError(f"connection closed after {total} bytes")



def http_reason(err: BaseException) -> str:
    """The short cause of a network error, for one-line messages."""
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        return str(err.reason)
    return str(err) or type(err).__name__


def check_free_space(path: Path, need_bytes: int, min_free_mb: float) -> None:
    """Refuse before downloading when the state disk cannot hold the bundle plus a margin."""
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    want = need_bytes + int(min_free_mb * 1e6)
    if free < want:
        raise SonotrapError(
            f"only {free / 1e6:.0f} MB free on {path}, an update needs {want / 1e6:.0f} MB; "
            "free space (old clips, 'sonotrap model list') or lower update.keep_versions"
        )
