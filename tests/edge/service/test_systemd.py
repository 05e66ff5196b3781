"""systemd units and install-service, checked with systemd's own tools.

``systemd-analyze verify`` exits 0 on many problems (unknown keys, unparsable values are only
"ignoring" warnings), so the check fails on *any* diagnostic that names one of our files --
and a deliberately broken unit must be caught by exactly that check.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.commands.service import TEMPLATE_EXE, UNITS, render_unit
from edge.config import load_config
from tests.support.paths import REPO

UNIT_DIR = REPO / "systemd"
EXE = Path(sys.executable).parent / "sonotrap"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze missing (scripts/install-system-deps installs systemd)")


def verify(paths: list[Path]) -> list[str]:
    """Every problem systemd-analyze reports about these unit files (empty = clean)."""
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, paths)],
                          capture_output=True, text=True, timeout=60)
    out = (proc.stdout + proc.stderr).splitlines()
    names = [p.name for p in paths] + [str(p) for p in paths]
    problems = [line for line in out if any(n in line for n in names)]
    if proc.returncode != 0 and not problems:
        problems = out or [f"systemd-analyze verify exited {proc.returncode}"]
    return problems


def rendered(tmp_path: Path) -> list[Path]:
    """The repo's units as install-service writes them (ExecStart = this venv's sonotrap)."""
    assert EXE.is_file(), f"{EXE} missing: pip install -e . first"
    out = []
    for name in UNITS:
        p = tmp_path / name
        p.write_text(render_unit((UNIT_DIR / name).read_text(), EXE))
        out.append(p)
    return out


def unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str
    cp.read_string((UNIT_DIR / name).read_text())
    return cp


def test_units_pass_systemd_analyze_verify(tmp_path):
    assert verify(rendered(tmp_path)) == []


@pytest.mark.parametrize("breakage", [
    ("WatchdogSec=30", "WatchdogSecs=30"),           # misspelled key: only a warning, rc 0
    ("Type=notify", "Type=notifiy"),                 # bad value
    ("RestartSec=5", "RestartSec=five"),             # unparsable time
    ("NoNewPrivileges=yes", "NoNewPrivileges=maybe"),
])
def test_a_broken_unit_fails_the_check(tmp_path, breakage):
    paths = rendered(tmp_path)
    svc = paths[0]
    text = svc.read_text()
    assert breakage[0] in text
    svc.write_text(text.replace(breakage[0], breakage[1]))
    problems = verify(paths)
    assert problems and any("sonotrap.service" in p for p in problems), problems


def test_exec_start_must_exist(tmp_path):
    paths = rendered(tmp_path)
    paths[0].write_text(paths[0].read_text().replace(str(EXE), "/nonexistent/bin/sonotrap"))
    assert any("not executable" in p for p in verify(paths))


def test_service_settings_and_exposure(tmp_path):
    s = unit("sonotrap.service")["Service"]
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert s["Restart"] == "always" and int(s["RestartSec"]) >= 1
    assert 10 <= int(s["WatchdogSec"]) <= 120
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert (s["User"], s["Group"], s["SupplementaryGroups"]) == ("sonotrap", "sonotrap", "audio")
    assert s["ProtectSystem"] == "strict" and s["CapabilityBoundingSet"] == ""
    assert s["StateDirectory"] == s["ConfigurationDirectory"] == s["LogsDirectory"] == "sonotrap"
    assert s["DeviceAllow"] == "char-alsa rw"
    u = unit("sonotrap.service")["Unit"]
    assert int(u["StartLimitBurst"]) >= 3 and int(u["StartLimitIntervalSec"]) > int(u["StartLimitBurst"]) * 5
    # systemd's own hardening score (0 = locked down, 10 = unprotected): stays "OK"
    for p in rendered(tmp_path)[:2]:
        proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=25", str(p)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout[-600:]


def test_update_timer_is_randomised_and_persistent():
    t = unit("sonotrap-update.timer")["Timer"]
    assert t["Persistent"] == "true" and t["Unit"] == "sonotrap-update.service"
    delay = t["RandomizedDelaySec"]
    assert delay.endswith("h") and int(delay[:-1]) >= 1
    proc = subprocess.run(["systemd-analyze", "calendar", t["OnCalendar"]], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    s = unit("sonotrap-update.service")["Service"]
    assert s["Type"] == "oneshot" and "update" in s["ExecStart"] and "--no-jitter" in s["ExecStart"]
    assert s["User"] == "sonotrap"
    assert TEMPLATE_EXE in s["ExecStart"]


def _fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for f in ("passwd", "group", "shadow", "gshadow"):
        if Path("/etc", f).exists():
            shutil.copyfile(Path("/etc", f), root / "etc" / f)
    return root


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root and useradd")
def test_install_and_uninstall_service_into_a_root(tmp_path):
    root = _fake_root(tmp_path)
    host_passwd = Path("/etc/passwd").read_text()
    proc = _cli("install-service", "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    units = root / "etc/systemd/system"
    for name in UNITS:
        assert (units / name).is_file()
    svc = (units / "sonotrap.service").read_text()
    assert f"ExecStart={EXE} run --config /etc/sonotrap/config.toml" in svc
    assert verify([units / n for n in UNITS]) == []
    # user: system account, no login, in audio; the host's database is untouched
    line = next(x for x in (root / "etc/passwd").read_text().splitlines() if x.startswith("sonotrap:"))
    uid, gid, shell = int(line.split(":")[2]), int(line.split(":")[3]), line.split(":")[6]
    assert uid < 1000 and shell.endswith("nologin")
    audio = next(x for x in (root / "etc/group").read_text().splitlines() if x.startswith("audio:"))
    assert "sonotrap" in audio.split(":")[3].split(",")
    assert Path("/etc/passwd").read_text() == host_passwd
    # directories and ownership
    state = root / "var/lib/sonotrap"
    assert (state.stat().st_uid, state.stat().st_mode & 0o777) == (uid, 0o750)
    conf = root / "etc/sonotrap"
    assert (conf.stat().st_uid, conf.stat().st_gid) == (0, gid) and (conf / "trusted_keys").is_dir()
    # the config skeleton is valid and points the daemon at the model store
    cfg = load_config(conf / "config.toml")
    assert cfg.model.bundle == "/var/lib/sonotrap/models/current" and cfg.state_dir == "/var/lib/sonotrap"
    assert cfg.update.trusted_keys_dir == "/etc/sonotrap/trusted_keys" and not cfg.update.allow_unsigned
    # idempotent, and an edited config is never overwritten
    (conf / "config.toml").write_text((conf / "config.toml").read_text().replace('log_level = "INFO"', 'log_level = "DEBUG"'))
    assert _cli("install-service", "--root", str(root)).returncode == 0
    assert 'log_level = "DEBUG"' in (conf / "config.toml").read_text()
    assert sum(x.startswith("sonotrap:") for x in (root / "etc/passwd").read_text().splitlines()) == 1
    # uninstall keeps data; --purge removes data and user
    (state / "outbox.sqlite").write_bytes(b"keep me")
    assert _cli("uninstall-service", "--root", str(root)).returncode == 0
    assert not any((units / n).exists() for n in UNITS)
    assert (state / "outbox.sqlite").exists() and (conf / "config.toml").exists()
    proc = _cli("uninstall-service", "--root", str(root), "--purge")
    assert proc.returncode == 0, proc.stderr
    assert not state.exists() and not conf.exists()
    assert not any(x.startswith("sonotrap:") for x in (root / "etc/passwd").read_text().splitlines())


def test_install_service_refuses_a_missing_executable(tmp_path):
    proc = _cli("install-service", "--root", str(tmp_path), "--no-user", "--exec", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "not an executable file" in proc.stderr
