"""``sonotrap check``: validate config, model, audio input, broker and state dir; say what run would do.

Takes the same flags as ``sonotrap run`` so ``sonotrap check <flags>`` tests exactly the
setup ``sonotrap run <flags>`` would use. Every problem is one line; exit 1 if any.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from edge.commands import run as run_cmd
from edge.config import DEFAULT_CONFIG_PATH, Config
from edge.errors import SonotrapError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    run_cmd.add_arguments(parser)
    parser.add_argument("--skip-audio", action="store_true", help="do not open the audio input")
    parser.add_argument("--skip-broker", action="store_true", help="do not contact the broker")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="seconds to wait for audio / the broker (default 5)")


class Report:
    def __init__(self) -> None:
        self.problems = 0

    def ok(self, what: str, detail: str) -> None:
        print(f"ok      {what:<8} {detail}")

    def bad(self, what: str, detail: str) -> None:
        self.problems += 1
        print(f"PROBLEM {what:<8} {detail}")

    def note(self, what: str, detail: str) -> None:
        print(f"note    {what:<8} {detail}")


def check_audio(cfg: Config, model_rate: int, timeout: float) -> str:
    """Open the configured input briefly and read a block; returns a description."""
    if cfg.audio.source == "stdin":
        return (f"raw PCM on stdin ({cfg.audio.stdin_format}, {cfg.audio.stdin_rate} Hz, "
                f"{cfg.audio.stdin_channels} ch); not opened by check")
    from edge.audio import open_source

    if cfg.audio.source == "mic":
        from edge.audio.devices import DeviceMissing, find_input_device

        try:
            find_input_device(cfg.audio.device)
        except DeviceMissing as err:
            raise SonotrapError(
                f"audio device {cfg.audio.device or 'default'!r} not found ({err}); run 'sonotrap devices' "
                "and set audio.device (the daemon would wait and retry)"
            ) from None
    source = open_source(cfg.audio, model_rate)
    source.start()
    try:
        end = time.monotonic() + timeout
        block = None
        while block is None and time.monotonic() < end and not source.finished:
            block = source.read(0.2)
        stats = source.stats()
        if block is None:
            raise SonotrapError(
                f"audio input {stats.get('device')!r} delivered no audio in {timeout:.0f} s "
                f"(state: {stats.get('state')}); check the device (sonotrap devices) or audio.device"
            )
        peak = float(abs(block.samples).max()) if len(block.samples) else 0.0
        return (f"{cfg.audio.source} {stats.get('device')!r} at {block.sample_rate} Hz"
                f"{' (resampled to ' + str(model_rate) + ' Hz per window)' if block.sample_rate != model_rate else ''}"
                f", first block peak {peak:.4f}")
    finally:
        source.stop()


def check_broker(cfg: Config, timeout: float) -> str:
    """TCP + MQTT CONNECT with the configured credentials/TLS (the publisher's own check)."""
    from edge.mqtt.connection import check_broker as mqtt_check
    from edge.util.identity import device_id

    return mqtt_check(cfg.mqtt, device_id(cfg.mqtt.device_id), timeout)


def run(args: argparse.Namespace) -> int:
    from edge.inference.detector import Detector, resolve_thresholds
    from edge.inference.runtime import Classifier
    from edge.models.bundle import load_bundle
    from edge.service.daemon import model_bundle_path
    from edge.util.identity import device_id

    rep = Report()
    where = args.config or (str(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.is_file() else "built-in defaults")
    try:
        cfg = run_cmd.config_from_args(args)
    except SonotrapError as err:
        rep.bad("config", str(err))
        return 1
    rep.ok("config", f"{where} is valid" + (f" (+{len(args.overrides)} --set)" if args.overrides else ""))

    bundle = None
    try:
        bundle = load_bundle(model_bundle_path(cfg))
        thresholds = resolve_thresholds(bundle.labels, bundle.manifest.thresholds, cfg.detector)
        clf = Classifier(bundle, cfg.model.threads)
        clf.self_test()
        t0 = time.perf_counter()
        clf.self_test()
        ms = (time.perf_counter() - t0) * 1000
        rep.ok("model", f"{bundle.name} {bundle.version} at {bundle.path}: {len(bundle.labels)} labels, "
                        f"self-test passed, one window in {ms:.0f} ms with {cfg.model.threads} thread(s)")
        active = Detector.for_bundle(bundle, cfg.detector).active_labels
        thr = sorted(set(thresholds[lab] for lab in active))
        rep.note("detector", f"{len(active)} of {len(bundle.labels)} labels active, thresholds "
                             f"{thr[0]:.2f}..{thr[-1]:.2f}" if thr else
                 "no labels active (the model ships its labels disabled as unreliable, or detector.include/"
                 "exclude leave none; see detector.enable_labels)")
    except SonotrapError as err:
        rep.bad("model", str(err))

    if args.skip_audio:
        rep.note("audio", "not checked (--skip-audio)")
    else:
        try:
            rate = bundle.frontend.sample_rate if bundle else 32000
            rep.ok("audio", check_audio(cfg, rate, args.timeout))
        except SonotrapError as err:
            rep.bad("audio", str(err))

    if not cfg.mqtt.enabled:
        rep.note("mqtt", "disabled: detections only go to --jsonl / the log")
    elif args.skip_broker:
        rep.note("mqtt", "broker not checked (--skip-broker)")
    else:
        try:
            rep.ok("mqtt", check_broker(cfg, args.timeout))
        except SonotrapError as err:
            rep.bad("mqtt", str(err))

    try:
        run_cmd.ensure_state_dir(cfg.state_dir)
        probe = Path(cfg.state_dir) / ".check-write"
        probe.write_text("ok")
        probe.unlink()
        rep.ok("state", f"{cfg.state_dir} is writable (status.json, outbox.sqlite"
                        f"{', clips' if cfg.clips.enabled else ''})")
    except (SonotrapError, OSError) as err:
        rep.bad("state", str(err) if isinstance(err, SonotrapError) else
                f"{cfg.state_dir} is not writable ({err}); pass --state-dir or fix permissions")

    dev = device_id(cfg.mqtt.device_id)
    src = {"mic": f"microphone {cfg.audio.device or 'default'}", "file": f"file {cfg.audio.file}"
           + (" (real time" + (", looped)" if cfg.audio.loop else ")") if cfg.audio.realtime else " (fast)"),
           "stdin": "raw PCM on stdin"}[cfg.audio.source]
    out = (f"publish to mqtt://{cfg.mqtt.host}:{cfg.mqtt.port}/{cfg.mqtt.prefix}/{dev}/detections"
           if cfg.mqtt.enabled else "not publish over MQTT")
    model = f"{bundle.name} {bundle.version}" if bundle else str(model_bundle_path(cfg))
    print(f"\nsonotrap run would: read {src}, classify a {bundle.frontend.window_s if bundle else 2.0:g}-s window "
          f"every {cfg.model.hop_s:g} s with {model}, {out}"
          + (f", save clips to {cfg.clips.dir or Path(cfg.state_dir) / 'clips'} (quota {cfg.clips.quota_mb:g} MB)"
             if cfg.clips.enabled else "") + ".")
    if rep.problems:
        print(f"{rep.problems} problem(s) found.")
        return 1
    print("all checks passed.")
    return 0
