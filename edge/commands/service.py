"""``sonotrap install-service`` / ``uninstall-service``: run sonotrap under systemd on a device.

Install (Raspberry Pi OS / Debian, as root): a ``sonotrap`` system user in the ``audio``
group, ``/etc/sonotrap/config.toml`` (never overwritten) and ``trusted_keys/``,
``/var/lib/sonotrap`` with the model store seeded with the shipped demo model, the units
``sonotrap.service``, ``sonotrap-update.service`` and ``.timer`` in ``/etc/systemd/system``
with ``ExecStart=`` pointing at *this* sonotrap executable (the virtualenv it runs from),
then ``systemctl daemon-reload`` and ``enable`` (``--now`` also starts them).

Uninstall stops and disables the units and removes them; configuration, models and the
outbox stay unless ``--purge`` (which also removes the user).

``--root DIR`` installs into another file system tree (an SD-card image being prepared, or a
test); systemctl is then skipped and users are created with ``useradd --prefix``.
"""

from __future__ import annotations

import argparse
import grp
import logging
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from edge.errors import SonotrapError

log = logging.getLogger("sonotrap.service")

REPO = Path(__file__).resolve().parent.parent.parent
UNIT_DIR = REPO / "systemd"
UNITS = ("sonotrap.service", "sonotrap-update.service", "sonotrap-update.timer")
ENABLE = ("sonotrap.service", "sonotrap-update.timer")
TEMPLATE_EXE = "/opt/sonotrap/venv/bin/sonotrap"
TEMPLATE_CONFIG = "/etc/sonotrap/config.toml"
USER = "sonotrap"

CONFIG_SKELETON = """\
# sonotrap configuration (written by `sonotrap install-service`; it is never overwritten).
# Every setting and its default: config.example.toml / README. Check it with:
#   sudo -u sonotrap sonotrap check --config {config}
# After editing: sudo systemctl restart sonotrap

state_dir = "{state}"
log_level = "INFO"            # DEBUG | INFO | WARNING | ERROR (journal priorities follow it)

[audio]
source = "mic"
# device = "USB"              # name substring or index from `sonotrap devices`; default device if unset

[model]
# The model store's `current` link; `sonotrap update` / `sonotrap model` switch it.
bundle = "{state}/models/current"
threads = 1

[mqtt]
host = "localhost"
port = 1883
# device_id = "recorder-01"   # default: the hostname
# username = "sonotrap"
# password_file = "{conf_dir}/mqtt-password"

[update]
channel = "stable"
# url = "https://models.example.org/sonotrap/"   # serves index.json + signed bundles
# local_dir = "/media/usb/sonotrap"              # or a USB stick / rsync target
# allowed_base_urls = ["https://models.example.org/sonotrap/"]   # for MQTT cmd/update URLs
trusted_keys_dir = "{conf_dir}/trusted_keys"   # the signers' .pub files
allow_unsigned = false
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="/", metavar="DIR",
                        help="install into this file system tree instead of / (no systemctl then)")
    parser.add_argument("--user", default=USER, help=f"service user (default {USER})")
    parser.add_argument("--no-user", action="store_true", help="do not create or remove the user")
    parser.add_argument("--no-systemctl", action="store_true", help="do not run systemctl (daemon-reload/enable)")
    if getattr(parser, "prog", "").endswith("uninstall-service"):
        parser.add_argument("--purge", action="store_true",
                            help="also delete /etc/sonotrap, /var/lib/sonotrap (models, outbox), logs and the user")
    else:
        parser.add_argument("--exec", dest="executable", metavar="PATH",
                            help="sonotrap executable for ExecStart= (default: the one running this command)")
        parser.add_argument("--now", action="store_true", help="also start the service and the timer")
        parser.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                            help="copy this public key into /etc/sonotrap/trusted_keys (repeatable)")


def run(args: argparse.Namespace) -> int:
    if args.command == "uninstall-service":
        return uninstall(args)
    return install(args)


# ---------------------------------------------------------------- helpers


def find_executable() -> Path:
    """The ``sonotrap`` script next to the running interpreter (its venv), else on PATH."""
    candidate = Path(sys.executable).parent / "sonotrap"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate.absolute()
    found = shutil.which("sonotrap")
    if found:
        return Path(found).absolute()
    raise SonotrapError(
        "cannot find the sonotrap executable; install sonotrap into a virtualenv (make demo) or pass --exec PATH"
    )


def render_unit(text: str, executable: str | Path, config: str = TEMPLATE_CONFIG, user: str = USER) -> str:
    """The unit text with ExecStart= pointing at ``executable`` (and the given config/user)."""
    out = text.replace(TEMPLATE_EXE, str(executable)).replace(TEMPLATE_CONFIG, config)
    if user != USER:
        lines = []
        for line in out.splitlines():
            if line.startswith(("User=", "Group=")):
                line = line.split("=", 1)[0] + "=" + user
            lines.append(line)
        out = "\n".join(lines) + "\n"
    return out


def _under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _systemctl(*argv: str, check: bool = True) -> bool:
    if not shutil.which("systemctl"):
        log.warning("systemctl not found; run: systemctl %s", " ".join(argv))
        return False
    if not Path("/run/systemd/system").is_dir():
        log.warning("systemd is not running here (container?); later run: systemctl %s", " ".join(argv))
        return False
    proc = subprocess.run(["systemctl", *argv], capture_output=True, text=True)
    if proc.returncode != 0 and check:
        raise SonotrapError(f"systemctl {' '.join(argv)} failed: {proc.stderr.strip()}; see journalctl -xe")
    return proc.returncode == 0


def _lookup_ids(root: Path, user: str) -> tuple[int, int] | None:
    """(uid, gid) of ``user`` in ROOT/etc/passwd (the live database when root is /)."""
    if str(root) == "/":
        try:
            pw = pwd.getpwnam(user)
            return pw.pw_uid, pw.pw_gid
        except KeyError:
            return None
    passwd = root / "etc" / "passwd"
    if not passwd.is_file():
        return None
    for line in passwd.read_text().splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[0] == user:
            return int(parts[2]), int(parts[3])
    return None


def _group_exists(root: Path, group: str) -> bool:
    if str(root) == "/":
        try:
            grp.getgrnam(group)
            return True
        except KeyError:
            return False
    groups = root / "etc" / "group"
    return groups.is_file() and any(line.split(":")[0] == group for line in groups.read_text().splitlines())


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SonotrapError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.returncode}; run as root")


def ensure_user(root: Path, user: str, home: str) -> tuple[int, int]:
    """A system user with its own group, in ``audio``, no login shell, no home directory files."""
    prefix = [] if str(root) == "/" else ["--prefix", str(root)]
    if not _group_exists(root, "audio"):
        _run(["groupadd", *prefix, "--system", "audio"])
    ids = _lookup_ids(root, user)
    if ids is None:
        _run(["useradd", *prefix, "--system", "--user-group", "--groups", "audio", "--home-dir", home,
              "--no-create-home", "--shell", "/usr/sbin/nologin", "--comment", "sonotrap detector", user])
        log.info("created system user %s (groups: %s, audio)", user, user)
    else:
        _run(["usermod", *prefix, "--append", "--groups", "audio", user])
    ids = _lookup_ids(root, user)
    if ids is None:
        raise SonotrapError(f"user {user} was not created; create it by hand (useradd --system {user})")
    return ids


def _chown(path: Path, ids: tuple[int, int] | None, mode: int) -> None:
    os.chmod(path, mode)
    if ids is not None and os.geteuid() == 0:
        os.chown(path, *ids)


# ---------------------------------------------------------------- install / uninstall


def install(args: argparse.Namespace) -> int:
    root = Path(args.root)
    live = str(root) == "/"
    if live and os.geteuid() != 0:
        raise SonotrapError("install-service must run as root; use: sudo $(which sonotrap) install-service")
    if not (UNIT_DIR / "sonotrap.service").is_file():
        raise SonotrapError(f"unit templates not found in {UNIT_DIR}; run install-service from a sonotrap checkout")
    exe = Path(args.executable).absolute() if args.executable else find_executable()
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        raise SonotrapError(f"{exe} is not an executable file; pass the sonotrap script with --exec")
    conf_dir, state, logs = "/etc/sonotrap", "/var/lib/sonotrap", "/var/log/sonotrap"
    config = f"{conf_dir}/config.toml"

    ids = None if args.no_user else ensure_user(root, args.user, state)
    gid_only = (0, ids[1]) if ids else None

    # directories (systemd also creates them with StateDirectory= etc.; made here so the
    # store can be seeded and `sonotrap check` works before the first start)
    for path, owner, mode in ((conf_dir, gid_only, 0o750), (f"{conf_dir}/trusted_keys", gid_only, 0o750),
                              (state, ids, 0o750), (logs, ids, 0o750)):
        p = _under(root, path)
        p.mkdir(parents=True, exist_ok=True)
        _chown(p, owner, mode)
    for key in args.trusted_key:
        src = Path(key)
        if not src.is_file():
            raise SonotrapError(f"trusted key {src} does not exist; pass the signer's .pub file")
        dst = _under(root, f"{conf_dir}/trusted_keys") / src.name
        shutil.copyfile(src, dst)
        _chown(dst, gid_only, 0o640)

    cfg_path = _under(root, config)
    if cfg_path.exists():
        log.info("keeping existing %s", config)
    else:
        cfg_path.write_text(CONFIG_SKELETON.format(config=config, state=state, conf_dir=conf_dir))
        _chown(cfg_path, gid_only, 0o640)
        log.info("wrote %s", config)

    _seed_store(_under(root, state), ids)

    unit_dir = _under(root, "/etc/systemd/system")
    unit_dir.mkdir(parents=True, exist_ok=True)
    for name in UNITS:
        text = render_unit((UNIT_DIR / name).read_text(), exe, config, args.user)
        target = unit_dir / name
        tmp = target.with_name(f".{name}.tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        log.info("installed %s", target)

    if live and not args.no_systemctl:
        if _systemctl("daemon-reload"):
            _systemctl("enable", *([*ENABLE] if not args.now else ["--now", *ENABLE]))
    print(f"installed sonotrap service (ExecStart {exe} run --config {config}); "
          f"edit {config}, then: systemctl restart sonotrap; logs: journalctl -u sonotrap -f")
    return 0


def _seed_store(state: Path, ids: tuple[int, int] | None) -> None:
    """Put the shipped demo model in the store as `current` so the first start has a model."""
    from edge.models.bundle import DEFAULT_BUNDLE
    from edge.models.store import ModelStore, store_root

    store = ModelStore(store_root(state))
    if store.current() is not None:
        return
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        log.warning("no demo model at %s; install one with 'sonotrap model install BUNDLE --activate'", DEFAULT_BUNDLE)
        return
    m = store.install(DEFAULT_BUNDLE, trusted_keys=None, verify=False, label="shipped demo model")
    store.activate(m.dirname)
    if ids is not None and os.geteuid() == 0:
        for p in [store.root, *store.root.rglob("*")]:
            os.lchown(p, *ids)
    log.info("model store seeded with the demo model %s %s", m.name, m.version)


def uninstall(args: argparse.Namespace) -> int:
    root = Path(args.root)
    live = str(root) == "/"
    if live and os.geteuid() != 0:
        raise SonotrapError("uninstall-service must run as root; use: sudo $(which sonotrap) uninstall-service")
    if live and not args.no_systemctl:
        _systemctl("disable", "--now", *UNITS, check=False)
    unit_dir = _under(root, "/etc/systemd/system")
    for name in UNITS:
        p = unit_dir / name
        if p.exists():
            p.unlink()
            log.info("removed %s", p)
    if live and not args.no_systemctl:
        _systemctl("daemon-reload", check=False)
    if args.purge:
        for path in ("/etc/sonotrap", "/var/lib/sonotrap", "/var/log/sonotrap"):
            shutil.rmtree(_under(root, path), ignore_errors=True)
        if not args.no_user and _lookup_ids(root, args.user) is not None:
            prefix = [] if live else ["--prefix", str(root)]
            _run(["userdel", *prefix, args.user])
        print("removed the sonotrap service, its configuration, models, outbox and user")
    else:
        print("removed the sonotrap service; kept /etc/sonotrap, /var/lib/sonotrap and the user "
              "(uninstall-service --purge deletes them)")
    return 0
