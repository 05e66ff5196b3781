"""The ``sonotrap`` command line: one entry point, one module per subcommand.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Modules
are imported only when their subcommand is chosen (and for ``--help``), and trainer modules
import torch only inside ``run``, so the edge install never needs torch.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from edge import __version__
from edge.errors import SonotrapError
from edge.service.sdnotify import configure_logging

# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("edge.commands.run", "run the streaming detector (microphone/file/stdin -> MQTT)"),
    "analyze": ("edge.commands.analyze", "run the detector over recordings as fast as possible"),
    "check": ("edge.commands.check", "validate config, model, audio device and broker"),
    "devices": ("edge.commands.devices", "list audio input devices and their sample rates"),
    "bundle": ("edge.commands.bundle", "inspect, sign and verify model bundles; make keys"),
    "model": ("edge.commands.model", "list, activate or roll back installed models"),
    "update": ("edge.commands.update", "check for and install a model update"),
    "command": ("edge.commands.command", "sign an MQTT command (update, rollback) for a device"),
    "ha-cleanup": ("edge.commands.ha_cleanup", "remove this device's entities from Home Assistant"),
    "install-service": ("edge.commands.service", "install the systemd service on this device"),
    "uninstall-service": ("edge.commands.service", "remove the systemd service"),
    "train": ("trainer.commands.train", "fine-tune ResNet50 on labelled recordings [train]"),
    "linear-head": ("trainer.commands.linear_head", "fit a linear head on a distilled backbone [train]"),
    "tune-top": ("trainer.commands.tune_top", "train the backbone's last block on a BirdNET probe's labels [train]"),
    "evaluate": ("trainer.commands.evaluate", "evaluate a checkpoint, choose thresholds [train]"),
    "export": ("trainer.commands.export", "export a checkpoint to ONNX [train]"),
    "quantize": ("trainer.commands.quantize", "INT8-quantize an ONNX model into a bundle [train]"),
}


TRAIN_EXTRAS = ("torch", "torchvision", "onnx", "tqdm", "matplotlib")  # the `train` extra


def _load(name: str):
    module_name = COMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ImportError:
        _raise_if_train_extra_missing(name)
        raise


def _raise_if_train_extra_missing(name: str) -> None:
    """For a trainer command that hit an ImportError: one line naming the missing package.

    The trainer commands import torch inside ``run`` (so ``--help`` works on an edge install),
    hence this is checked where the command runs, not only where its module loads.
    """
    if not COMMANDS[name][0].startswith("trainer."):
        return
    for package in TRAIN_EXTRAS:
        try:
            importlib.import_module(package)
        except ImportError as err:
            raise SonotrapError(
                f"'sonotrap {name}' needs {package} ({str(err).splitlines()[0][:80]}); install sonotrap[train] "
                "(pip install 'sonotrap[train]')"
            ) from None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sonotrap", description="Real-time animal-call detector.")
    parser.add_argument("--version", action="version", version=f"sonotrap {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only == name:
            _load(name).add_arguments(p)
    return parser


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


def _fail(message: str, status: int = 2) -> int:
    """One line on stderr; in the journal at priority 3 (error), so `journalctl -p warning` shows it."""
    from edge.service.sdnotify import journal_connected

    print(f"{'<3>' if journal_connected() else ''}error: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if a in COMMANDS), None)
    try:
        parser = build_parser(only=chosen)
        args = parser.parse_args(argv)
        # stderr; under systemd with journald priorities <N> per line (SyslogLevelPrefix=yes)
        configure_logging(logging.DEBUG if args.verbose else logging.INFO)
        if args.command is None:
            parser.print_help()
            return 2
        command = _load(args.command)
        try:
            return int(command.run(args) or 0)
        except ImportError:
            _raise_if_train_extra_missing(args.command)
            raise
    except SonotrapError as err:  # a few say how to exit (e.g. an update refused while another runs: 75)
        return _fail(str(err), getattr(err, "exit_status", 2))
    except OSError as err:
        if err.errno not in _DISK_ERRORS:
            raise
        # A full, read-only or forbidden disk while writing results, checkpoints or run files.
        where = f" writing {err.filename}" if err.filename else ""
        return _fail(f"{err.strerror or err}{where}; free space on that disk or write somewhere else")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
