"""The daemon's seams: an injected model runtime, extra detection sinks (a list, a real HTTP
webhook) and the status.json contract shared by the daemon (writer) and updater (reader)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from edge.contracts import DetectionSink, ModelRuntime
from edge.inference.runtime import Classifier
from edge.models.bundle import load_bundle
from edge.service.daemon import Daemon
from edge.service.sinks import JsonLinesSink, WebhookSink
from edge.service.status import Health, read_health
from tests.support.daemon_helpers import LOW, file_config, read_jsonl, write_tones


class ListSink:
    def __init__(self) -> None:
        self.items: list[dict] = []
        self.closed = False

    def send_detection(self, payload: dict) -> None:
        self.items.append(payload)

    def close(self) -> None:
        self.closed = True


class QuietRuntime:
    """A real alternative runtime: wraps onnxruntime but reports nothing for one label."""

    def __init__(self, bundle, threads: int) -> None:
        self._inner = Classifier(bundle, threads)
        self.bundle = bundle
        self.calls = 0

    @property
    def labels(self) -> list[str]:
        return self._inner.labels

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.calls += len(images)
        scores = self._inner.predict(images).copy()
        scores[:, self.labels.index("tone_low")] = 0.0
        return scores

    def self_test(self) -> np.ndarray:
        return self._inner.self_test()

    def latency_ms(self) -> dict[str, float | None]:
        return self._inner.latency_ms()


def test_protocols_describe_the_real_parts(tiny_bundle):
    assert isinstance(Classifier(load_bundle(tiny_bundle), 1), ModelRuntime)
    assert isinstance(JsonLinesSink(None), DetectionSink)
    assert isinstance(ListSink(), DetectionSink)


def test_injected_runtime_and_sinks_get_every_detection(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "t.wav", [(None, 3), (LOW, 3), (None, 3)])
    cfg = file_config(tmp_path, wav)
    sink = ListSink()
    made: list[QuietRuntime] = []

    def factory(bundle, threads):
        made.append(QuietRuntime(bundle, threads))
        return made[-1]

    d = Daemon(cfg, bundle=load_bundle(tiny_bundle), runtime_factory=factory, sinks=[sink],
               jsonl=str(tmp_path / "det.jsonl"), install_signals=False)
    assert d.run() == 0
    assert made and made[0].calls > 0
    assert sink.items == [] and read_jsonl(tmp_path / "det.jsonl") == []  # the runtime silenced tone_low
    assert sink.closed

    sink2 = ListSink()
    d = Daemon(file_config(tmp_path / "b", wav), bundle=load_bundle(tiny_bundle), sinks=[sink2],
               jsonl=str(tmp_path / "det2.jsonl"), install_signals=False)
    assert d.run() == 0
    assert [p["label"] for p in sink2.items] == ["tone_low"]
    assert sink2.items == read_jsonl(tmp_path / "det2.jsonl")  # every sink gets the same payload


def test_webhook_sink_posts_each_detection(tmp_path, tiny_bundle):
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        wav = write_tones(tmp_path / "t.wav", [(None, 3), (LOW, 3), (None, 3)])
        hook = WebhookSink(f"http://127.0.0.1:{server.server_address[1]}/detections", timeout_s=2)
        d = Daemon(file_config(tmp_path, wav), bundle=load_bundle(tiny_bundle), sinks=[hook],
                   jsonl=str(tmp_path / "det.jsonl"), install_signals=False)
        assert d.run() == 0
        assert got == read_jsonl(tmp_path / "det.jsonl") and len(got) == 1
        assert hook.stats() == {"sent": 1, "failed": 0, "dropped": 0}
    finally:
        server.shutdown()


def test_webhook_sink_counts_failures_without_raising():
    hook = WebhookSink("http://127.0.0.1:9/nothing-listens", timeout_s=1)
    hook.send_detection({"id": "x"})
    hook.close()
    assert hook.stats()["failed"] == 1


def test_status_contract_written_by_the_daemon_is_what_the_updater_reads(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "t.wav", [(None, 3), (LOW, 3)])
    cfg = file_config(tmp_path, wav)
    d = Daemon(cfg, bundle=load_bundle(tiny_bundle), install_signals=False)
    assert d.run() == 0
    h = read_health(cfg.state_dir)
    assert h.pid is not None and h.model_version == "1.0.0" and h.last_hop_epoch is not None
    assert Health.of({"pid": True, "model": "x", "last_hop_epoch": "1"}) == Health(None, None, None)
