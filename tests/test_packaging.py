"""A stranger's install: the built wheel in a fresh virtualenv, run by a normal user.

The wheel must carry the demo model (the default ``model.bundle``), install without
warnings, and replay a recording to a first detection as a non-root user without touching a
system directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from tests.daemon_helpers import REPO

pytestmark = pytest.mark.slow
OFFLINE_HINTS = ("Could not find a version", "No matching distribution", "NewConnectionError",
                 "Temporary failure in name resolution", "Network is unreachable")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = _run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
              "-w", str(out)], cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (r.stdout + r.stderr).lower()
    assert "deprecat" not in text and "warning" not in text, r.stdout + r.stderr
    (whl,) = out.glob("sonotrap-*.whl")
    return whl


def test_wheel_carries_the_demo_model_and_an_spdx_licence(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert {"edge/demo_model/manifest.json", "edge/demo_model/model.onnx"} <= names
    assert zf.getinfo("edge/demo_model/model.onnx").file_size == (REPO / "models/demo/model.onnx").stat().st_size
    assert "License-Expression: MIT" in meta
    assert any(n.endswith("licenses/LICENSE") for n in names)


def _as_user(cmd: list[str], home: Path) -> list[str]:
    """``cmd`` as the unprivileged ``nobody`` when we are root (the test's point), else as we are."""
    if os.geteuid() != 0:
        return cmd
    shutil.chown(home, "nobody")
    return ["runuser", "-u", "nobody", "--", *cmd]


@pytest.mark.data
def test_fresh_venv_install_reaches_a_first_detection_as_a_normal_user(wheel, shared_data):
    soundscape = shared_data / "soundscapes" / "opensoundscape_1min.wav"
    root = Path(tempfile.mkdtemp(prefix="sonotrap-wheel-"))  # not under pytest's 0700 basetemp
    try:
        root.chmod(0o755)
        venv = root / "venv"
        r = _run([sys.executable, "-m", "venv", str(venv)])
        assert r.returncode == 0, r.stderr
        r = _run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)])
        if r.returncode != 0 and any(h in r.stdout + r.stderr for h in OFFLINE_HINTS):
            pytest.skip(f"the edge dependencies cannot be installed here (no package index): {r.stderr[-300:]}")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "warning" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
        home = root / "home"
        home.mkdir()
        env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
        cmd = _as_user(["sonotrap", "run", "--file", str(soundscape), "--fast", "--no-mqtt", "--jsonl", "-"], home)
        r = _run(cmd, env=env, cwd=str(home))
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stderr.strip() == "" or "warning" not in r.stderr.lower(), r.stderr
        lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
        assert lines, f"no detection: {r.stdout[-500:]} {r.stderr[-500:]}"
        first = lines[0]
        assert first["model"]["name"] == "nips4bplus-resnet50" and first["score"] > 0
        assert "offset" in first and first["offset"]["start_s"] >= 0
        assert (home / ".local/state/sonotrap/status.json").is_file()  # per-user state, no /var/lib
        assert "site-packages" in json.loads((home / ".local/state/sonotrap/status.json").read_text())["model"]["path"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
