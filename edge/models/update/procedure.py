"""The update procedure: check, download, verify, install, switch, hot-swap, health-check, roll back.

One device's procedure, with every side effect injected (daemon control, event reporter,
sleep, randomness) so tests drive it with real stand-ins. It never leaves the device
without a working model; the package docstring (:mod:`edge.models.update`) walks through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.config import DEFAULT_CONFIG_PATH, Config
from edge.errors import SonotrapError
from edge.models.manifest import version_key
from edge.models.store import ModelStore, StoredModel, store_root
from edge.models.update.commands import parse_command
from edge.models.update.daemon_control import DaemonHandle, SignalDaemon, wait_healthy
from edge.models.update.download import check_free_space, download
from edge.models.update.lock import Lease, UpdateLock
from edge.models.update.sources import (
    Offer,
    check_local_bundle,
    find_offer,
    resolve_source,
    source_base,
    url_allowed,
)
from edge.models.update.status import UpdateResult, UpdateStatus
from edge.service.status import Health
from edge.util.hashing import sha256_file

log = logging.getLogger("sonotrap.update")

Reporter = Callable[[str, dict], None]


class Updater:
    """One device's update procedure; side effects (daemon, events, sleep) are injected.

    Every public activity (check, update, command, apply, rollback, activate) holds the
    device's update lock (:mod:`.lock`) throughout and raises :class:`~.lock.UpdateBusy` at
    once, writing nothing, when another activity -- in this process or another -- holds it.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        daemon: DaemonHandle | None = None,
        report: Reporter | None = None,
        config_path: str | Path | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir)
        self.store = ModelStore(store_root(cfg.state_dir), keep_versions=cfg.update.keep_versions)
        self.daemon: DaemonHandle = daemon if daemon is not None else SignalDaemon(cfg.state_dir)
        self.status = UpdateStatus(cfg.state_dir)
        self._report = report
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.trusted_keys = trusted_keys_path(cfg, config_path)
        self.lock = UpdateLock(cfg.state_dir)

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
        with self.lock.hold("update check"):
            return self._check(source, channel, version)

    def _check(self, source: str | None, channel: str | None, version: str | None) -> Offer | None:
        src = resolve_source(self.cfg, source)
        offer = find_offer(src, channel=channel or self.cfg.update.channel, version=version,
                           timeout=self.cfg.update.http_timeout_s, deadline_s=self.cfg.update.deadline_s,
                           allowed=self.cfg.update.allowed_base_urls)
        if offer is None:
            if version is not None:
                raise SonotrapError(f"version {version} is not offered by {src}; check the index")
            return None
        cur = self.store.current()
        if version is None:
            if cur is not None and version_key(offer.version) <= version_key(cur.version):
                return None
            bad = self.status.failure(offer.version)
            if bad and (bad.get("blocked") or bad.get("sha256") == offer.sha256):
                log.info("skipping %s: %s (install it explicitly with --version to override)",
                         offer.version, bad.get("reason"))
                return None
        return offer

    def run_command(self, payload: bytes, lease: Lease | None = None) -> UpdateResult:
        """Handle an MQTT ``cmd/update`` message (version, URL, rollback or check-now).

        ``lease``: the update lock, already taken by the caller (the daemon's command handler
        takes it before starting its worker, so a busy device refuses at once); it stays the
        caller's to release.
        """
        if lease is not None and lease.held:
            return self._run_command(payload)
        with self.lock.hold("MQTT cmd/update"):
            return self._run_command(payload)

    def _run_command(self, payload: bytes) -> UpdateResult:
        try:
            cmd = parse_command(payload)
        except SonotrapError as err:
            self.report("update_rejected", reason=str(err))
            return self._finish(UpdateResult("rejected", reason=str(err)))
        if cmd.get("rollback"):
            return self._rollback()
        if "url" in cmd:
            url = cmd["url"]
            if not url_allowed(url, self.cfg.update.allowed_base_urls):
                reason = f"URL {url} is not under update.allowed_base_urls; refused"
                self.report("update_rejected", url=url, reason=reason)
                return self._finish(UpdateResult("rejected", reason=reason, source=url))
            named = Offer(version=str(cmd.get("version", "")), location=url, sha256=cmd.get("sha256"),
                          size=cmd.get("size"), source="mqtt")
            return self._apply(named, explicit=True)
        try:
            offer = self._check(None, channel=cmd.get("channel"), version=cmd.get("version"))
        except SonotrapError as err:
            self.report("update_failed", reason=str(err))
            return self._finish(UpdateResult("failed", reason=str(err)))
        if offer is None:
            self.report("update_up_to_date", current=self._current_version())
            return self._finish(UpdateResult("up-to-date", version=self._current_version()), record=False)
        return self._apply(offer, explicit="version" in cmd)

    def update(self, source: str | None = None, channel: str | None = None, version: str | None = None,
               allow_downgrade: bool = False) -> UpdateResult:
        """Check and, if there is something newer (or the requested version), apply it."""
        with self.lock.hold("update"):
            return self._update(source, channel, version, allow_downgrade)

    def _update(self, source: str | None, channel: str | None, version: str | None,
                allow_downgrade: bool) -> UpdateResult:
        try:
            offer = self._check(source, channel, version)
        except SonotrapError as err:
            self.report("update_failed", step="check", reason=str(err))
            return self._finish(UpdateResult("failed", reason=str(err), source=source or ""))
        if offer is None:
            log.info("model is up to date (%s)", self._current_version())
            return self._finish(UpdateResult("up-to-date", version=self._current_version()), record=False)
        return self._apply(offer, explicit=version is not None, allow_downgrade=allow_downgrade)

    def apply(self, offer: Offer, explicit: bool = False, allow_downgrade: bool = False) -> UpdateResult:
        """Download, verify, install, switch, hot-swap, health-check; roll back on failure.

        An older version than the current one is refused unless ``allow_downgrade`` (an
        operator's local command) or ``update.allow_downgrade`` says otherwise.
        """
        with self.lock.hold("update install"):
            return self._apply(offer, explicit, allow_downgrade)

    def rollback(self) -> UpdateResult:
        """Operator/command rollback: previous model becomes current and is hot-swapped in."""
        with self.lock.hold("rollback"):
            return self._rollback()

    def activate(self, version: str) -> UpdateResult:
        """Operator activation of an installed version, with the same health check + rollback."""
        with self.lock.hold("activate"):
            target = self.store.find(version)
            cur = self.store.current()
            if cur is not None and cur.dirname == target.dirname:
                return UpdateResult("up-to-date", version=cur.version)
            return self._switch(target, UpdateResult("updated", version=target.version, source="activate"))

    # -- internals (the caller holds the update lock)

    def _rollback(self) -> UpdateResult:
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

    def _downgrade_refusal(self, version: str, allow_downgrade: bool) -> str | None:
        """Why installing ``version`` is refused as a downgrade (None when it is allowed)."""
        cur = self.store.current()
        if not version or cur is None or allow_downgrade or self.cfg.update.allow_downgrade:
            return None
        if version_key(version) >= version_key(cur.version):
            return None
        return (f"version {version} is older than the running {cur.version}; downgrades need "
                "update.allow_downgrade = true or 'sonotrap update --allow-downgrade' on the device")

    def _apply(self, offer: Offer, explicit: bool, allow_downgrade: bool = False) -> UpdateResult:
        cur = self.store.current()
        res = UpdateResult("failed", version=offer.version or None, previous=cur.version if cur else None,
                           source=offer.location)
        refusal = self._downgrade_refusal(offer.version, allow_downgrade)
        if refusal:
            res.result, res.reason = "rejected", refusal
            self.report("update_rejected", version=offer.version, reason=refusal, current=res.previous)
            return self._finish(res)
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
                    deadline_s=self.cfg.update.deadline_s, allowed=self._allowed_urls(offer),
                )
                self.report("update_downloaded", version=offer.version, bytes=path.stat().st_size)
            else:
                folder = offer.source[len("local:"):] if offer.source.startswith("local:") else Path(offer.location).parent
                path = check_local_bundle(offer.location, folder, max_bytes)
                if offer.sha256 and path.is_file() and sha256_file(path) != offer.sha256:
                    raise SonotrapError(f"{path} fails its sha256 check against the index; copy it again")
            res.steps.append("download")
            stored = self.store.install(
                path, trusted_keys=self.trusted_keys, allow_unsigned=self.cfg.update.allow_unsigned,
                label=offer.location, timeout_s=self.cfg.update.verify_timeout_s,
                memory_mb=self.cfg.update.verify_memory_mb,
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
        refusal = self._downgrade_refusal(stored.version, allow_downgrade)
        if refusal:  # the index or command named no version, or another one
            res.result, res.reason = "rejected", refusal
            self.report("update_rejected", version=stored.version, reason=refusal, current=res.previous)
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
            res.result = "updated" if self.daemon.running() else "installed"
            res.steps.append("health")
            self.report("update_succeeded", version=new.version, previous=res.previous)
            self.status.unblock(new.version)  # explicitly re-installed
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
        since = Health.of(self.daemon.status()).last_hop_epoch
        try:
            self.daemon.swap()
        except (SonotrapError, OSError) as err:
            return False, f"could not signal the daemon ({err})"
        except Exception as err:  # e.g. MemoryError building the new session: never leave it current
            log.exception("hot swap to %s failed", version)
            return False, f"the daemon could not load {version} ({type(err).__name__}: {str(err)[:200]})"
        self.report("model_swap_requested", version=version)
        return wait_healthy(self.daemon.status, version, since, self.cfg.update.health_timeout_s)

    def _allowed_urls(self, offer: Offer) -> list[str]:
        """Where a bundle (and any redirect) may come from: the allow-list, plus an index's own base."""
        allowed = list(self.cfg.update.allowed_base_urls)
        if offer.source.startswith(("http://", "https://")):
            allowed.append(source_base(offer.source))
        return allowed

    def _current_version(self) -> str | None:
        cur = self.store.current()
        return cur.version if cur else None

    def status_doc(self) -> dict:
        return self.status.doc()

    def _remember_failure(self, offer: Offer, reason: str) -> None:
        self.status.remember_failure(offer.version or offer.location, offer.sha256, reason)

    def _block(self, version: str, reason: str) -> None:
        self.status.block(version, reason)

    def _finish(self, res: UpdateResult, record: bool = True) -> UpdateResult:
        self.status.finish(res, self.store.current(), self.store.previous(), record)
        return res


def trusted_keys_path(cfg: Config, config_path: str | Path | None = None) -> Path | None:
    """update.trusted_keys_dir, else ``trusted_keys`` next to the config file (if it exists)."""
    if cfg.update.trusted_keys_dir:
        return Path(cfg.update.trusted_keys_dir)
    base = Path(config_path).parent if config_path else DEFAULT_CONFIG_PATH.parent
    p = base / "trusted_keys"
    return p if p.exists() else None
