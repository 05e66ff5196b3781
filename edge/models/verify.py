"""Verify a bundle in a separate process before it enters the on-device store.

The checks themselves are the loader's (signature, manifest, sha256, the self-test of
:mod:`edge.models.selftest`); what this module adds is isolation and a signing policy. A model
that crashes onnxruntime, exhausts memory or hangs takes down only the verifying child
(``python -m edge.models.verify DIR``), never the daemon or the updater, and its verdict
comes back as one JSON line or one error line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.errors import SonotrapError
from edge.models.bundle import load_bundle
from edge.models.manifest import SIGNATURE_FILE, read_manifest_data
from edge.models.signing import verify_bundle
from edge.util.oom import volunteer_for_oom_killer


@dataclass
class VerifiedBundle:
    """What the verification process reports about a bundle that passed every check."""

    name: str
    version: str
    labels: list[str]
    key_id: str | None


def verify_in_subprocess(
    bundle_dir: str | Path,
    *,
    trusted_keys: str | Path | None,
    allow_unsigned: bool,
    timeout_s: float = 120.0,
) -> VerifiedBundle:
    """Run :func:`verify_bundle_here` in a fresh interpreter; a crash there is a rejection."""
    cmd = [sys.executable, "-m", "edge.models.verify", str(bundle_dir)]
    if trusted_keys is not None:
        cmd += ["--trusted-keys", str(trusted_keys)]
    if allow_unsigned:
        cmd.append("--allow-unsigned")
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)  # the child must never talk to systemd on our behalf
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else repo
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise SonotrapError(
            f"bundle {bundle_dir} did not finish its self-test within {timeout_s:.0f} s; "
            "the model is too slow or hangs"
        ) from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else ""
        if reason.startswith("error: "):
            reason = reason[len("error: "):]
        if proc.returncode < 0:
            reason = f"the model crashed the verifying process (signal {-proc.returncode})"
        raise SonotrapError(reason or f"bundle verification failed (exit {proc.returncode})")
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        return VerifiedBundle(**data)
    except (ValueError, IndexError, TypeError) as err:
        raise SonotrapError(f"bundle verification printed no result ({err}); run it by hand to see why") from None


def verify_bundle_here(bundle_dir: str | Path, trusted_keys: str | Path | None, allow_unsigned: bool) -> VerifiedBundle:
    """Signature policy, then the loader's full validation and self-test; SonotrapError names the problem.

    Runs in the verification process.
    """
    bundle_dir = Path(bundle_dir)
    has_sig = (bundle_dir / SIGNATURE_FILE).exists()
    key_id = None
    if has_sig or not allow_unsigned:
        if trusted_keys is None:
            raise SonotrapError("no trusted keys configured; set update.trusted_keys_dir or allow_unsigned")
        if not has_sig:
            raise SonotrapError(
                "the bundle is not signed and unsigned bundles are refused; "
                "sign it with 'sonotrap bundle sign' (or set update.allow_unsigned = true)"
            )
        key_id = verify_bundle(bundle_dir, trusted_keys)
    b = load_bundle(bundle_dir, self_test=True)  # manifest, sha256, I/O shapes, reference outputs
    return VerifiedBundle(name=b.name, version=b.version, labels=list(b.labels), key_id=key_id)


def read_identity(bundle_dir: Path) -> VerifiedBundle:
    """Name, version and labels from the manifest alone (installing without verification)."""
    m = read_manifest_data(bundle_dir)
    try:
        return VerifiedBundle(
            name=str(m["name"]),
            version=str(m["version"]),
            labels=[lab["code"] for lab in m.get("labels", [])],
            key_id=None,
        )
    except (KeyError, TypeError) as err:
        raise SonotrapError(f"bundle {bundle_dir} has an unreadable manifest ({err}); re-download it") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.models.verify", description="verify a bundle directory")
    parser.add_argument("bundle")
    parser.add_argument("--trusted-keys")
    parser.add_argument("--allow-unsigned", action="store_true")
    args = parser.parse_args(argv)
    volunteer_for_oom_killer()  # a model that eats memory kills this child, never the daemon
    try:
        info = verify_bundle_here(args.bundle, args.trusted_keys, args.allow_unsigned)
    except SonotrapError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(info)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
