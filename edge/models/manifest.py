"""``manifest.json``: the one parser of a bundle's manifest, its file names and its versions.

The manifest is what a signature covers and what every later check trusts, so it is read in
one place with one set of rules: the loader, the signature check, the store and the updater
all come here. The format is documented in ``models/README.md``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge import __version__
from edge.errors import SonotrapError, shown

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
SIGNATURE_FILE = "manifest.json.sig"
BUNDLE_FILES = (MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE)
MAX_MANIFEST_BYTES = 4 << 20  # a manifest with its self-test reference is ~150 kB
REQUIRED_FIELDS = ("name", "version", "labels", "thresholds", "frontend", "model_sha256")
_FIELD_TYPES: dict[str, type] = {
    "name": str, "version": str, "labels": list, "thresholds": dict, "frontend": dict, "model_sha256": str,
    "model_file": str, "files": dict, "reference": dict, "min_sonotrap_version": str,
}
_TYPE_NAMES: dict[type, str] = {str: "string", list: "list", dict: "JSON object"}
SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a plain file name: no path, no dot-dot
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.-]+)?$")


@dataclass
class Label:
    code: str  # e.g. "Erirub_song": the stable id in payloads, configs and Home Assistant
    name: str  # display name, e.g. "European Robin (Erithacus rubecula) song"
    scientific_name: str = ""  # from the training's species table, when it had one
    common_name: str = ""
    group: str = ""  # bird, insect, frog, ...
    # Operating point measured on validation recordings: a label whose threshold cannot be
    # trusted to reach the target precision on new recordings ships disabled (the detector
    # publishes it only when the operator enables it), with the measured figure and the reason.
    enabled: bool = True
    expected_precision: float | None = None
    expected_recall: float | None = None
    disabled_reason: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Label:
        """Unknown keys are ignored: a newer bundle's extra label fields do not stop an older edge."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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
    # every file besides the manifest and its signature: name -> {"size", "sha256"}, so the
    # signature covers every byte of the bundle (see edge.models.archive.listed_files)
    files: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["labels"] = [Label.from_dict(lab) for lab in data.get("labels", [])]
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# --------------------------------------------------------------------------- versions


def version_tuple(v: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a semantic version; None when ``v`` is not one."""
    m = _SEMVER.match(str(v))
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def version_key(version: str) -> tuple:
    """Sort key for semantic versions ('1.10.0' > '1.9.2'; '1.0.0-beta' < '1.0.0')."""
    core, _, pre = version.partition("-")
    parts = []
    for piece in re.split(r"[.+]", core):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    return (tuple(parts), 1 if not pre else 0, pre)


# --------------------------------------------------------------------------- reading


def manifest_data(raw: bytes, where: str | Path) -> dict[str, Any]:
    """The manifest's bytes as a JSON object (no field checks); SonotrapError naming ``where``."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise SonotrapError(f"manifest {where} is larger than {MAX_MANIFEST_BYTES} bytes; it is not a sonotrap manifest")
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
    except (ValueError, UnicodeDecodeError) as err:
        raise SonotrapError(f"manifest {where} is corrupt ({str(err)[:120]}); re-download the bundle") from None
    except RecursionError:
        raise SonotrapError(f"manifest {where} is corrupt (nested too deeply); re-download the bundle") from None
    return data


def read_manifest_data(bundle_dir: str | Path) -> dict[str, Any]:
    """The JSON object in ``<bundle_dir>/manifest.json`` (no field checks)."""
    path = Path(bundle_dir) / MANIFEST_FILE
    if not path.is_file():
        raise SonotrapError(
            f"model bundle {bundle_dir} has no {MANIFEST_FILE}; point model.bundle at a bundle directory or .tar.gz"
        )
    return manifest_data(path.read_bytes(), path)


def parse_manifest(data: dict[str, Any], where: str | Path) -> Manifest:
    """Structural checks of a manifest object: schema, fields, versions, labels, thresholds."""
    schema = data.get("schema_version")
    if schema not in SUPPORTED_SCHEMA_VERSIONS:
        raise SonotrapError(
            f"manifest {where} has unknown schema version {shown(schema)} (this sonotrap {__version__} "
            f"reads {list(SUPPORTED_SCHEMA_VERSIONS)}); upgrade sonotrap or use an older bundle"
        )
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise SonotrapError(f"manifest {where} lacks {missing}; rebuild the bundle with 'sonotrap quantize'")
    for key, kind in _FIELD_TYPES.items():
        if key in data and not isinstance(data[key], kind) and (key in REQUIRED_FIELDS or data[key] is not None):
            raise SonotrapError(
                f"manifest {where} field {key!r} is a {type(data[key]).__name__}, not a {_TYPE_NAMES[kind]}; "
                "rebuild the bundle"
            )
    if not all(isinstance(lab, dict) and isinstance(lab.get("code"), str) and lab["code"] for lab in data["labels"]):
        raise SonotrapError(f"manifest {where} has labels that are not objects with a 'code' string; rebuild the bundle")
    model_file = data.get("model_file", MODEL_FILE)
    if not isinstance(model_file, str) or not SAFE_FILE_NAME.fullmatch(model_file):
        raise SonotrapError(
            f"manifest {where} model_file {shown(model_file)} is not a plain file name in the bundle; rebuild the bundle"
        )
    try:
        manifest = Manifest.from_dict(data)
    except TypeError as err:
        raise SonotrapError(f"manifest {where} has malformed labels ({err}); rebuild the bundle") from None
    if version_tuple(manifest.version) is None:
        raise SonotrapError(
            f"manifest {where} version {shown(manifest.version)} is not a semantic version (like 1.2.0); rebuild the bundle"
        )
    need = version_tuple(manifest.min_sonotrap_version)
    have = version_tuple(__version__)
    if need is None or (have is not None and need > have):
        raise SonotrapError(
            f"model {shown(manifest.name, quote=False)} {shown(manifest.version, quote=False)} needs sonotrap >= "
            f"{shown(manifest.min_sonotrap_version, quote=False)} "
            f"(this is {__version__}); upgrade sonotrap"
        )
    codes = [lab.code for lab in manifest.labels]
    badflag = [lab.code for lab in manifest.labels if not isinstance(lab.enabled, bool)]
    if badflag:
        raise SonotrapError(f"manifest {where} label {shown(badflag[0])} has a non-boolean 'enabled'; rebuild the bundle")
    if not codes or len(set(codes)) != len(codes):
        raise SonotrapError(f"manifest {where} has no labels or duplicate label codes; rebuild the bundle")
    bad = {k: v for k, v in manifest.thresholds.items() if k not in codes or not isinstance(v, int | float) or isinstance(v, bool) or not 0.0 < v < 1.0}
    if bad:
        raise SonotrapError(
            f"manifest {where} has invalid thresholds {shown(dict(list(bad.items())[:3]), 120)} "
            "(each must name a label and lie in (0, 1)); rebuild the bundle"
        )
    return manifest


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Parse and structurally check ``<bundle_dir>/manifest.json`` (no model access)."""
    return parse_manifest(read_manifest_data(bundle_dir), Path(bundle_dir) / MANIFEST_FILE)


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` (indented, as the signature will cover these exact bytes)."""
    path = Path(bundle_dir) / MANIFEST_FILE
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return path
