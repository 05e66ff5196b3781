"""HTTP downloads for updates: the index and the bundles, with size limits and resume.

Everything fetched here comes from the network and is hostile until verified: sizes are
capped while streaming (not after), a broken transfer resumes from the kept ``.part`` file
with an HTTP Range request, and a sha256 mismatch deletes the partial file. All network
reads of the updater go through this module, so limits and deadlines have one place.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge.errors import SonotrapError
from edge.util.hashing import sha256_file

log = logging.getLogger("sonotrap.update")

_CHUNK = 1 << 16


DEFAULT_DEADLINE_S = 600.0


def url_allowed(url: str, allowed: list[str]) -> bool:
    """True when ``url`` lies under one of the allowed base URLs, judged after normalisation.

    Same scheme, host and port, no user info, and a path that -- percent-decoded -- has no
    ``.``/``..`` segments and starts with the base's path: ``%2e%2e`` cannot climb out.
    """
    try:
        u = urllib.parse.urlsplit(url)
        host, port = (u.hostname or "").lower(), u.port
    except ValueError:
        return False
    path = urllib.parse.unquote(u.path)
    if u.scheme not in ("http", "https") or u.username is not None or not host:
        return False
    if any(seg in (".", "..") for seg in path.split("/")) or "\\" in path or "\0" in path:
        return False
    for base in allowed:
        b = urllib.parse.urlsplit(base)
        prefix = b.path if b.path.endswith("/") else b.path + "/"
        same = (u.scheme, host, port) == (b.scheme, (b.hostname or "").lower(), b.port)
        if same and (path.startswith(prefix) or path == b.path):
            return True
    return False


class _CheckedRedirect(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a location that passes :func:`url_allowed`."""

    def __init__(self, allowed: list[str] | None) -> None:
        self.allowed = allowed

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (stdlib signature)
        newurl = urllib.parse.urljoin(req.full_url, newurl)
        if self.allowed is not None and not url_allowed(newurl, self.allowed):
            raise SonotrapError(
                f"{req.full_url} redirects to {newurl[:200]}, outside update.url / update.allowed_base_urls; refused"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Watchdog:
    """Shuts the sockets of one fetch down at its deadline, whatever read is blocked.

    Per-read timeouts do not bound a server that sends one byte (of headers or body) every
    few seconds; closing the socket from a timer does, in every phase of the request.
    """

    def __init__(self, deadline: float) -> None:
        self.socks: list[socket.socket] = []
        self.fired = False
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()

    def handlers(self) -> list[urllib.request.BaseHandler]:
        watch = self

        class Http(urllib.request.HTTPHandler):
            def http_open(self, req):  # noqa: ANN001 (stdlib signature)
                return self.do_open(watch._conn(http.client.HTTPConnection), req)

        class Https(urllib.request.HTTPSHandler):
            def https_open(self, req):  # noqa: ANN001 (stdlib signature)
                return self.do_open(watch._conn(http.client.HTTPSConnection), req, context=self._context)

        return [Http(), Https()]

    def _conn(self, base: type) -> type:
        watch = self

        class Conn(base):  # type: ignore[misc, valid-type]
            def connect(self) -> None:
                super().connect()
                watch.socks.append(self.sock)
                if watch.fired:
                    watch._fire()

        return Conn


def _open(req: urllib.request.Request | str, timeout: float, allowed: list[str] | None, watchdog: _Watchdog):
    url = req.full_url if isinstance(req, urllib.request.Request) else req
    if allowed is not None and not url_allowed(url, allowed):
        raise SonotrapError(f"{url[:200]} is outside update.url / update.allowed_base_urls; refused")
    return urllib.request.build_opener(_CheckedRedirect(allowed), *watchdog.handlers()).open(req, timeout=timeout)


def _remaining(deadline: float, url: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise SonotrapError(f"{url[:200]} did not finish within update.deadline_s; the server is too slow or stalls")
    return left


def _chunks(resp: Any, deadline: float, url: str) -> Iterator[bytes]:
    """The response body in chunks, checking the overall deadline before each read."""
    while True:
        _remaining(deadline, url)
        chunk = resp.read1(_CHUNK)
        if not chunk:
            return
        yield chunk


def fetch_bytes(url: str, *, max_bytes: int, timeout: float = 30.0, what: str = "update index",
                deadline_s: float = DEFAULT_DEADLINE_S, allowed: list[str] | None = None) -> bytes:
    """The body of ``url`` (at most ``max_bytes``, within ``deadline_s``); SonotrapError otherwise."""
    deadline = time.monotonic() + deadline_s
    chunks: list[bytes] = []
    total = 0
    watchdog = _Watchdog(deadline)
    try:
        with _open(url, min(timeout, deadline_s), allowed, watchdog) as resp:
            for chunk in _chunks(resp, deadline, url):
                total += len(chunk)
                if total > max_bytes:
                    raise SonotrapError(f"{what} {url} is larger than {max_bytes / 1e6:.0f} MB; it is not a sonotrap index")
                chunks.append(chunk)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        _remaining(deadline, url)  # the watchdog cut it: say so
        raise SonotrapError(f"{what} {url} cannot be fetched ({http_reason(err)}); check the network and update.url") from None
    finally:
        watchdog.cancel()
    _remaining(deadline, url)  # a cut connection can look like a short, complete body
    return b"".join(chunks)


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
    deadline_s: float = DEFAULT_DEADLINE_S,
    allowed: list[str] | None = None,
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
    deadline = time.monotonic() + deadline_s  # all attempts together
    watchdog = _Watchdog(deadline)
    try:
        last_err = _attempts(url, part, attempts, max_bytes=max_bytes, expected_size=expected_size, timeout=timeout,
                             on_progress=on_progress, deadline=deadline, allowed=allowed, watchdog=watchdog)
    finally:
        watchdog.cancel()
    _remaining(deadline, url)
    if last_err is not None:
        raise SonotrapError(
            f"download of {url} failed ({http_reason(last_err)}); the partial file is kept and resumed next time"
        )
    return _finish(url, part, dest, expected_size, sha256)


def _attempts(url: str, part: Path, attempts: int, **kw) -> Exception | None:
    """Up to ``attempts`` tries of :func:`_download_once`; the last network error, or None."""
    last_err: Exception | None = None
    for attempt in range(attempts):
        try:
            _download_once(url, part, **kw)
            return None
        except SonotrapError:
            raise
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            _remaining(kw["deadline"], url)
            last_err = err
            log.warning("download of %s interrupted (%s); resuming (attempt %d)", url, http_reason(err), attempt + 2)
            time.sleep(min(5.0, 0.2 * 2**attempt))
    return last_err


def _finish(url: str, part: Path, dest: Path, expected_size: int | None, sha256: str | None) -> Path:
    """Size and sha256 checks of the complete ``.part`` file, then its rename to ``dest``."""
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
    url: str, part: Path, *, max_bytes: int, expected_size: int | None, timeout: float, on_progress,
    deadline: float, allowed: list[str] | None, watchdog: _Watchdog,
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
        resp = _open(req, min(timeout, _remaining(deadline, url)), allowed, watchdog)
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
            for chunk in _chunks(resp, deadline, url):
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
