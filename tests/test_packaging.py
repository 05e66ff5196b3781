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

from tests.support.paths import REPO

pytestmark = pytest.mark.slow
OFFLINE_HINTS = ("Could not find a version", "No matching distribution", "NewConnectionError",
                 "Temporary failure in name resolution", "Network is unreachable")


def _warnings(text: str) -> list[str]:
    """Warning lines of a build or install, less pip's notes about this host's index setup."""
    return [line for line in text.splitlines() if ("warning" in line.lower() or "deprecat" in line.lower())
            and "is ignored: it is neither a file nor a directory" not in line]


def _setuptools_at_least(major: int) -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= major


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # This environment's setuptools when it is new enough (fast, offline), else an isolated build.
    isolation = ["--no-build-isolation"] if _setuptools_at_least(77) else []
    r = _run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", *isolation, "-w", str(out)], cwd=REPO)
    if r.returncode != 0 and any(h in r.stdout + r.stderr for h in OFFLINE_HINTS):
        pytest.skip(f"no setuptools >= 77 here and no package index to fetch it: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _warnings(r.stdout + r.stderr) == []
    (whl,) = out.glob("sonotrap-*.whl")
    return whl


def test_wheel_carries_the_demo_model_and_an_spdx_licence(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    # every file of the bundle (a new member, e.g. the self-test's reference audio, must be
    # added to [tool.setuptools.package-data] or the installed model fails its self-test)
    bundle_files = {f"edge/demo_model/{p.name}" for p in (REPO / "models/demo").iterdir() if p.is_file()}
    assert {"edge/demo_model/manifest.json", "edge/demo_model/model.onnx"} <= bundle_files <= names, \
        bundle_files - names
    assert zf.getinfo("edge/demo_model/model.onnx").file_size == (REPO / "models/demo/model.onnx").stat().st_size
    assert "License-Expression: MIT" in meta
    assert any(n.endswith("licenses/LICENSE") for n in names)


def _world_usable(path: str) -> bool:
    """Can any user run this interpreter (every folder above it searchable, e.g. not under /root)?"""
    p = Path(path).resolve()
    return all(os.stat(d).st_mode & 0o001 for d in p.parents) and bool(os.stat(p).st_mode & 0o001)


def _python_for_everyone() -> str:
    """A Python >= 3.11 every user can run, to base the fresh virtualenv on."""
    for cand in (getattr(sys, "_base_executable", sys.executable), shutil.which("python3.11"), "/usr/bin/python3"):
        if cand and os.path.exists(cand) and (os.geteuid() != 0 or _world_usable(cand)):
            r = _run([cand, "-c", "import sys, venv; print(sys.version_info >= (3, 11))"])
            if r.stdout.strip() == "True":
                return cand
    pytest.skip("no Python >= 3.11 with venv that an unprivileged user can run")


def _as_user(cmd: list[str], home: Path, env: dict[str, str]) -> list[str]:
    """``cmd`` as the unprivileged ``nobody`` when we are root (the test's point), else as we are."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    if not os.path.exists(runuser):
        pytest.skip("runuser (util-linux) is needed to run as an unprivileged user")
    shutil.chown(home, "nobody")
    return [runuser, "-u", "nobody", "--", "/usr/bin/env", *(f"{k}={v}" for k, v in env.items()), *cmd]


@pytest.mark.data
def test_fresh_venv_install_reaches_a_first_detection_as_a_normal_user(wheel, shared_data):
    soundscape = shared_data / "soundscapes" / "opensoundscape_1min.wav"
    existed_before = Path("/var/lib/sonotrap").exists()
    root = Path(tempfile.mkdtemp(prefix="sonotrap-wheel-"))  # not under pytest's 0700 basetemp
    try:
        root.chmod(0o755)
        venv = root / "venv"
        r = _run([_python_for_everyone(), "-m", "venv", str(venv)])
        assert r.returncode == 0, r.stderr
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        r = _run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                 env=clean)
        if r.returncode != 0 and any(h in r.stdout + r.stderr for h in OFFLINE_HINTS):
            pytest.skip(f"the edge dependencies cannot be installed here (no package index): {r.stderr[-300:]}")
        assert r.returncode == 0, r.stdout + r.stderr
        assert _warnings(r.stdout + r.stderr) == []
        home = root / "home"
        home.mkdir()
        env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
        cmd = _as_user(["sonotrap", "run", "--file", str(soundscape), "--fast", "--no-mqtt", "--jsonl", "-",
                        "--enable-labels", "all"], home, env)  # the README's command for the demo model
        r = _run(cmd, env=env, cwd=str(home))
        assert r.returncode == 0, r.stdout + r.stderr
        assert _warnings(r.stderr) == [], r.stderr
        assert not Path("/var/lib/sonotrap").exists() or existed_before, "a replay created /var/lib/sonotrap"
        lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
        assert lines, f"no detection: {r.stdout[-500:]} {r.stderr[-500:]}"
        first = lines[0]
        assert first["model"]["name"] == "nips4bplus-resnet50" and first["score"] > 0
        assert "offset" in first and first["offset"]["start_s"] >= 0
        assert (home / ".local/state/sonotrap/status.json").is_file()  # per-user state, no /var/lib
        assert "site-packages" in json.loads((home / ".local/state/sonotrap/status.json").read_text())["model"]["path"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
