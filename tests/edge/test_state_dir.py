"""Replaying a file or analysing recordings needs no system directory; a device install does.

The default ``state_dir`` is per user ($XDG_STATE_HOME/sonotrap, ~/.local/state/sonotrap);
``install-service`` writes /var/lib/sonotrap into the device's config.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edge.config import Config, default_state_dir, load_config
from tests.support.daemon_helpers import LOW, write_tones
from tests.support.paths import REPO

SYSTEM_DIR = Path("/var/lib/sonotrap")


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_STATE_HOME", "NOTIFY_SOCKET")}
    env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_default_state_dir_is_per_user(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == str(tmp_path / "xdg" / "sonotrap")
    assert Config().state_dir == str(tmp_path / "xdg" / "sonotrap")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_state_dir() == str(tmp_path / ".local" / "state" / "sonotrap")
    monkeypatch.setenv("HOME", "/nonexistent")  # e.g. a system account: a private temp folder
    assert default_state_dir().endswith(f"sonotrap-{os.getuid()}")
    assert "/var/lib" not in default_state_dir()


def test_a_device_config_keeps_var_lib(tmp_path):
    conf = tmp_path / "config.toml"
    conf.write_text('state_dir = "/var/lib/sonotrap"\n')
    assert load_config(conf).state_dir == "/var/lib/sonotrap"


def test_replay_and_analyze_leave_no_system_directory(tmp_path, tiny_bundle):
    existed = SYSTEM_DIR.exists()
    home = tmp_path / "home"
    home.mkdir()
    wav = write_tones(tmp_path / "rec.wav", [(None, 2.5), (LOW, 1.5), (None, 2)])
    r = _cli(home, "run", "--file", str(wav), "--fast", "--no-mqtt", "--model", str(tiny_bundle), "--jsonl", "-")
    assert r.returncode == 0, r.stderr
    assert '"tone_low"' in r.stdout
    assert (home / ".local/state/sonotrap/status.json").is_file()
    r = _cli(home, "analyze", str(wav), "-o", str(tmp_path / "out"), "--model", str(tiny_bundle), "--no-progress")
    assert r.returncode == 0, r.stderr
    if not existed:
        assert not SYSTEM_DIR.exists(), "a replay or analyze created /var/lib/sonotrap"
