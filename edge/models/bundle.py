"""Model bundles: ``model.onnx`` + ``manifest.json`` (+ optional signature), dir or .tar.gz.

The format is documented in ``models/README.md``. Loading validates everything a field
recorder must be able to trust and fails with one clear line per problem: missing file,
checksum mismatch, bad signature, unknown schema version, label count differing from the
model's output, frontend parameters this edge cannot honour, a model onnxruntime cannot
load, and a self-test (the model re-run on a reference input stored in the manifest must
reproduce the stored output).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge import __version__
from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig, compute, to_image

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
SIGNATURE_FILE = "manifest.json.sig"  # same as edge.models.signing.SIGNATURE_FILE
BUNDLE_FILES = (MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE)
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "demo"
REFERENCE_ATOL = 0.05  # probabilities; INT8 kernels differ slightly across CPUs (VNNI/NEON)
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.-]+)?$")
_MAX_ARCHIVE_MEMBER = 512 * 1024 * 1024


@dataclass
class Label:
    code: str  # e.g. "Erirub_song"
    name: str  # human name, e.g. "European robin (song)"
    # Operating point measured on validation recordings: a label whose threshold cannot be
    # trusted to reach the target precision on new recordings ships disabled (the detector
    # publishes it only when the operator enables it), with the measured figure and the reason.
    enabled: bool = True
    expected_precision: float | None = None
    expected_recall: float | None = None
    disabled_reason: str | None = None


@dataclass
class Manifest:
    """Everything the edge needs to run a model, and everything a user needs to trust it."""

    name: str
    version: str  # semantic version of the model
    labels: list[Label]
    thresholds: dict[str, float]
    frontend: dict[str, Any]
    model_sha256: str
    input_name: str = "input"
    input_shape: list[Any] = field(default_factory=lambda: ["batch", 3, 128, 128])
    output_name: str = "probabilities"
    output_shape: list[Any] = field(default_factory=lambda: ["batch", 0])
    output_kind: str = "probabilities"  # sigmoid is inside the graph
    schema_version: int = SCHEMA_VERSION
    created: str = ""
    model_file: str = MODEL_FILE
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    min_sonotrap_version: str = __version__
    reference: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["labels"] = [Label(**lab) for lab in data.get("labels", [])]
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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
        return _session(self.model_path, threads)


def _session(model_path: Path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as err:
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise SonotrapError(
            f"model {model_path} does not load in onnxruntime ({first}); re-export or re-download the bundle"
        ) from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- reference / self-test


def default_reference_audio(cfg: FrontendConfig, seed: int = 0) -> list[np.ndarray]:
    """Two deterministic synthetic windows (chirp + tones in noise; quiet noise) for self-tests."""
    rng = np.random.default_rng(seed)
    n = cfg.window_samples
    t = np.arange(n) / cfg.sample_rate
    f0, f1 = max(cfg.fmin, 300.0), min(cfg.fmax, 8000.0)
    chirp = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * cfg.window_s)))
    tones = np.sin(2 * np.pi * 1200.0 * t) * (t < cfg.window_s / 2) + np.sin(2 * np.pi * 4100.0 * t) * (t >= cfg.window_s / 2)
    a = 0.004 * chirp + 0.003 * tones + 0.0005 * rng.standard_normal(n)
    b = 0.001 * rng.standard_normal(n)
    return [a.astype(np.float32), b.astype(np.float32)]


def _unit_from_image(image: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Invert :func:`edge.inference.frontend.to_image` (channel 0) back to the [0, 1] spectrogram."""
    ch0 = np.asarray(image, dtype=np.float32)[0]
    if cfg.normalization == "imagenet":
        ch0 = ch0 * 0.229 + 0.485
    return np.clip(ch0, 0.0, 1.0)


def encode_reference_inputs(images: np.ndarray, cfg: FrontendConfig) -> dict[str, Any]:
    """Store model inputs compactly: the [0, 1] spectrogram as uint8, base64 (~22 kB per window)."""
    units = np.stack([_unit_from_image(img, cfg) for img in images])
    q = np.round(units * 255.0).astype(np.uint8)
    return {
        "encoding": "unit-spectrogram-uint8-base64",
        "shape": list(q.shape),
        "data": base64.b64encode(q.tobytes()).decode("ascii"),
    }


def decode_reference_inputs(reference: dict[str, Any], cfg: FrontendConfig) -> np.ndarray:
    """The exact model inputs ``(N, C, H, W)`` the stored reference outputs were computed on."""
    if reference.get("encoding") != "unit-spectrogram-uint8-base64":
        raise ValueError(f"unknown reference encoding {reference.get('encoding')!r}")
    shape = tuple(int(s) for s in reference["shape"])
    q = np.frombuffer(base64.b64decode(reference["data"]), dtype=np.uint8).reshape(shape)
    return np.stack([to_image(u.astype(np.float32) / 255.0, cfg) for u in q])


def compute_reference(
    model_path: str | Path,
    cfg: FrontendConfig,
    images: np.ndarray | None = None,
    atol: float = REFERENCE_ATOL,
    input_name: str = "input",
) -> dict[str, Any]:
    """Run the model on reference inputs (default: synthetic windows) and return the manifest entry."""
    if images is None:
        images = np.stack([compute(w, cfg.sample_rate, cfg) for w in default_reference_audio(cfg)])
    entry = {"input": encode_reference_inputs(np.asarray(images), cfg)}
    x = decode_reference_inputs(entry["input"], cfg)
    sess = _session(Path(model_path), 1)
    out = sess.run(None, {input_name: x})[0]
    entry["output"] = np.asarray(out, dtype=np.float64).round(6).tolist()
    entry["atol"] = float(atol)
    return entry


# --------------------------------------------------------------------------- writing


def write_bundle(
    out_dir: str | Path,
    model_file: str | Path,
    manifest: Manifest,
    *,
    reference_images: np.ndarray | None = None,
    archive: str | Path | None = None,
) -> Path:
    """Copy the model into ``out_dir``, fill sha256/shapes/self-test reference, write the manifest.

    ``reference_images`` (real windows, ``(N, C, H, W)``) become the self-test input; without
    them deterministic synthetic windows are used. ``archive`` also writes a ``.tar.gz``.
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
    if not manifest.created:
        manifest.created = datetime.now(UTC).isoformat(timespec="seconds")
    cfg = FrontendConfig.from_dict(manifest.frontend)
    manifest.input_shape = ["batch", *cfg.image_shape]
    manifest.output_shape = ["batch", len(manifest.labels)]
    if reference_images is not None or not manifest.reference:
        manifest.reference = compute_reference(target, cfg, reference_images, input_name=manifest.input_name)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    if archive is not None:
        write_archive(out, archive)
    return out


def write_archive(bundle_dir: str | Path, archive: str | Path) -> Path:
    """Pack a bundle directory as a flat ``.tar.gz`` (manifest, model, signature if present)."""
    bundle_dir, archive = Path(bundle_dir), Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for name in BUNDLE_FILES:
            f = bundle_dir / name
            if f.is_file():
                info = tar.gettarinfo(str(f), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(f, "rb") as fh:
                    tar.addfile(info, fh)
    os.replace(tmp, archive)
    return archive


# --------------------------------------------------------------------------- opening .tar.gz


def _cache_root() -> Path:
    base = os.environ.get("SONOTRAP_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    sub = "" if os.environ.get("SONOTRAP_CACHE_DIR") else "sonotrap"
    return Path(base) / sub / "bundles"


def _safe_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Regular files (and a single top folder) only: no links, devices, absolute or ../ paths."""
    members = []
    for m in tar.getmembers():
        name = m.name
        parts = Path(name).parts
        if name.startswith(("/", "\\")) or ".." in parts or len(parts) > 2:
            raise SonotrapError(f"bundle archive {archive} has an unsafe path {name!r}; refuse to unpack it")
        if m.isdir():
            continue
        if not m.isfile():
            raise SonotrapError(f"bundle archive {archive} holds a link or special file {name!r}; refuse to unpack it")
        if m.size > _MAX_ARCHIVE_MEMBER:
            raise SonotrapError(f"bundle archive {archive} member {name!r} is implausibly large ({m.size} bytes)")
        members.append(m)
    return members


def open_bundle_dir(path: str | Path) -> Path:
    """A bundle directory for ``path``: itself, or a safely unpacked copy of a ``.tar.gz``.

    Archives are unpacked once into ``$SONOTRAP_CACHE_DIR`` (default ``~/.cache/sonotrap/bundles``)
    under their own sha256, falling back to a temporary directory when that is not writable.
    The unpacked files are validated like any bundle, so a tampered cache is still caught.
    """
    p = Path(path)
    if p.is_dir():
        return p
    if not p.exists():
        raise SonotrapError(f"model bundle {p} does not exist; point model.bundle at a bundle directory or .tar.gz")
    if not tarfile.is_tarfile(p):
        raise SonotrapError(f"model bundle {p} is neither a directory nor a .tar.gz archive; re-download it")
    digest = sha256_file(p)[:20]
    for root in (_cache_root(), None):
        try:
            if root is not None:
                final = root / digest
                if (final / MANIFEST_FILE).is_file():
                    return _single_top(final)
                root.mkdir(parents=True, exist_ok=True)
                work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
            else:
                work = Path(tempfile.mkdtemp(prefix="sonotrap-bundle-"))
            try:
                with tarfile.open(p, "r:*") as tar:
                    members = _safe_members(tar, p)
                    tar.extractall(work, members=members, filter="data")
            except (tarfile.TarError, OSError, EOFError) as err:
                shutil.rmtree(work, ignore_errors=True)
                if isinstance(err, PermissionError) and root is not None:
                    continue
                raise SonotrapError(f"bundle archive {p} cannot be unpacked ({err}); re-download it") from None
            if root is None:
                return _single_top(work)
            try:
                os.rename(work, final)
            except OSError:  # another process won the race
                shutil.rmtree(work, ignore_errors=True)
            return _single_top(final)
        except PermissionError:
            continue
        except SonotrapError:
            raise
        except OSError:
            if root is None:
                raise
            continue
    raise SonotrapError(f"bundle archive {p} cannot be unpacked anywhere; check disk space and permissions")


def _single_top(d: Path) -> Path:
    if (d / MANIFEST_FILE).exists():
        return d
    subdirs = [c for c in d.iterdir() if c.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / MANIFEST_FILE).exists():
        return subdirs[0]
    return d


# --------------------------------------------------------------------------- loading


def _version_tuple(v: str) -> tuple[int, int, int] | None:
    m = _SEMVER.match(str(v))
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse and structurally check ``manifest.json`` (no model access)."""
    manifest_path = bundle_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise SonotrapError(
            f"model bundle {bundle_dir} has no {MANIFEST_FILE}; point model.bundle at a bundle directory or .tar.gz"
        )
    try:
        data = json.loads(manifest_path.read_text())
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
    except (ValueError, UnicodeDecodeError) as err:
        raise SonotrapError(f"manifest {manifest_path} is corrupt ({err}); re-download the bundle") from None
    schema = data.get("schema_version")
    if schema not in SUPPORTED_SCHEMA_VERSIONS:
        raise SonotrapError(
            f"manifest {manifest_path} has unknown schema version {schema!r} (this sonotrap {__version__} "
            f"reads {list(SUPPORTED_SCHEMA_VERSIONS)}); upgrade sonotrap or use an older bundle"
        )
    missing = [k for k in ("name", "version", "labels", "thresholds", "frontend", "model_sha256") if k not in data]
    if missing:
        raise SonotrapError(f"manifest {manifest_path} lacks {missing}; rebuild the bundle with 'sonotrap quantize'")
    try:
        manifest = Manifest.from_dict(data)
    except TypeError as err:
        raise SonotrapError(f"manifest {manifest_path} has malformed labels ({err}); rebuild the bundle") from None
    if _version_tuple(manifest.version) is None:
        raise SonotrapError(
            f"manifest {manifest_path} version {manifest.version!r} is not a semantic version (like 1.2.0); rebuild the bundle"
        )
    need = _version_tuple(manifest.min_sonotrap_version)
    have = _version_tuple(__version__)
    if need is None or (have is not None and need > have):
        raise SonotrapError(
            f"model {manifest.name} {manifest.version} needs sonotrap >= {manifest.min_sonotrap_version} "
            f"(this is {__version__}); upgrade sonotrap"
        )
    codes = [lab.code for lab in manifest.labels]
    badflag = [lab.code for lab in manifest.labels if not isinstance(lab.enabled, bool)]
    if badflag:
        raise SonotrapError(f"manifest {manifest_path} label {badflag[0]!r} has a non-boolean 'enabled'; rebuild the bundle")
    if not codes or len(set(codes)) != len(codes):
        raise SonotrapError(f"manifest {manifest_path} has no labels or duplicate label codes; rebuild the bundle")
    bad = {k: v for k, v in manifest.thresholds.items() if k not in codes or not isinstance(v, int | float) or not 0.0 < v < 1.0}
    if bad:
        raise SonotrapError(
            f"manifest {manifest_path} has invalid thresholds {dict(list(bad.items())[:3])} "
            "(each must name a label and lie in (0, 1)); rebuild the bundle"
        )
    return manifest


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
        from edge.models.signing import verify_bundle

        signed_by = verify_bundle(p, trusted_keys)
    try:
        frontend = FrontendConfig.from_dict(manifest.frontend)
    except SonotrapError as err:
        raise SonotrapError(f"model bundle {src}: {err}") from None
    bundle = ModelBundle(path=p, manifest=manifest, frontend=frontend, signed_by=signed_by, source=None if p == src else src)
    sess = bundle.create_session(1)
    _check_io(bundle, sess, src)
    if self_test:
        run_self_test(bundle, sess, src)
    bundle.checked_session = sess
    return bundle


def _check_io(bundle: ModelBundle, sess, src: Path) -> None:
    m = bundle.manifest
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    in_names, out_names = [i.name for i in inputs], [o.name for o in outputs]
    if m.input_name not in in_names or m.output_name not in out_names:
        raise SonotrapError(
            f"model in {src} has inputs {in_names} / outputs {out_names}, manifest says "
            f"{m.input_name!r} / {m.output_name!r}; rebuild the bundle"
        )
    shape = next(i.shape for i in inputs if i.name == m.input_name)
    expected = list(bundle.frontend.image_shape)
    if len(shape) != 4 or any(isinstance(s, int) and s != e for s, e in zip(shape[1:], expected, strict=True)):
        raise SonotrapError(
            f"model in {src} takes input {shape} but the frontend makes {['batch', *expected]}; "
            "the bundle's frontend parameters do not match its model, rebuild it"
        )
    out_shape = next(o.shape for o in outputs if o.name == m.output_name)
    k = out_shape[-1] if out_shape else None
    if isinstance(k, int) and k != len(m.labels):
        raise SonotrapError(
            f"model in {src} outputs {k} classes but the manifest lists {len(m.labels)} labels; rebuild the bundle"
        )


def run_self_test(bundle: ModelBundle, sess=None, src: Path | None = None) -> float:
    """Re-run the stored reference input; returns the max abs difference to the stored output."""
    src = src or bundle.path
    ref = bundle.manifest.reference
    if not ref or "input" not in ref or "output" not in ref:
        raise SonotrapError(
            f"model bundle {src} has no self-test reference; rebuild it with 'sonotrap quantize' (or write_bundle)"
        )
    try:
        x = decode_reference_inputs(ref["input"], bundle.frontend)
        expected = np.asarray(ref["output"], dtype=np.float32)
        atol = float(ref.get("atol", REFERENCE_ATOL))
    except (ValueError, KeyError, TypeError) as err:
        raise SonotrapError(f"model bundle {src} has a corrupt self-test reference ({err}); rebuild the bundle") from None
    sess = sess or bundle.create_session(1)
    try:
        got = sess.run([bundle.manifest.output_name], {bundle.manifest.input_name: x})[0]
    except Exception as err:
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise SonotrapError(f"model in {src} fails on its reference input ({first}); rebuild the bundle") from None
    if got.shape[-1] != len(bundle.manifest.labels):
        raise SonotrapError(
            f"model in {src} outputs {got.shape[-1]} classes but the manifest lists "
            f"{len(bundle.manifest.labels)} labels; rebuild the bundle"
        )
    if got.shape != expected.shape:
        raise SonotrapError(f"model in {src} self-test output shape {got.shape} != stored {expected.shape}; rebuild the bundle")
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not diff <= atol:
        raise SonotrapError(
            f"model in {src} fails its self-test: output differs from the stored reference by {diff:.4f} "
            f"(> {atol}); the model or this onnxruntime is broken, re-download the bundle"
        )
    return diff


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
        "metrics": metric_groups(m.metrics),
        "enabled_labels": {
            lab.code: lab.expected_precision for lab in m.labels if lab.enabled
        },
        "disabled_labels": {
            lab.code: {"expected_precision": lab.expected_precision, "reason": lab.disabled_reason}
            for lab in m.labels if not lab.enabled
        },
        "quantization": m.quantization,
    }


def metric_groups(metrics: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """Nested manifest metrics as ``{"training.val": {"macro_ap": 0.44, ...}}`` (scalars only).

    Per-label tables (keys starting ``per_``, ``thresholds``, or any table of more than 24
    entries) are left out: a summary, not a dump.
    """
    out: dict[str, dict[str, Any]] = {}
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}
    if scalars:
        out[prefix or "-"] = scalars
    for k, v in metrics.items():
        if isinstance(v, dict) and not str(k).startswith("per_") and k != "thresholds" and len(v) <= 24:
            out.update(metric_groups(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
