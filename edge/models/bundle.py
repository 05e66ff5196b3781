"""Model bundles: ``model.onnx`` + ``manifest.json`` (+ optional signature), dir or .tar.gz.

This module loads a bundle (validating everything a field recorder must be able to trust)
and writes one. Loading fails with one clear line per problem: missing file, checksum
mismatch, bad signature, unknown schema version, label count differing from the model's
output, frontend parameters this edge cannot honour, a model onnxruntime cannot load, and a
self-test failure. The pieces live next door: the manifest format in
:mod:`edge.models.manifest`, archives in :mod:`edge.models.archive`, signatures in
:mod:`edge.models.signing`, the "does the model run" check in :mod:`edge.models.selftest`.
The format is documented in ``models/README.md``.
"""

from __future__ import annotations

import importlib.resources
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig
from edge.models.archive import open_bundle_dir, write_archive
from edge.models.manifest import MODEL_FILE, SIGNATURE_FILE, Manifest, read_manifest, write_manifest
from edge.models.reference_audio import AUDIO_FILE, write_reference_audio
from edge.models.selftest import REFERENCE_ATOL, check_io, compute_reference, create_session, run_self_test
from edge.models.signing import verify_bundle
from edge.util.hashing import sha256_file

# The shipped demo model is package data of edge (edge/demo_model links to models/demo in a
# clone), so wheel and sdist installs carry it too.
DEFAULT_BUNDLE = Path(str(importlib.resources.files("edge") / "demo_model"))


@dataclass
class ModelBundle:
    """A loaded, validated bundle."""

    path: Path
    manifest: Manifest
    frontend: FrontendConfig
    signed_by: str | None = None  # key id that verified the signature, if checked
    source: Path | None = None  # the .tar.gz it was unpacked from, if any
    # The 1-thread session load_bundle validated with, handed to the first create_session(1):
    # building a second one would raise the daemon's peak RSS by the model's size again.
    checked_session: Any = field(default=None, repr=False, compare=False)

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file

    @property
    def labels(self) -> list[str]:
        return [lab.code for lab in self.manifest.labels]

    @property
    def names(self) -> dict[str, str]:
        return {lab.code: lab.name for lab in self.manifest.labels}

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.manifest.thresholds)

    @property
    def enabled_labels(self) -> list[str]:
        """Labels published by default (the others need ``detector.enable_labels``)."""
        return [lab.code for lab in self.manifest.labels if lab.enabled]

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def name(self) -> str:
        return self.manifest.name

    def create_session(self, threads: int = 1):
        """An onnxruntime session for this model (CPU, ``threads`` intra-op threads)."""
        if threads == 1 and self.checked_session is not None:
            sess, self.checked_session = self.checked_session, None
            return sess
        return create_session(self.model_path, threads)


# --------------------------------------------------------------------------- writing


def write_bundle(
    out_dir: str | Path,
    model_file: str | Path,
    manifest: Manifest,
    *,
    reference_images: np.ndarray | None = None,
    reference_audio: list[np.ndarray] | None = None,
    reference_audio_source: str = "",
    archive: str | Path | None = None,
) -> Path:
    """Copy the model into ``out_dir``, fill sha256/shapes/self-test reference, write the manifest.

    ``reference_images`` (real windows, ``(N, C, H, W)``) become the self-test input; without
    them deterministic synthetic windows are used. ``reference_audio`` (mono windows at the
    frontend's sample rate) is stored as a listed FLAC member with the outputs the frontend and
    the model give on it (see :mod:`edge.models.reference_audio`); without it, an existing
    reference-audio member is kept when the self-test reference is, else the bundle has none.
    ``archive`` also writes a ``.tar.gz``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / MODEL_FILE
    if Path(model_file).resolve() != target.resolve():
        shutil.copyfile(model_file, target)
    stale_sig = out / SIGNATURE_FILE
    if stale_sig.exists():  # the manifest changes, so any old signature is void
        stale_sig.unlink()
    manifest.model_file = MODEL_FILE
    manifest.model_sha256 = sha256_file(target)
    manifest.files = {MODEL_FILE: {"size": target.stat().st_size, "sha256": manifest.model_sha256}}
    if not manifest.created:
        manifest.created = datetime.now(UTC).isoformat(timespec="seconds")
    cfg = FrontendConfig.from_dict(manifest.frontend)
    manifest.input_shape = ["batch", *cfg.image_shape]
    manifest.output_shape = ["batch", len(manifest.labels)]
    kept_audio = None
    if reference_images is not None or not manifest.reference:
        manifest.reference = compute_reference(target, cfg, reference_images, input_name=manifest.input_name)
    else:
        kept_audio = manifest.reference.get("audio")
    if reference_audio is not None:
        entry, audio_path = write_reference_audio(
            out, reference_audio, cfg, create_session(target, 1), manifest.input_name,
            float(manifest.reference.get("atol", REFERENCE_ATOL)), reference_audio_source,
        )
        manifest.reference["audio"] = entry
        manifest.files[audio_path.name] = {"size": audio_path.stat().st_size, "sha256": sha256_file(audio_path)}
    elif isinstance(kept_audio, dict) and kept_audio.get("file") == AUDIO_FILE and (out / AUDIO_FILE).is_file():
        kept = out / AUDIO_FILE  # the manifest is rewritten (operating points), the recorded audio stays
        manifest.files[kept.name] = {"size": kept.stat().st_size, "sha256": sha256_file(kept)}
    else:
        manifest.reference.pop("audio", None)
    write_manifest(out, manifest)
    if archive is not None:
        write_archive(out, archive)
    return out


# --------------------------------------------------------------------------- loading


def load_bundle(
    path: str | Path | None = None,
    *,
    trusted_keys: str | Path | None = None,
    require_signature: bool = False,
    self_test: bool = True,
) -> ModelBundle:
    """Load and validate a bundle directory or ``.tar.gz``; ``None`` = the shipped demo model.

    ``trusted_keys`` (a ``.pub`` file or a directory of them): when given, a signature is
    verified whenever present; ``require_signature`` additionally rejects unsigned bundles.
    ``self_test`` re-runs the model on the stored reference input (about 0.1 s for ResNet50).
    """
    src = Path(path) if path is not None else DEFAULT_BUNDLE
    if path is None and not src.exists():
        raise SonotrapError(
            f"the demo model {src} is missing from this install; set model.bundle to a bundle path"
        )
    p = open_bundle_dir(src)
    manifest = read_manifest(p)
    model_path = p / manifest.model_file
    if not model_path.is_file():
        raise SonotrapError(f"model bundle {src} lacks {manifest.model_file}; re-download the bundle")
    if sha256_file(model_path) != manifest.model_sha256:
        raise SonotrapError(
            f"model {model_path} fails its sha256 check (corrupt or tampered); re-download the bundle"
        )
    signed_by = None
    if require_signature and trusted_keys is None:
        raise SonotrapError("a signed model is required but no trusted keys are configured; set the trusted keys path")
    if trusted_keys is not None and (require_signature or (p / SIGNATURE_FILE).exists()):
        signed_by = verify_bundle(p, trusted_keys)
    try:
        frontend = FrontendConfig.from_dict(manifest.frontend)
    except SonotrapError as err:
        raise SonotrapError(f"model bundle {src}: {err}") from None
    bundle = ModelBundle(path=p, manifest=manifest, frontend=frontend, signed_by=signed_by, source=None if p == src else src)
    sess = bundle.create_session(1)
    check_io(bundle, sess, src)
    if self_test:
        run_self_test(bundle, sess, src)
    bundle.checked_session = sess
    return bundle


def describe(bundle: ModelBundle) -> dict[str, Any]:
    """A short summary for ``sonotrap bundle inspect`` (no base64 blobs)."""
    m = bundle.manifest
    return {
        "path": str(bundle.source or bundle.path),
        "name": m.name,
        "version": m.version,
        "schema_version": m.schema_version,
        "created": m.created,
        "labels": len(m.labels),
        "model_sha256": m.model_sha256,
        "model_bytes": bundle.model_path.stat().st_size,
        "frontend": m.frontend,
        "input": [m.input_name, m.input_shape],
        "output": [m.output_name, m.output_shape],
        "min_sonotrap_version": m.min_sonotrap_version,
        "signed": (bundle.path / SIGNATURE_FILE).exists(),
        "signed_by": bundle.signed_by,
        "provenance": m.provenance,
        "metrics": {k: v for k, v in m.metrics.items() if not isinstance(v, dict | list)} | {
            k: {kk: vv for kk, vv in v.items() if not isinstance(vv, dict | list)}
            for k, v in m.metrics.items() if isinstance(v, dict)
        },
        "enabled_labels": {
            lab.code: lab.expected_precision for lab in m.labels if lab.enabled
        },
        "disabled_labels": {
            lab.code: {"expected_precision": lab.expected_precision, "reason": lab.disabled_reason}
            for lab in m.labels if not lab.enabled
        },
        "quantization": m.quantization,
        "self_test": _self_test_kind(m),
    }


def _self_test_kind(m: Manifest) -> str:
    """What the self-test covers: older bundles without reference audio leave the frontend unchecked."""
    audio = (m.reference or {}).get("audio")
    if isinstance(audio, dict):
        return f"frontend + model on {audio.get('windows')} windows of reference audio ({audio.get('source') or 'unknown source'})"
    return "stored spectrograms only (an older bundle: its frontend settings are not checked against the model)"

