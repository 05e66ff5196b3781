"""The streaming daemon behind ``sonotrap run``: audio -> hops -> detections -> MQTT.

One processing loop on the calling (main) thread pulls audio blocks from the source's
bounded queue (filled by the source's own thread/callback, which never waits on us), feeds
the hop pipeline, publishes detections, writes ``status.json`` and pets the systemd
watchdog — from this loop only, so a stuck pipeline stops the pings and systemd restarts
the service. When inference falls behind, pending hops are classified together (up to
``model.max_batch``) and the backlog is reported in the status.

Model hot swap (SIGHUP or :meth:`Daemon.request_model_swap`): the new session is built and
self-tested off the loop, then switched in between two hops; audio keeps flowing and no hop
is skipped. A failed load keeps the old model and publishes ``model_update_failed``.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from edge import __version__
from edge.config import Config
from edge.contracts import AudioSource, DetectionSink, ModelRuntime
from edge.errors import SonotrapError
from edge.inference.detector import DetectionEvent, Detector
from edge.inference.pipeline import HopPipeline, HopResult
from edge.inference.runtime import Classifier
from edge.models.bundle import ModelBundle, load_bundle
from edge.models.update.status import update_status_summary
from edge.mqtt.payloads import FileOffset
from edge.service.clips import ClipWriter
from edge.service.hotswap import HotSwap, model_bundle_path
from edge.service.sdnotify import Notifier
from edge.service.sinks import JsonLinesSink
from edge.service.status import write_status
from edge.util.identity import device_id

log = logging.getLogger("sonotrap.daemon")

STATUS_FILE_INTERVAL_S = 2.0  # status.json refresh (the updater's health check reads it)
SD_STATUS_INTERVAL_S = 10.0
READ_TIMEOUT_S = 0.2  # longest the loop waits for audio before doing housekeeping


def _payload(event: DetectionEvent, dev: str, bundle: ModelBundle, hop_s: float,
             offset: FileOffset | None = None) -> dict[str, Any]:
    """The versioned detection payload (``edge.mqtt.payloads``); identical for MQTT and --jsonl."""
    from edge.mqtt.payloads import MessageContext, detection_payload

    ctx = MessageContext(dev, bundle.name, bundle.version, hop_s, bundle.frontend.window_s)
    return detection_payload(event, ctx, offset=offset)


class Daemon(HotSwap):
    """Runs the detector until stopped; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        *,
        source: AudioSource | None = None,
        bundle: ModelBundle | None = None,
        runtime_factory: Callable[[ModelBundle, int], ModelRuntime] = Classifier,
        publisher=None,
        sinks: Sequence[DetectionSink] = (),
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
        jsonl: str | IO[str] | None = None,
        hops_jsonl: str | IO[str] | None = None,
        install_signals: bool = True,
    ) -> None:
        """``source``: audio (default: opened from ``cfg.audio``); ``runtime_factory(bundle, threads)``
        builds the model runtime (default onnxruntime) for the first model and every hot swap;
        ``publisher``: the MQTT side (detections, status, events, discovery); ``sinks``: further
        detection sinks (``jsonl`` is a shorthand for a :class:`JsonLinesSink`)."""
        self.cfg = cfg
        self.source = source
        self.bundle = bundle
        self.runtime_factory = runtime_factory
        self.publisher = publisher
        self.sinks: list[DetectionSink] = list(sinks)
        if jsonl is not None:
            self.sinks.append(JsonLinesSink(jsonl))
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.device = device_id(cfg.mqtt.device_id)
        self.state_dir = Path(cfg.state_dir)
        self._hops_jsonl = JsonLinesSink(hops_jsonl)
        self._install_signals = install_signals
        self._stop = threading.Event()
        self._reload_lock = threading.Lock()
        self._pending_swap: tuple[ModelRuntime, Detector] | None = None
        self._swap_lock = threading.Lock()
        self.classifier: ModelRuntime | None = None
        self.pipeline: HopPipeline | None = None  # built at the first audio block (actual rate)
        self._detector: Detector | None = None
        self.clips: ClipWriter | None = None
        self.state = "starting"
        self.started_mono = time.monotonic()
        self.started_epoch = clock()
        self.detections = 0
        self.messages = 0
        self.backlog_hops = 0
        self.max_backlog_hops = 0
        self.batches = 0
        self.last_hop_epoch: float | None = None
        self.last_error: str | None = None
        self.exit_code = 0
        self._ready = False
        self._anchor = (0, 0.0)  # (absolute sample, epoch) of the newest block's first sample
        self._received: deque[tuple[int, float]] = deque(maxlen=256)  # (block end sample, monotonic)
        # Test/benchmark hooks: called after each hop batch / each published detection.
        self.on_hops: Callable[[list[HopResult]], None] | None = None
        self.on_published: Callable[[dict, float | None], None] | None = None

    # ------------------------------------------------------------------ public API

    def request_stop(self) -> None:
        """Ask the loop to shut down cleanly (thread- and signal-safe)."""
        self._stop.set()

    def status(self) -> dict[str, Any]:
        """Everything an operator (or the updater's health check) wants to know, JSON-ready."""
        bundle = self.classifier.bundle if self.classifier else self.bundle
        audio = self._safe(self.source.stats) if self.source is not None else None
        outbox = self._safe(self.publisher.stats) if self.publisher is not None else None
        lat = self.classifier.latency_ms() if self.classifier else {"p50": None, "p99": None}
        pipe = self.pipeline
        return {
            "state": self.state,
            "device": self.device,
            "pid": os.getpid(),
            "sonotrap_version": __version__,
            "model": {"name": bundle.name, "version": bundle.version, "path": str(bundle.path)} if bundle else None,
            "started_epoch": round(self.started_epoch, 3),
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "audio": audio,
            "inference_ms": lat,
            "hop_s": pipe.hop_s if pipe else self.cfg.model.hop_s,
            "window_s": bundle.frontend.window_s if bundle else None,
            "backlog_hops": self.backlog_hops,
            "max_backlog_hops": self.max_backlog_hops,
            "skipped_hops": pipe.skipped if pipe else 0,
            "gated_hops": pipe.gated if pipe else 0,  # hops that skipped the model (quiet/inactive)
            "hops": pipe.processed if pipe else 0,
            "batches": self.batches,
            "last_hop_epoch": round(self.last_hop_epoch, 3) if self.last_hop_epoch else None,
            "detections": self.detections,
            "outbox": outbox,
            "clips": self.clips.stats() if self.clips else None,
            "last_error": self.last_error,
            "models": self._safe(lambda: update_status_summary(self.state_dir)),  # store + last update
        }

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        """Start everything, process until stopped or the stream ends, shut down cleanly."""
        restore = self._signals()
        try:
            try:
                self._start()
            except SonotrapError:
                self._close_outputs()
                raise
            try:
                self._loop()
            finally:
                self._shutdown()
        finally:
            for sig, handler in restore:
                signal.signal(sig, handler)
        return self.exit_code

    def _start(self) -> None:
        self._prepare_state_dir()
        if self.bundle is None:
            self.bundle = load_bundle(model_bundle_path(self.cfg))
        self.classifier = self.runtime_factory(self.bundle, self.cfg.model.threads)
        self.classifier.self_test()
        detector = Detector.for_bundle(self.bundle, self.cfg.detector)
        if self.source is None:
            from edge.audio import open_source

            self.source = open_source(self.cfg.audio, self.bundle.frontend.sample_rate, on_event=self._event)
        self._detector = detector
        self.source.start()
        rate = int(self.source.sample_rate)
        if self.publisher is not None:
            self.publisher.set_status_provider(self.status)
            self.publisher.start()
            announce = getattr(self.publisher, "announce_discovery", None)
            if announce is not None:
                names = dict(self.bundle.names)
                self._safe(lambda: announce(names))
        log.info(
            "running model %s %s (%d labels) on %s at %d Hz, hop %.2f s, window %.2f s",
            self.bundle.name, self.bundle.version, len(self.bundle.labels),
            self.cfg.audio.source, rate, self.cfg.model.hop_s, self.bundle.frontend.window_s,
        )

    def _prepare_state_dir(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            probe = self.state_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise SonotrapError(
                f"state directory {self.state_dir} is not writable ({err.strerror or err}); "
                "pass --state-dir or fix its permissions"
            ) from None

    def _loop(self) -> None:
        assert self.source is not None
        watchdog_every = self.notifier.watchdog_interval()
        next_watchdog = next_status_file = next_sd_status = 0.0
        self.state = "running"
        self.notifier.status("starting audio")
        while not self._stop.is_set():
            self._apply_swap()
            try:
                got = self._pull(READ_TIMEOUT_S)
            except SonotrapError as err:  # the stream failed for good (e.g. truncated file)
                log.error("%s", err)
                self.last_error = str(err)
                self.exit_code = 1
                break
            if got and not self._ready:
                self._ready = True
                self.notifier.ready(self._sd_status())
                if self.publisher is not None:
                    self._safe(self.publisher.publish_status)
            if self.pipeline is not None:
                self._process(self.cfg.model.max_batch)
            now = time.monotonic()
            if watchdog_every and now >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = now + watchdog_every
            if now >= next_status_file:
                self._write_status()
                next_status_file = now + STATUS_FILE_INTERVAL_S
            if now >= next_sd_status:
                self.notifier.status(self._sd_status())
                next_sd_status = now + SD_STATUS_INTERVAL_S
            if not got and self.source.finished:
                break

    def _pull(self, timeout: float) -> bool:
        """Move queued audio into the pipeline: wait up to ``timeout`` for the first block,
        then take whatever is already queued, up to a full catch-up batch."""
        source = self.source
        assert source is not None
        block = source.read(timeout)
        if block is None:
            return False
        self._ingest(block)
        while self.pipeline is not None and self.pipeline.pending() < self.cfg.model.max_batch:
            block = source.read(0)
            if block is None:
                break
            self._ingest(block)
        return True

    def _make_pipeline(self, rate: int) -> None:
        """(Re)build the hop pipeline for the source's actual rate (known at the first block;
        a microphone that appears late may open at a fallback rate)."""
        if self.pipeline is not None:
            log.warning("audio rate changed %d -> %d Hz; restarting the hop schedule",
                        self.pipeline.sample_rate, rate)
            for ev in self.pipeline.flush():
                self._emit(ev, None)
            self._detector = self.pipeline.detector
            self.classifier = self.pipeline.classifier
        assert self.classifier is not None and self._detector is not None
        self.pipeline = HopPipeline(
            self.classifier, self._detector, rate, self.cfg.model.hop_s, self.cfg.model.max_batch,
            time_of=self._epoch_of, gate=self.cfg.gate,
        )
        self._received.clear()
        if self.cfg.clips.enabled:
            clip_dir = self.cfg.clips.dir or str(self.state_dir / "clips")
            self.clips = ClipWriter(self.cfg.clips, clip_dir, rate, on_event=self._event)

    def _ingest(self, block) -> None:
        if self.pipeline is None or self.pipeline.sample_rate != int(block.sample_rate):
            self._make_pipeline(int(block.sample_rate))
        pipe = self.pipeline
        assert pipe is not None
        self._anchor = (pipe.total, float(block.start_time))
        pipe.append(block.samples)
        self._received.append((pipe.total, float(block.received)))
        if self.clips is not None:
            self.clips.feed(block.samples)

    def _epoch_of(self, sample: int) -> float:
        base_sample, base_epoch = self._anchor
        assert self.pipeline is not None
        return base_epoch + (sample - base_sample) / self.pipeline.sample_rate

    def received_of(self, sample: int) -> float | None:
        """Monotonic time the block holding absolute sample ``sample - 1`` entered the process."""
        for end, received in self._received:
            if end >= sample:
                return received
        return None

    def _process(self, max_batch: int) -> int:
        """Classify pending hops in batches; returns how many hops were processed."""
        pipe = self.pipeline
        assert pipe is not None
        done = 0
        while pipe.pending() > 0:
            # Backlog = complete hops waiting behind the one just due; > 0 means we fell behind.
            self.backlog_hops = pipe.pending() - 1
            self.max_backlog_hops = max(self.max_backlog_hops, self.backlog_hops)
            results = pipe.step(max_batch)
            if not results:
                break
            done += len(results)
            self.batches += 1
            for r in results:
                self._hops_jsonl.write({
                    "hop": r.hop, "t_end": round(r.t_end, 4), "sample_end": r.sample_end,
                    "model_version": r.model_version, "gated": r.gated,
                    "scores": {lab: round(float(p), 5) for lab, p in zip(pipe.classifier.labels, r.scores, strict=True)},
                })
                for ev in r.events:
                    self._emit(ev, self.received_of(r.sample_end))
            self.last_hop_epoch = results[-1].t_end
            if self.on_hops is not None:
                self.on_hops(results)
            if self.clips is not None:
                self.clips.poll()
            if self._pending_swap is not None:  # switch models between two hops
                self._apply_swap()
            if self._stop.is_set() and not self._draining:
                break
        return done

    _draining = False

    def _file_offset(self, ev: DetectionEvent) -> FileOffset | None:
        """Where ``ev`` lies in the replayed file (same hop arithmetic as the clips)."""
        if self.cfg.audio.source != "file" or self.source is None:
            return None
        duration = getattr(self.source, "duration_s", None)
        pipe = self.pipeline
        assert pipe is not None
        start = max(0, ev.first_hop * pipe.hop_samples - pipe.window_samples) / pipe.sample_rate
        end = ev.last_hop * pipe.hop_samples / pipe.sample_rate
        if self.cfg.audio.loop and duration:
            start, end = start % duration, start % duration + (end - start)
        return FileOffset(Path(self.cfg.audio.file or "").name, start, end)

    def _emit(self, ev: DetectionEvent, received: float | None) -> None:
        pipe = self.pipeline
        assert pipe is not None
        bundle = pipe.classifier.bundle
        payload = _payload(ev, self.device, bundle, pipe.hop_s, self._file_offset(ev))
        self.messages += 1
        if ev.state == "ended":
            self.detections += 1
            log.info("detection %s %s %.2f s peak %.3f (%d hops)", ev.label, payload.get("start"),
                     ev.end - ev.start, ev.peak_score, ev.hops)
            if self.clips is not None:
                self.clips.add(ev, ev.first_hop * pipe.hop_samples - pipe.window_samples, ev.last_hop * pipe.hop_samples)
        for sink in self.sinks:
            self._safe(functools.partial(sink.send_detection, payload))
        if self.publisher is not None:
            try:
                self.publisher.publish_detection(payload)
            except SonotrapError as err:  # e.g. outbox unusable: log, keep detecting
                self.last_error = str(err)
                log.error("could not queue detection %s: %s", ev.id, err)
        if self.on_published is not None:
            self.on_published(payload, received)

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self) -> None:
        self.state = "stopping"
        self.notifier.stopping()
        log.info("stopping: finishing in-flight audio")
        if self.source is not None:
            self._safe(self.source.stop)
            # Blocks already queued were captured: classify them too.
            if self.pipeline is not None and self.exit_code == 0:
                self._draining = True
                try:
                    while True:
                        block = self.source.read(0)
                        if block is None:
                            break
                        self._ingest(block)
                        self._process(self.cfg.model.max_batch)
                except SonotrapError as err:
                    log.error("%s", err)
                    self.last_error = str(err)
                    self.exit_code = 1
        if self.pipeline is not None:
            self._process(self.cfg.model.max_batch)
            for r in self.pipeline.finish_short():
                for ev in r.events:
                    self._emit(ev, None)
            for ev in self.pipeline.flush():
                self._emit(ev, None)
        if self.clips is not None:
            self.clips.poll(final=True)
        self.state = "stopped"
        self._write_status()
        if self.publisher is not None:
            self._safe(self.publisher.stop)
        self._close_outputs()
        log.info("stopped: %d hops, %d detections", self.pipeline.processed if self.pipeline else 0, self.detections)

    def _close_outputs(self) -> None:
        for sink in self.sinks:
            self._safe(sink.close)
        self._hops_jsonl.close()

    # ------------------------------------------------------------------ helpers

    def _event(self, kind: str, data: dict) -> None:
        """Daemon/audio events -> ``.../events`` (and the log)."""
        if kind in ("audio_error",):
            self.last_error = str(data.get("error"))
        if self.publisher is not None:
            self._safe(lambda: self.publisher.publish_event(kind, data))

    def _write_status(self) -> None:
        try:
            write_status(self.state_dir, self.status())
        except OSError as err:
            log.warning("cannot write status.json in %s: %s", self.state_dir, err)

    def _sd_status(self) -> str:
        b = self.classifier.bundle if self.classifier else None
        model = f"{b.name} {b.version}" if b else "no model"
        pipe = self.pipeline
        hops = pipe.processed if pipe else 0
        depth = ""
        if self.publisher is not None:
            stats = self._safe(self.publisher.stats) or {}
            depth = f", outbox {stats.get('outbox_depth', '?')}"
        return f"{self.state}: {model}, {hops} hops, {self.detections} detections, backlog {self.backlog_hops}{depth}"

    def _signals(self) -> list[tuple[signal.Signals, Any]]:
        if not self._install_signals or threading.current_thread() is not threading.main_thread():
            return []
        restore: list[tuple[signal.Signals, Any]] = []

        def stop(signum, _frame):
            log.info("received %s, shutting down", signal.Signals(signum).name)
            self.request_stop()

        def hup(_signum, _frame):
            log.info("received SIGHUP, reloading the model")
            threading.Thread(target=self.reload_model, name="model-reload", daemon=True).start()

        for sig, handler in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, hup)):
            restore.append((sig, signal.signal(sig, handler)))
        return restore

    @staticmethod
    def _safe(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as err:  # reporting must never take detection down
            log.warning("%s failed: %s", getattr(fn, "__qualname__", fn), err)
            return None
