"""Safe fleet model updates: find, download, verify, switch, hot-swap, health-check, roll back.

Sources (``--source`` or the ``[update]`` config):

* ``local:DIR`` / ``update.local_dir`` -- a USB stick or rsync target holding bundles
  (``.tar.gz`` or directories) and optionally the same ``index.json`` a server has;
* ``https://host/path/`` / ``update.url`` -- serves ``index.json``::

      {"channels": {"stable": {"version": "1.2.0", "url": "tiny-1.2.0.tar.gz",
                               "sha256": "...", "size": 123456},
                    "beta":   {...}},
       "versions": {"1.1.0": {...}, ...}}        # optional: lets a command name any version

  (``url`` may be relative to the index) plus the bundles themselves;
* an MQTT command on ``<prefix>/<device>/cmd/update`` naming a version (looked up in the
  configured source) or a URL (only under ``update.allowed_base_urls``).

The procedure never leaves the device without a working model: the new bundle is verified
(sha256, ed25519 signature against the device's trusted keys, load + self-test in a separate
process) *before* the ``current`` link moves; after the switch the daemon hot-swaps between two
hops (SIGHUP, or ``Daemon.request_model_swap`` in-process) and must report the new version with
hops advancing within ``update.health_timeout_s``, otherwise the previous model is switched back
and swapped in again. Every step is reported as an event and the outcome is kept in
``<state_dir>/update-status.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.config import DEFAULT_CONFIG_PATH, Config
from edge.errors import SonotrapError
from edge.models.store import ModelStore, StoredModel, store_root, version_key

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
UPDATE_STATUS_FILE = "update-status.json"
DAEMON_STATUS_FILE = "status.json"
_MAX_INDEX_BYTES = 1 << 20
_CHUNK = 1 << 16

Reporter = Callable[[str, dict], None]


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


@dataclass
class UpdateResult:
    """Outcome of one update attempt (also what ``update-status.json`` keeps as last_update)."""

    result: str  # "updated" | "up-to-date" | "rejected" | "rolled-back" | "failed" | "installed"
    version: str | None = None
    previous: str | None = None
    reason: str = ""
    source: str = ""
    time: float = field(default_factory=time.time)
    steps: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result in ("updated", "up-to-date", "installed")

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- sources


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
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(_MAX_INDEX_BYTES + 1)
    except (urllib.error.URLError, OSError) as err:
        raise SonotrapError(f"update index {url} cannot be fetched ({_reason(err)}); check the network and update.url") from None
    if len(body) > _MAX_INDEX_BYTES:
        raise SonotrapError(f"update index {url} is larger than 1 MB; it is not a sonotrap index")
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
            if p.is_dir() and (p / "manifest.json").is_file():
                manifest = json.loads((p / "manifest.json").read_text())
            elif p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
                manifest = _manifest_from_archive(p)
        except (OSError, ValueError, tarfile.TarError, EOFError) as err:
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


def _manifest_from_archive(p: Path) -> dict | None:
    with tarfile.open(p, "r:*") as tar:
        for m in tar.getmembers():
            if m.isfile() and Path(m.name).name == "manifest.json" and len(Path(m.name).parts) <= 2:
                fh = tar.extractfile(m)
                return json.loads(fh.read(_MAX_INDEX_BYTES)) if fh else None
    return None


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


def parse_command(payload: bytes) -> dict:
    """``cmd/update`` payload -> {"version": ...} or {"url": ..., "sha256": ...} or {"check": True}.

    Accepts JSON (``{"version": "1.2.0"}``, ``{"url": "...", "sha256": "..."}``, ``{}`` = check
    the channel now) or a bare string (a URL or a version).
    """
    text = payload.decode("utf-8", "replace").strip()
    if not text:
        return {"check": True}
    try:
        data = json.loads(text)
    except ValueError:
        data = text
    if isinstance(data, str):
        return {"url": data} if "://" in data else {"version": data}
    if not isinstance(data, dict):
        raise SonotrapError(f"cmd/update payload {text[:80]!r} must be a JSON object, a version or a URL")
    out = {k: data[k] for k in ("version", "url", "sha256", "size", "channel") if data.get(k) is not None}
    if data.get("action") == "rollback":
        out["rollback"] = True
    return out or {"check": True}


# ---------------------------------------------------------------- download


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
            log.warning("download of %s interrupted (%s); resuming (attempt %d)", url, _reason(err), attempt + 2)
            time.sleep(min(5.0, 0.2 * 2**attempt))
    if last_err is not None:
        raise SonotrapError(
            f"download of {url} failed ({_reason(last_err)}); the partial file is kept and resumed next time"
        )
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise SonotrapError(f"download of {url} has {size} bytes, the index says {expected_size}; re-publish the index")
    if sha256 is not None:
        got = _sha256(part)
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _reason(err: BaseException) -> str:
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


# ---------------------------------------------------------------- daemon control


class SignalDaemon:
    """Out-of-process daemon control: SIGHUP to the running daemon and its status.json.

    The pid comes from ``<state_dir>/status.json`` ("pid") or systemd's MainPID of
    sonotrap.service, in that order; each candidate must be alive.
    """

    def __init__(self, state_dir: str | Path, unit: str = "sonotrap.service") -> None:
        self.state_dir = Path(state_dir)
        self.unit = unit

    def pid(self) -> int | None:
        candidates: list[int] = []
        st = read_json(self.state_dir / DAEMON_STATUS_FILE) or {}
        if isinstance(st.get("pid"), int):
            candidates.append(st["pid"])
        if shutil.which("systemctl"):
            with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
                out = subprocess.run(
                    ["systemctl", "show", "-p", "MainPID", "--value", self.unit],
                    capture_output=True, text=True, timeout=5,
                ).stdout.strip()
                if out and out != "0":
                    candidates.append(int(out))
        for pid in candidates:
            if pid > 1 and _alive(pid):
                return pid
        return None

    def running(self) -> bool:
        return self.pid() is not None

    def swap(self) -> None:
        pid = self.pid()
        if pid is None:
            raise SonotrapError("the sonotrap daemon is not running; nothing to hot-swap")
        os.kill(pid, signal.SIGHUP)

    def status(self) -> dict:
        return read_json(self.state_dir / DAEMON_STATUS_FILE) or {}


class InProcessDaemon:
    """In-process control for the MQTT command: ``Daemon.request_model_swap`` + ``Daemon.status``."""

    def __init__(self, daemon: Any, model_path: str | Path) -> None:
        self.daemon = daemon
        self.model_path = Path(model_path)

    def running(self) -> bool:
        return True

    def swap(self) -> None:
        from edge.models.bundle import load_bundle

        # request_model_swap self-tests the session itself; resolve() names the versioned directory
        self.daemon.request_model_swap(load_bundle(self.model_path.resolve(), self_test=False))

    def status(self) -> dict:
        return self.daemon.status()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but another user's: not ours to signal
        return False


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def status_model_version(st: dict) -> str | None:
    v = st.get("model_version")
    if v is None and isinstance(st.get("model"), dict):
        v = st["model"].get("version")
    return str(v) if v is not None else None


def status_last_hop(st: dict) -> float | None:
    v = st.get("last_hop_epoch")
    if v is None and isinstance(st.get("pipeline"), dict):
        v = st["pipeline"].get("last_hop_epoch")
    return float(v) if isinstance(v, int | float) else None


def wait_healthy(
    status: Callable[[], dict], version: str, since_hop: float | None, timeout_s: float, poll_s: float = 0.25
) -> tuple[bool, str]:
    """Wait until the daemon reports ``version`` and a hop newer than ``since_hop`` (twice)."""
    deadline = time.monotonic() + timeout_s
    seen_version = None
    advanced = 0
    last = since_hop
    while time.monotonic() < deadline:
        st = status()
        seen_version = status_model_version(st)
        hop = status_last_hop(st)
        if seen_version == version and hop is not None and (last is None or hop > last):
            advanced += 1
            last = hop
            if advanced >= 2:  # two fresh hops on the new model: it really runs
                return True, ""
        time.sleep(poll_s)
    if seen_version != version:
        return False, f"daemon still reports model {seen_version} after {timeout_s:.0f} s (new model not swapped in)"
    return False, f"daemon runs {version} but processed no new hops within {timeout_s:.0f} s"


# ---------------------------------------------------------------- events


class MqttEvents:
    """Out-of-process reporter: a short-lived MQTT client publishing to ``.../events``.

    Best effort: an unreachable broker only costs a log line (the journal has every step).
    """

    def __init__(self, cfg: Config, timeout_s: float = 5.0) -> None:
        self.cfg = cfg
        self.device = cfg.mqtt.device_id or socket.gethostname()
        self.topic = f"{cfg.mqtt.prefix}/{self.device}/events"
        self.timeout_s = timeout_s
        self._client = None
        self._pending: list = []
        if cfg.mqtt.enabled:
            self._connect()

    def _connect(self) -> None:
        try:
            import paho.mqtt.client as mqtt

            m = self.cfg.mqtt
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=f"sonotrap-update-{self.device}-{os.getpid()}",
                protocol=mqtt.MQTTv5 if m.protocol == "5" else mqtt.MQTTv311,
            )
            password = m.password
            if m.password_file:
                password = Path(m.password_file).read_text().strip()
            if m.username:
                client.username_pw_set(m.username, password)
            if m.tls:
                client.tls_set(ca_certs=m.ca_file, certfile=m.cert_file, keyfile=m.key_file)
                client.tls_insecure_set(m.tls_insecure)
            client.connect(m.host, m.port, keepalive=30)
            client.loop_start()
            self._client = client
        except Exception as err:  # network/TLS errors of every kind: events are best effort
            log.warning("update events will not reach MQTT (%s:%s): %s", self.cfg.mqtt.host, self.cfg.mqtt.port, err)
            self._client = None

    def __call__(self, kind: str, data: dict) -> None:
        if self._client is None:
            return
        from edge.mqtt.payloads import encode, event_payload

        info = self._client.publish(self.topic, encode(event_payload(self.device, kind, data)), qos=1)
        self._pending.append(info)

    def close(self) -> None:
        if self._client is None:
            return
        deadline = time.monotonic() + self.timeout_s
        for info in self._pending:
            with contextlib.suppress(Exception):
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None


# ---------------------------------------------------------------- the procedure


class Updater:
    """One device's update procedure; side effects (daemon, events, sleep) are injected."""

    def __init__(
        self,
        cfg: Config,
        *,
        daemon: SignalDaemon | InProcessDaemon | None = None,
        report: Reporter | None = None,
        config_path: str | Path | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir)
        self.store = ModelStore(store_root(cfg.state_dir), keep_versions=cfg.update.keep_versions)
        self.daemon = daemon if daemon is not None else SignalDaemon(cfg.state_dir)
        self._report = report
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.trusted_keys = trusted_keys_path(cfg, config_path)
        self._lock = threading.Lock()

    # -- reporting

    def report(self, kind: str, **data: Any) -> None:
        log.log(logging.WARNING if kind.endswith(("failed", "rejected", "rolled_back")) else logging.INFO,
                "%s %s", kind, json.dumps(data, default=str))
        if self._report is not None:
            try:
                self._report(kind, data)
            except Exception as err:  # a reporting failure must never abort an update
                log.warning("could not report %s: %s", kind, err)

    # -- public API

    def jitter(self, max_s: float | None = None) -> float:
        """Sleep a random 0..max_s so a fleet polling on the same schedule spreads out."""
        max_s = self.cfg.update.jitter_s if max_s is None else max_s
        delay = self.rng.uniform(0.0, max_s) if max_s > 0 else 0.0
        if delay:
            log.info("waiting %.1f s (update.jitter_s) before polling", delay)
            self.sleep(delay)
        return delay

    def check(self, source: str | None = None, channel: str | None = None, version: str | None = None) -> Offer | None:
        """The offer to install, or None when the device is up to date (or it failed before)."""
        src = resolve_source(self.cfg, source)
        offer = find_offer(src, channel=channel or self.cfg.update.channel, version=version,
                           timeout=self.cfg.update.http_timeout_s)
        if offer is None:
            if version is not None:
                raise SonotrapError(f"version {version} is not offered by {src}; check the index")
            return None
        cur = self.store.current()
        if version is None:
            if cur is not None and version_key(offer.version) <= version_key(cur.version):
                return None
            bad = self.status_doc().get("failed", {}).get(offer.version)
            if bad and (bad.get("blocked") or bad.get("sha256") == offer.sha256):
                log.info("skipping %s: %s (install it explicitly with --version to override)",
                         offer.version, bad.get("reason"))
                return None
        return offer

    def run_command(self, payload: bytes) -> UpdateResult:
        """Handle an MQTT ``cmd/update`` message (version, URL, rollback or check-now)."""
        try:
            cmd = parse_command(payload)
        except SonotrapError as err:
            self.report("update_rejected", reason=str(err))
            return self._finish(UpdateResult("rejected", reason=str(err)))
        if cmd.get("rollback"):
            return self.rollback()
        if "url" in cmd:
            url = cmd["url"]
            if not url_allowed(url, self.cfg.update.allowed_base_urls):
                reason = f"URL {url} is not under update.allowed_base_urls; refused"
                self.report("update_rejected", url=url, reason=reason)
                return self._finish(UpdateResult("rejected", reason=reason, source=url))
            offer = Offer(version=str(cmd.get("version", "")), location=url, sha256=cmd.get("sha256"),
                          size=cmd.get("size"), source="mqtt")
            return self.apply(offer, explicit=True)
        try:
            offer = self.check(channel=cmd.get("channel"), version=cmd.get("version"))
        except SonotrapError as err:
            self.report("update_failed", reason=str(err))
            return self._finish(UpdateResult("failed", reason=str(err)))
        if offer is None:
            self.report("update_up_to_date", current=self._current_version())
            return self._finish(UpdateResult("up-to-date", version=self._current_version()), record=False)
        return self.apply(offer, explicit="version" in cmd)

    def update(self, source: str | None = None, channel: str | None = None, version: str | None = None) -> UpdateResult:
        """Check and, if there is something newer (or the requested version), apply it."""
        try:
            offer = self.check(source, channel, version)
        except SonotrapError as err:
            self.report("update_failed", step="check", reason=str(err))
            return self._finish(UpdateResult("failed", reason=str(err), source=source or ""))
        if offer is None:
            log.info("model is up to date (%s)", self._current_version())
            return self._finish(UpdateResult("up-to-date", version=self._current_version()), record=False)
        return self.apply(offer, explicit=version is not None)

    def apply(self, offer: Offer, explicit: bool = False) -> UpdateResult:
        """Download, verify, install, switch, hot-swap, health-check; roll back on failure."""
        with self._lock:
            return self._apply(offer, explicit)

    def rollback(self) -> UpdateResult:
        """Operator/command rollback: previous model becomes current and is hot-swapped in."""
        with self._lock:
            try:
                old, new = self.store.rollback()
            except SonotrapError as err:
                self.report("rollback_failed", reason=str(err))
                return self._finish(UpdateResult("failed", reason=str(err)))
            self.report("model_rolled_back", **{"from": old.version, "to": new.version})
            # an operator rolled it back: automatic updates must not bring it straight back
            self._block(old.version, f"rolled back by the operator to {new.version}")
            res = UpdateResult("updated", version=new.version, previous=old.version, source="rollback")
            ok, reason = self._swap_and_check(new.version)
            if not ok:
                res.result, res.reason = "failed", reason
            return self._finish(res)

    def activate(self, version: str) -> UpdateResult:
        """Operator activation of an installed version, with the same health check + rollback."""
        with self._lock:
            target = self.store.find(version)
            cur = self.store.current()
            if cur is not None and cur.dirname == target.dirname:
                return UpdateResult("up-to-date", version=cur.version)
            return self._switch(target, UpdateResult("updated", version=target.version, source="activate"))

    # -- internals

    def _apply(self, offer: Offer, explicit: bool) -> UpdateResult:
        cur = self.store.current()
        res = UpdateResult("failed", version=offer.version or None, previous=cur.version if cur else None,
                           source=offer.location)
        self.report("update_started", version=offer.version, url=offer.location, current=res.previous,
                    explicit=explicit)
        downloads = self.state_dir / "downloads"
        try:
            max_bytes = int(self.cfg.update.max_download_mb * 1e6)
            need = offer.size if offer.size is not None else max_bytes
            check_free_space(self.state_dir, 3 * need, self.cfg.update.min_free_mb)
            res.steps.append("disk")
            if offer.is_remote:
                name = offer.sha256 or hashlib.sha256(offer.location.encode()).hexdigest()
                path = download(
                    offer.location, downloads / f"{name[:32]}.tar.gz", max_bytes=max_bytes,
                    expected_size=offer.size, sha256=offer.sha256, timeout=self.cfg.update.http_timeout_s,
                )
                self.report("update_downloaded", version=offer.version, bytes=path.stat().st_size)
            else:
                path = Path(offer.location)
                if offer.sha256 and path.is_file() and _sha256(path) != offer.sha256:
                    raise SonotrapError(f"{path} fails its sha256 check against the index; copy it again")
            res.steps.append("download")
            stored = self.store.install(
                path, trusted_keys=self.trusted_keys, allow_unsigned=self.cfg.update.allow_unsigned,
                label=offer.location, timeout_s=self.cfg.update.verify_timeout_s,
            )
            res.steps.append("verify")
            if offer.is_remote:
                with contextlib.suppress(OSError):
                    path.unlink()
        except SonotrapError as err:
            res.result, res.reason = "rejected", str(err)
            self.report("update_rejected", version=offer.version, reason=str(err), current=res.previous)
            if "download" in res.steps:  # the bundle itself is bad: do not retry it every poll
                self._remember_failure(offer, str(err))
            return self._finish(res)
        res.version = stored.version
        if offer.version and stored.version != offer.version:
            reason = f"bundle says version {stored.version}, the index says {offer.version}; fix the index"
            res.result, res.reason = "rejected", reason
            self.report("update_rejected", version=offer.version, reason=reason)
            self._remember_failure(offer, reason)
            return self._finish(res)
        self.report("update_verified", version=stored.version, key_id=stored.key_id)
        if cur is not None and cur.dirname == stored.dirname:
            res.result = "up-to-date"
            return self._finish(res, record=False)
        res = self._switch(stored, res)
        if res.result == "rolled-back":
            self._remember_failure(offer, res.reason)
        return res

    def _switch(self, target: StoredModel, res: UpdateResult) -> UpdateResult:
        old, new = self.store.activate(target.dirname)
        res.previous = old.version if old else None
        res.steps.append("switch")
        self.report("model_activated", version=new.version, previous=res.previous)
        ok, reason = self._swap_and_check(new.version)
        if ok:
            res.result = "updated" if self.daemon.running() or isinstance(self.daemon, InProcessDaemon) else "installed"
            res.steps.append("health")
            self.report("update_succeeded", version=new.version, previous=res.previous)
            doc = self.status_doc()
            if doc.get("failed", {}).pop(new.version, None) is not None:  # explicitly re-installed: unblock
                self._write_status(doc)
            return self._finish(res)
        res.reason = reason
        if old is None:
            res.result = "failed"
            self.report("update_failed", version=new.version, reason=reason + "; no previous model to roll back to")
            return self._finish(res)
        self.store.activate(old.dirname)
        res.result = "rolled-back"
        self.report("update_rolled_back", version=new.version, to=old.version, reason=reason)
        ok2, reason2 = self._swap_and_check(old.version)
        if not ok2:
            self.report("rollback_unhealthy", version=old.version, reason=reason2)
        return self._finish(res)

    def _swap_and_check(self, version: str) -> tuple[bool, str]:
        if not self.daemon.running():
            log.info("daemon not running: %s will be loaded at its next start", version)
            return True, ""
        since = status_last_hop(self.daemon.status())
        try:
            self.daemon.swap()
        except (SonotrapError, OSError) as err:
            return False, f"could not signal the daemon ({err})"
        self.report("model_swap_requested", version=version)
        return wait_healthy(self.daemon.status, version, since, self.cfg.update.health_timeout_s)

    def _current_version(self) -> str | None:
        cur = self.store.current()
        return cur.version if cur else None

    def status_doc(self) -> dict:
        return read_json(self.state_dir / UPDATE_STATUS_FILE) or {}

    def _remember_failure(self, offer: Offer, reason: str) -> None:
        doc = self.status_doc()
        doc.setdefault("failed", {})[offer.version or offer.location] = {
            "sha256": offer.sha256, "reason": reason, "time": time.time()
        }
        self._write_status(doc)

    def _block(self, version: str, reason: str) -> None:
        doc = self.status_doc()
        doc.setdefault("failed", {})[version] = {"blocked": True, "reason": reason, "time": time.time()}
        self._write_status(doc)

    def _finish(self, res: UpdateResult, record: bool = True) -> UpdateResult:
        doc = self.status_doc()
        cur, prev = self.store.current(), self.store.previous()
        doc["current"] = cur.version if cur else None
        doc["previous"] = prev.version if prev else None
        doc["last_check"] = time.time()
        if record:
            doc["last_update"] = res.to_dict()
            _append_history(self.state_dir, res)
        self._write_status(doc)
        return res

    def _write_status(self, doc: dict) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.state_dir / UPDATE_STATUS_FILE, doc)


def _append_history(state_dir: Path, res: UpdateResult) -> None:
    """One JSON line per update attempt, in $LOGS_DIRECTORY (systemd) or the state dir."""
    logs = os.environ.get("LOGS_DIRECTORY")
    path = (Path(logs.split(":")[0]) if logs else state_dir) / "update-history.jsonl"
    with contextlib.suppress(OSError):
        with open(path, "a") as fh:
            fh.write(json.dumps(res.to_dict()) + "\n")


def trusted_keys_path(cfg: Config, config_path: str | Path | None = None) -> Path | None:
    """update.trusted_keys_dir, else ``trusted_keys`` next to the config file (if it exists)."""
    if cfg.update.trusted_keys_dir:
        return Path(cfg.update.trusted_keys_dir)
    base = Path(config_path).parent if config_path else DEFAULT_CONFIG_PATH.parent
    p = base / "trusted_keys"
    return p if p.exists() else None


def update_status_summary(state_dir: str | Path) -> dict:
    """For the daemon's status: the store's current/previous versions and the last update's outcome.

    Cheap (two symlinks, two small JSON files), so the daemon can call it for every status.
    """
    store = ModelStore(store_root(state_dir))
    cur, prev = store.current(), store.previous()
    doc = read_json(Path(state_dir) / UPDATE_STATUS_FILE) or {}
    last = doc.get("last_update") or {}
    return {
        "current": cur.version if cur else None,
        "previous": prev.version if prev else None,
        "last_update": {k: last.get(k) for k in ("result", "version", "previous", "reason", "time")} if last else None,
    }


def attach_mqtt_updates(cfg: Config, daemon: Any, publisher: Any, config_path: str | Path | None = None) -> Updater:
    """Wire ``cmd/update`` into a running daemon: updates run in a worker thread, report on events.

    The paho network thread only parses and hands over; the procedure (download, verify in a
    subprocess, health check) runs in its own thread so MQTT and audio keep flowing.
    """
    model_path = cfg.model.bundle or str(store_root(cfg.state_dir) / "current")
    updater = Updater(cfg, daemon=InProcessDaemon(daemon, model_path), report=publisher.publish_event,
                      config_path=config_path)

    def on_message(_topic: str, payload: bytes) -> None:
        if updater._lock.locked():
            updater.report("update_rejected", reason="another update is in progress; try again later")
            return
        threading.Thread(target=updater.run_command, args=(payload,), name="sonotrap-update", daemon=True).start()

    publisher.subscribe("cmd/update", on_message)
    return updater
