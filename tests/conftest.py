"""Shared fixtures. Real parts only: tests that need the shared recordings skip without them."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edge.inference.frontend import FrontendConfig
from tests.support.broker import mosquitto, mosquitto_factory  # noqa: F401  (fixtures: real Mosquitto)
from tests.support.paths import REPO
from tests.support.tiny_model import make_tiny_bundle


def shared_data_dir() -> Path:
    return Path(os.environ.get("SONOTRAP_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _private_state_home(tmp_path_factory):
    """Commands run without --state-dir keep their state in a temp folder, never in the
    tester's home or a system directory (the default state_dir follows $XDG_STATE_HOME)."""
    old = os.environ.get("XDG_STATE_HOME")
    system_dir = Path("/var/lib/sonotrap")
    existed = system_dir.exists()
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))
    yield
    if old is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = old
    assert existed or not system_dir.exists(), "a test created /var/lib/sonotrap; give it --state-dir or a tmp root"


@pytest.fixture(autouse=True)
def _no_microphone_left_running():
    """A test that starts a microphone source stops it, pass or fail: a leftover supervisor
    keeps re-initialising PortAudio under the next tests in the same process."""
    yield
    end = time.monotonic() + 6.0  # MicSource.stop() waits up to 5 s for its supervisor
    while (left := [t for t in threading.enumerate() if t.name == "sonotrap-audio"]) and time.monotonic() < end:
        time.sleep(0.05)
    assert not left, "a microphone source was left running; call its stop() in a finally block"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$SONOTRAP_DATA``); skips the test when it is absent."""
    path = shared_data_dir()
    if not (path / "nips4bplus" / "annotations.csv").is_file():
        pytest.skip(f"real recordings not found at {path} (set SONOTRAP_DATA)")
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Synthetic labelled recordings (tests/support/synth_calls.py) for the trainer tests."""
    from tests.support.synth_calls import make_dataset

    root = tmp_path_factory.mktemp("synth")
    make_dataset(root, n_files=12, n_negative=3)
    return root


@pytest.fixture(scope="session")
def frontend_cfg() -> FrontendConfig:
    return FrontendConfig()


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    """A bundle whose model detects 1.0-1.4 kHz ('tone_low') and 3.8-4.4 kHz ('tone_high')."""
    return make_tiny_bundle(tmp_path / "tiny-bundle")


@pytest.fixture
def small_fs(tmp_path: Path):
    """A real 600 KiB tmpfs (needs root / CAP_SYS_ADMIN; skipped otherwise)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
