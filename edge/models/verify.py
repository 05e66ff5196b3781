"""Verify a bundle in a separate process before it enters the on-device store.

The checks themselves are the loader's (signature, manifest, sha256, the self-test of
:mod:`edge.models.selftest`, which runs the frontend and the model on the bundle's recorded
reference audio when it has one); what this module adds is isolation and a signing policy. A model
that crashes onnxruntime, exhausts memory or hangs takes down only the verifying child
(``python -m edge.models.verify DIR``), never the daemon or the updater, and its verdict
comes back as one JSON line or one error line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge.errors import SonotrapError
from edge.inference.frontend import compute_batch
from edge.models.archive import check_listed_files
from edge.models.bundle import ModelBundle, load_bundle
from edge.models.manifest import SIGNATURE_FILE, read_manifest_data
from edge.models.selftest import default_reference_audio, has_reference_audio
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
    memory_mb: float | None = 2048.0,
) -> VerifiedBundle:
    """Run :func:`verify_bundle_here` in a fresh interpreter; a crash there is a rejection.

    The child runs under ``timeout_s`` and an address-space limit of ``memory_mb`` (RLIMIT_AS),
    so a model or frontend that would exhaust the device's memory fails there, not in the daemon.
    """
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
        limit = functools.partial(_limit_memory, int(memory_mb * 1e6)) if memory_mb else None
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, preexec_fn=limit)
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
    else:
        check_listed_files(bundle_dir, read_manifest_data(bundle_dir))
    try:
        b = load_bundle(bundle_dir, self_test=True)  # manifest, sha256, I/O shapes, reference outputs (and audio)
    except MemoryError:
        raise SonotrapError("the bundle's frontend or model needs more memory than update.verify_memory_mb allows") from None
    if not has_reference_audio(b):
        run_pipeline_check(b)  # an older bundle: at least the frontend must run, on synthetic audio
    return VerifiedBundle(name=b.name, version=b.version, labels=list(b.labels), key_id=key_id)


def run_pipeline_check(b: ModelBundle) -> None:
    """For bundles without reference audio: the bundle's frontend on synthetic audio, then the model.

    Their stored self-test feeds the model a stored spectrogram; only running the frontend with
    the manifest's parameters shows that they are usable (memory, time) before the daemon tries.
    This is weaker than the reference-audio check of newer bundles: any runnable frontend passes,
    even one the model was not trained with.
    """
    try:
        images = compute_batch(default_reference_audio(b.frontend), b.frontend.sample_rate, b.frontend)
        sess = b.checked_session or b.create_session(1)
        out = np.asarray(sess.run(None, {b.manifest.input_name: images.astype(np.float32)})[0])
    except MemoryError:
        raise SonotrapError("the bundle's frontend or model needs more memory than update.verify_memory_mb allows") from None
    if out.shape != (len(images), len(b.labels)) or not np.all(np.isfinite(out)) or out.min() < 0 or out.max() > 1:
        raise SonotrapError(
            f"the model's output on reference audio has shape {out.shape} or values outside [0, 1]; rebuild the bundle"
        )


def _limit_memory(max_bytes: int) -> None:
    """In the verifying child, before exec: cap its address space (a hostile model hits MemoryError)."""
    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))


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
