"""Daemon end to end on real files, the real frontend and the real onnxruntime tiny model."""

from __future__ import annotations

import json
import time

import pytest

from edge.inference.runtime import Classifier
from edge.models.bundle import load_bundle
from edge.service.daemon import Daemon
from tests.support.daemon_helpers import HIGH, LOW, SR, file_config, read_jsonl, stream_t0, write_tones

HOP = 0.5


def run_daemon(tmp_path, wav, bundle_dir, **kw):
    cfg = file_config(tmp_path, wav, **kw.pop("audio", {}))
    for key, value in kw.pop("detector", {}).items():
        setattr(cfg.detector, key, value)
    for key, value in kw.pop("model", {}).items():
        setattr(cfg.model, key, value)
    d = Daemon(cfg, bundle=load_bundle(bundle_dir), jsonl=str(tmp_path / "det.jsonl"),
               hops_jsonl=str(tmp_path / "hops.jsonl"), **kw)
    rc = d.run()
    return d, rc, read_jsonl(tmp_path / "det.jsonl"), read_jsonl(tmp_path / "hops.jsonl")


def expected_span(a: float, b: float, hop: float = HOP, win: float = 2.0) -> tuple[float, float]:
    """Event span for a tone over [a, b): windows [e-win, e] overlapping it (e = k * hop)."""
    import math

    first_end = (math.floor(a / hop) + 1) * hop
    last_start = (math.ceil(b / hop) - 1) * hop
    return first_end - win, last_start + win


def test_file_to_jsonl_events_at_the_right_times(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "t.wav", [(None, 4), (LOW, 3), (None, 4), (HIGH, 2), (None, 3)])
    d, rc, det, hops = run_daemon(tmp_path, wav, tiny_bundle)
    assert rc == 0
    t0 = stream_t0(hops)
    got = [(e["label"], round(e["start_epoch"] - t0, 2), round(e["end_epoch"] - t0, 2)) for e in det]
    assert [g[0] for g in got] == ["tone_low", "tone_high"]
    for (_label, start, end), (a, b) in zip(got, [(4, 7), (11, 13)], strict=True):
        exp_start, exp_end = expected_span(a, b)
        assert abs(start - exp_start) <= HOP + 1e-6 and abs(end - exp_end) <= HOP + 1e-6, (got, a, b)
    for e in det:
        assert e["state"] == "ended" and e["score"] > 0.9 and e["hops"] >= 4
        assert e["device"] == "test-device" and e["model"] == {"name": "tiny-band-detector", "version": "1.0.0"}
        assert e["hop_s"] == HOP and e["window_s"] == 2.0
    assert len({e["id"] for e in det}) == 2
    # Status: written atomically to state_dir, final state, counters right.
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["state"] == "stopped" and status["detections"] == 2
    assert status["hops"] == len(hops) == 16 * 2 - 3  # hops 4..32 of a 16-s file
    assert status["model"]["version"] == "1.0.0" and status["last_hop_epoch"] == pytest.approx(hops[-1]["t_end"], abs=1e-3)
    assert status["inference_ms"]["p50"] is not None and status["audio"]["samples"] == 16 * SR


def test_hop_continuity_in_samples(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "t.wav", [(None, 3.3), (LOW, 2.0), (None, 2.05)])  # odd lengths
    _d, rc, _det, hops = run_daemon(tmp_path, wav, tiny_bundle, audio={"block_s": 0.037}, model={"hop_s": 0.25})
    assert rc == 0
    ks = [h["hop"] for h in hops]
    assert ks == list(range(ks[0], ks[0] + len(ks)))
    hop_samples = int(0.25 * SR)
    assert all(h["sample_end"] == h["hop"] * hop_samples for h in hops)
    assert hops[0]["sample_end"] == 2 * SR and hops[-1]["sample_end"] == (int(7.35 * SR) // hop_samples) * hop_samples
    gaps = {round(b["t_end"] - a["t_end"], 6) for a, b in zip(hops, hops[1:], strict=False)}
    assert gaps == {0.25}


class SlowClassifier(Classifier):
    """A real classifier that takes an extra 0.9 s per call, like a slow CPU would."""

    def predict(self, images):
        time.sleep(0.9)
        return super().predict(images)


def test_slow_inference_batches_to_catch_up_without_losing_hops(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "t.wav", [(None, 3), (LOW, 2), (None, 3)])
    batches = []
    cfg_audio = {"realtime": True, "block_s": 0.05}
    cfg = file_config(tmp_path, wav, **cfg_audio)
    d = Daemon(cfg, bundle=load_bundle(tiny_bundle), runtime_factory=SlowClassifier,
               jsonl=str(tmp_path / "det.jsonl"), hops_jsonl=str(tmp_path / "hops.jsonl"))
    d.on_hops = lambda results: batches.append([r.hop for r in results])
    t = time.monotonic()
    assert d.run() == 0
    elapsed = time.monotonic() - t
    hops = read_jsonl(tmp_path / "hops.jsonl")
    # Every hop processed exactly once, in order, although each call costs ~2 hops of time.
    assert [h["hop"] for h in hops] == list(range(4, 17))
    assert max(len(b) for b in batches) >= 2, batches
    assert len(batches) < len(hops)
    assert d.max_backlog_hops >= 1 and d.pipeline.skipped == 0
    assert elapsed < 8.0 + 0.9 * len(hops) * 0.75  # batching, not one call per hop
    (ev,) = read_jsonl(tmp_path / "det.jsonl")
    assert ev["label"] == "tone_low"


def test_detector_config_applies_in_the_daemon(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "t.wav", [(None, 3), (LOW, 2), (None, 2), (HIGH, 2), (None, 3)])
    _d, rc, det, _hops = run_daemon(tmp_path, wav, tiny_bundle,
                                    detector={"exclude": ["tone_low"], "publish_started": True})
    assert rc == 0
    assert [(e["label"], e["state"]) for e in det] == [("tone_high", "started"), ("tone_high", "ended")]
    assert det[0]["id"] == det[1]["id"]


def test_event_open_at_end_of_file_is_flushed(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "t.wav", [(None, 3), (HIGH, 3)])
    _d, rc, det, hops = run_daemon(tmp_path, wav, tiny_bundle)
    assert rc == 0 and [e["label"] for e in det] == ["tone_high"]
    assert det[0]["end_epoch"] == pytest.approx(hops[-1]["t_end"], abs=1e-3)


def test_truncated_file_keeps_what_was_read_and_exits_nonzero(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "t.wav", [(None, 3), (LOW, 2), (None, 3), (HIGH, 2)])
    data = wav.read_bytes()
    wav.write_bytes(data[: len(data) * 6 // 10])  # header still claims 10 s
    d, rc, det, hops = run_daemon(tmp_path, wav, tiny_bundle)
    assert rc == 1
    assert [e["label"] for e in det] == ["tone_low"]
    assert "truncated" in d.status()["last_error"]


def test_clips_written_with_pre_post_roll_and_quota(tmp_path, tiny_bundle):
    import soundfile as sf

    segments = [(None, 3)]
    for _ in range(4):
        segments += [(LOW, 1), (None, 3)]
    wav = write_tones(tmp_path / "t.wav", segments)
    cfg = file_config(tmp_path, wav)
    cfg.clips.enabled = True
    cfg.clips.pre_s = cfg.clips.post_s = 0.5
    cfg.clips.quota_mb = 0.5  # each clip is ~4 s of 16-bit 32 kHz = ~0.26 MB: only one fits
    d = Daemon(cfg, bundle=load_bundle(tiny_bundle), jsonl=str(tmp_path / "det.jsonl"))
    assert d.run() == 0
    det = read_jsonl(tmp_path / "det.jsonl")
    assert len(det) == 4
    clips = sorted((tmp_path / "state" / "clips").glob("*.wav"))
    assert len(clips) == 1 and d.clips.written == 4 and d.clips.deleted == 3
    assert det[-1]["id"][:8] in clips[0].name  # the newest survives
    info = sf.info(str(clips[0]))
    assert info.samplerate == SR
    assert info.duration == pytest.approx(det[-1]["duration_s"] + 1.0, abs=0.05)


def test_clip_dir_unwritable_never_stops_detection(tmp_path, tiny_bundle):
    wav = write_tones(tmp_path / "t.wav", [(None, 3), (LOW, 1), (None, 3), (LOW, 1), (None, 3)])
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cfg = file_config(tmp_path, wav)
    cfg.clips.enabled = True
    cfg.clips.dir = str(blocker / "clips")
    events = []

    class Collect:  # records daemon events; the daemon treats it as its publisher
        def set_status_provider(self, fn): ...
        def start(self): ...
        def publish_detection(self, payload): ...
        def publish_event(self, kind, data): events.append(kind)
        def publish_status(self): ...
        def stop(self, timeout=5.0): ...
        def stats(self): return {"outbox_depth": 0}

    d = Daemon(cfg, bundle=load_bundle(tiny_bundle), publisher=Collect(), jsonl=str(tmp_path / "det.jsonl"))
    assert d.run() == 0
    assert len(read_jsonl(tmp_path / "det.jsonl")) == 2
    assert d.clips.failed == 2 and events.count("clip_failed") == 1  # one event per failure streak
