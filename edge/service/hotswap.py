"""Model hot swap for the running daemon: build and self-test the new model off the loop,
switch between two hops, report the outcome.

A mixin of :class:`edge.service.daemon.Daemon` (it uses the daemon's pipeline, detector,
runtime factory and event reporting); kept apart so the processing loop reads on its own.
Audio keeps flowing during a swap and no hop is skipped; a failed load keeps the old model
and publishes ``model_update_failed``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.config import Config
from edge.errors import SonotrapError
from edge.inference.detector import Detector
from edge.models.bundle import DEFAULT_BUNDLE, ModelBundle, load_bundle
from edge.models.store import CURRENT, store_root

if TYPE_CHECKING:
    from collections.abc import Callable

    from edge.contracts import ModelRuntime
    from edge.inference.detector import DetectionEvent
    from edge.inference.pipeline import HopPipeline
    from edge.service.sdnotify import Notifier

log = logging.getLogger("sonotrap.daemon")


def model_bundle_path(cfg: Config) -> Path:
    """``model.bundle``; unset: the device's model store (``<state_dir>/models/current``) once
    an update or ``sonotrap model install`` has filled it, else the shipped demo model."""
    if cfg.model.bundle:
        return Path(cfg.model.bundle)
    current = store_root(cfg.state_dir) / CURRENT
    return current if current.exists() else DEFAULT_BUNDLE


class HotSwap:
    """``request_model_swap`` / ``reload_model`` (SIGHUP) and the switch between hops."""

    # provided by the daemon this is mixed into
    cfg: Config
    runtime_factory: Callable[[ModelBundle, int], ModelRuntime]
    notifier: Notifier
    publisher: Any
    last_error: str | None
    bundle: ModelBundle | None
    classifier: ModelRuntime | None
    pipeline: HopPipeline | None
    _detector: Detector | None
    _swap_lock: threading.Lock
    _reload_lock: threading.Lock
    _pending_swap: tuple[ModelRuntime, Detector] | None

    if TYPE_CHECKING:
        def _event(self, kind: str, data: dict) -> None: ...
        def _emit(self, ev: DetectionEvent, received: float | None) -> None: ...
        def _sd_status(self) -> str: ...
        def _write_status(self) -> None: ...
        @staticmethod
        def _safe(fn: Callable[[], Any]) -> Any: ...

    def request_model_swap(self, bundle: ModelBundle) -> None:
        """Prepare ``bundle`` (session + self-test + detector) here; the loop switches between hops.

        Raises :class:`SonotrapError` (old model untouched) if the bundle cannot run.
        """
        classifier = self.runtime_factory(bundle, self.cfg.model.threads)
        classifier.self_test()
        detector = Detector.for_bundle(bundle, self.cfg.detector)
        with self._swap_lock:
            self._pending_swap = (classifier, detector)

    def reload_model(self) -> None:
        """SIGHUP: re-load ``model.bundle`` (e.g. the ``current`` symlink) and hot-swap it."""
        path = model_bundle_path(self.cfg)
        if not self._reload_lock.acquire(blocking=False):
            log.info("model reload already in progress; ignoring")
            return
        try:
            self.notifier.reloading()
            bundle = load_bundle(path.resolve())
            self.request_model_swap(bundle)
            log.info("model %s %s loaded; switching at the next hop", bundle.name, bundle.version)
        except SonotrapError as err:
            self.last_error = str(err)
            old = self.classifier.bundle if self.classifier else None
            log.error("model reload failed, keeping %s %s: %s", old and old.name, old and old.version, err)
            self._event("model_update_failed", {
                "bundle": str(path), "error": str(err),
                "kept": {"name": old.name, "version": old.version} if old else None,
            })
            self.notifier.ready(self._sd_status())
        finally:
            self._reload_lock.release()

    def _apply_swap(self) -> None:
        with self._swap_lock:
            pending, self._pending_swap = self._pending_swap, None
        if pending is None:
            return
        classifier, detector = pending
        assert self.classifier is not None
        old = self.classifier.bundle
        current = self.pipeline.detector if self.pipeline is not None else self._detector
        assert current is not None
        if detector.labels == current.labels:
            # Same labels: keep open events running across the swap, adopt new thresholds.
            current.thresholds = detector.thresholds
            detector = current
        if self.pipeline is not None:
            for ev in self.pipeline.swap(classifier, detector):
                self._emit(ev, None)
        self._detector = detector
        self.classifier = classifier
        self.bundle = classifier.bundle
        new = classifier.bundle
        log.info("model switched: %s %s -> %s %s", old.name, old.version, new.name, new.version)
        self._event("model_changed", {
            "from": {"name": old.name, "version": old.version},
            "to": {"name": new.name, "version": new.version, "path": str(new.path)},
            "at_hop": self.pipeline.next_hop if self.pipeline else None,
        })
        self._write_status()
        if self.publisher is not None:
            self._safe(self.publisher.publish_status)
        if self.publisher is not None and hasattr(self.publisher, "announce_discovery"):
            self._safe(lambda: self.publisher.announce_discovery(dict(new.names)))
        self.notifier.ready(self._sd_status())  # ends RELOADING=1
