"""Model bundles: ``model.onnx`` + ``manifest.json`` (+ optional signature), dir or .tar.gz.

The format is documented in ``models/README.md``. Loading validates everything a field
recorder must be able to trust and fails with one clear line per problem.

NOTE: minimal foundation version; validation, signing, tar.gz and self-test are extended
by the bundle work (issue 3) without changing this interface.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge import __version__
from edge.errors import SonotrapError
from edge.frontend import FrontendConfig

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "models" / "demo"


@dataclass
class Label:
    code: str  # e.g. "Erirub_song"
    name: str  # human name, e.g. "European robin (song)"


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
    def version(self) -> str:
        return self.manifest.version

    @property
    def name(self) -> str:
        return self.manifest.name

    def create_session(self, threads: int = 1):
        """An onnxruntime session for this model (CPU, ``threads`` intra-op threads)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return ort.InferenceSession(
                str(self.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as err:
            raise SonotrapError(
                f"model {self.model_path} does not load in onnxruntime "
                f"({str(err).splitlines()[0][:160]}); re-export or re-download the bundle"
            ) from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(out_dir: str | Path, model_file: str | Path, manifest: Manifest) -> Path:
    """Copy the model into ``out_dir`` and write the manifest (sha256 filled in)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / MODEL_FILE
    if Path(model_file).resolve() != target.resolve():
        shutil.copyfile(model_file, target)
    manifest.model_file = MODEL_FILE
    manifest.model_sha256 = sha256_file(target)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return out


def load_bundle(path: str | Path | None = None) -> ModelBundle:
    """Load and validate a bundle directory; ``None`` = the shipped demo model."""
    p = Path(path) if path is not None else DEFAULT_BUNDLE
    manifest_path = p / MANIFEST_FILE
    if not manifest_path.is_file():
        raise SonotrapError(
            f"model bundle {p} has no {MANIFEST_FILE}; point model.bundle at a bundle directory"
        )
    try:
        manifest = Manifest.from_dict(json.loads(manifest_path.read_text()))
    except (ValueError, TypeError) as err:
        raise SonotrapError(f"manifest {manifest_path} is corrupt ({err}); re-download the bundle") from None
    model_path = p / manifest.model_file
    if not model_path.is_file():
        raise SonotrapError(f"model bundle {p} lacks {manifest.model_file}; re-download the bundle")
    if sha256_file(model_path) != manifest.model_sha256:
        raise SonotrapError(
            f"model {model_path} fails its sha256 check (corrupt or tampered); re-download the bundle"
        )
    return ModelBundle(path=p, manifest=manifest, frontend=FrontendConfig.from_dict(manifest.frontend))
