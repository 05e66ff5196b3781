"""Every setting has a range or a character set: values that used to crash or hang the daemon
are one-line config errors; secrets readable by others get a warning; a recording with an
absurd sample rate is refused at once; `sonotrap update --source local:DIR` passes validation."""

from __future__ import annotations

import dataclasses
import logging
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.bounds import CHARSETS, RANGES
from edge.config import Config, load_config
from edge.errors import SonotrapError
from tests.support.daemon_helpers import run_cli


def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[model]\nhop_s = inf", "model.hop_s"),
        ("[model]\nhop_s = nan", "model.hop_s"),
        ("[model]\nhop_s = 1e9", "model.hop_s"),
        ("[model]\nthreads = 100000", "model.threads"),
        ("[model]\nmax_batch = 10000000", "model.max_batch"),
        ("[mqtt]\nkeepalive_s = 100000000000000000000", "mqtt.keepalive_s"),
        ("[mqtt]\nhost = \"\"", "mqtt.host"),
        ("[mqtt]\nhost = \"broker .lan\"", "mqtt.host"),
        ("[mqtt]\nprefix = \"a//b\"", "mqtt.prefix"),
        ("[mqtt]\nclient_id = \"with space\"", "mqtt.client_id"),
        ("[mqtt]\nusername = \"u\"\npassword = \"a\\nb\"", "mqtt.password"),
        ("[mqtt]\nsession_expiry_s = 99999999999", "mqtt.session_expiry_s"),
        ("[mqtt]\nconnect_timeout_s = inf", "mqtt.connect_timeout_s"),
        ("[mqtt]\nreconnect_max_s = 1e300", "mqtt.reconnect_max_s"),
        ("[audio]\nblock_s = 1e-9", "audio.block_s"),
        ("[audio]\nqueue_s = inf", "audio.queue_s"),
        ("[audio]\nsource = \"stdin\"\nstdin_rate = 1", "audio.stdin_rate"),
        ("[audio]\nsource = \"file\"\nfile = \"a\\u0000b.wav\"", "audio.file"),
        ("[audio]\ndevice = 99999", "audio.device"),
        ("state_dir = \"\"", "state_dir"),
        ("[outbox]\nmax_messages = 1000000000000", "outbox.max_messages"),
        ("[outbox]\nretry_s = inf", "outbox.retry_s"),
        ("[clips]\nquota_mb = inf", "clips.quota_mb"),
        ("[detector]\ninclude = [\"\"]", "detector.include"),
        ("[update]\nhttp_timeout_s = inf", "update.http_timeout_s"),
        ("[update]\nurl = \"https://a b\"", "update.url"),
    ],
)
def test_values_that_crashed_or_hung_the_daemon_are_one_line_errors(tmp_path, toml, key) -> None:
    with pytest.raises(SonotrapError) as err:
        _load(tmp_path, toml)
    msg = str(err.value)
    assert key in msg and "\n" not in msg, msg


def test_the_defaults_and_sensible_values_pass(tmp_path) -> None:
    Config().validate()
    cfg = _load(tmp_path, "[mqtt]\nhost = \"[fd00::1]\"\nprefix = \"farm/north\"\ndevice_id = \"pi-07\"\n"
                          "keepalive_s = 60\n[model]\nthreads = 4\nhop_s = 0.25\n")
    assert cfg.model.threads == 4 and cfg.mqtt.host == "[fd00::1]"


def _settings(obj, where=""):
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        name = f"{where}.{f.name}" if where else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _settings(value, name)
        else:
            yield name, hints[f.name]


def test_every_numeric_setting_has_a_range_and_every_string_a_charset() -> None:
    missing = []
    for name, hint in _settings(Config()):
        text = str(hint)
        if ("int" in text or "float" in text) and name not in RANGES:
            missing.append(f"{name}: range")
        if "str" in text and name not in CHARSETS:
            missing.append(f"{name}: charset")
    assert not missing, missing


def test_secret_files_readable_by_others_get_a_warning(tmp_path, caplog) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    text = f"[mqtt]\nusername = \"dev\"\npassword_file = \"{secret}\"\n"
    with caplog.at_level(logging.WARNING, logger="sonotrap.config"):
        _load(tmp_path, text)
    assert f"chmod 600 {secret}" in caplog.text
    caplog.clear()
    secret.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="sonotrap.config"):
        _load(tmp_path, text)
    assert "chmod" not in caplog.text
    cfg_path = tmp_path / "inline.toml"
    cfg_path.write_text("[mqtt]\nusername = \"dev\"\npassword = \"pw\"\n")
    cfg_path.chmod(0o664)
    with caplog.at_level(logging.WARNING, logger="sonotrap.config"):
        load_config(cfg_path)
    assert "holding mqtt.password" in caplog.text


def test_a_1_hz_recording_is_refused_at_once_with_one_line(tmp_path, tiny_bundle) -> None:
    wav = tmp_path / "one_hz.wav"
    sf.write(str(wav), np.zeros(600, dtype=np.float32), 1)
    t0 = time.monotonic()
    r = run_cli("run", "--file", str(wav), "--fast", "--no-mqtt", "--model", str(tiny_bundle),
                "--state-dir", str(tmp_path / "state"), timeout=60)
    assert r.returncode != 0 and time.monotonic() - t0 < 30
    assert "sample rate of 1 Hz" in r.stderr and "resample" in r.stderr and "Traceback" not in r.stderr


def test_update_source_local_dir_passes_config_validation(tmp_path) -> None:
    folder = tmp_path / "usb"
    folder.mkdir()
    r = run_cli("update", "--check", "--source", f"local:{folder}", "--state-dir", str(tmp_path / "state"),
                "--set", "mqtt.enabled=false")
    assert "audio.source" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
