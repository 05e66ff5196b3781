"""Bundle loading: every validation error is triggered for real and asserted by its message."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.errors import SonotrapError
from edge.inference.frontend import FrontendConfig, compute, to_image
from edge.models import bundle as B
from edge.models.archive import write_archive
from edge.models.manifest import read_manifest
from edge.models.selftest import decode_reference_inputs, encode_reference_inputs, run_self_test
from edge.util.hashing import sha256_file
from tests.support.tiny_model import band_model_bytes, make_tiny_bundle, tone


def _edit(bundle_dir: Path, **changes) -> None:
    m = bundle_dir / "manifest.json"
    data = json.loads(m.read_text())
    data.update(changes)
    m.write_text(json.dumps(data))


def _err(path, **kw) -> str:
    with pytest.raises(SonotrapError) as info:
        B.load_bundle(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_valid_directory_bundle_loads_and_runs(tiny_bundle):
    b = B.load_bundle(tiny_bundle)
    assert b.labels == ["tone_low", "tone_high"] and b.names["tone_low"] == "tone low"
    assert b.frontend == FrontendConfig() and b.version == "1.0.0" and b.name == "tiny-band-detector"
    x = compute(tone(1200.0, 2.0, 48000), 48000, b.frontend)[None]
    p = b.create_session(2).run(None, {"input": x})[0][0]
    assert p[0] > 0.9 and p[1] < 0.1
    assert run_self_test(b) < 1e-5


def test_tar_gz_bundle_loads_and_is_cached(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("SONOTRAP_CACHE_DIR", str(tmp_path / "cache"))
    archive = write_archive(tiny_bundle, tmp_path / "tiny.tar.gz")
    b1 = B.load_bundle(archive)
    b2 = B.load_bundle(archive)
    assert b1.path == b2.path and b1.path.is_relative_to(tmp_path / "cache") and b1.source == archive
    assert b1.labels == ["tone_low", "tone_high"]


def test_tar_gz_with_top_folder_loads(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("SONOTRAP_CACHE_DIR", str(tmp_path / "cache"))
    archive = tmp_path / "nested.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_bundle, arcname="tiny-1.0.0")
    assert B.load_bundle(archive).version == "1.0.0"


def test_tar_with_path_traversal_is_refused(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("SONOTRAP_CACHE_DIR", str(tmp_path / "cache"))
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_bundle / "manifest.json", arcname="manifest.json")
        data = b"owned"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert "unsafe path" in _err(archive)
    assert not (tmp_path / "escaped.txt").exists()


def test_tar_with_symlink_is_refused(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("SONOTRAP_CACHE_DIR", str(tmp_path / "cache"))
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("model.onnx")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    assert "link or special file" in _err(archive)


def test_not_a_bundle(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello")
    assert "neither a directory nor a .tar.gz" in _err(junk)
    assert "does not exist" in _err(tmp_path / "nope")


def test_missing_manifest(tiny_bundle):
    (tiny_bundle / "manifest.json").unlink()
    assert "has no manifest.json" in _err(tiny_bundle)


def test_missing_model_file(tiny_bundle):
    (tiny_bundle / "model.onnx").unlink()
    assert "lacks model.onnx" in _err(tiny_bundle)


def test_checksum_mismatch(tiny_bundle):
    with open(tiny_bundle / "model.onnx", "ab") as fh:
        fh.write(b"x")
    assert "fails its sha256 check" in _err(tiny_bundle)


def test_corrupt_manifest(tiny_bundle):
    (tiny_bundle / "manifest.json").write_text("{")
    assert "is corrupt" in _err(tiny_bundle)


def test_unknown_schema_version(tiny_bundle):
    _edit(tiny_bundle, schema_version=2)
    msg = _err(tiny_bundle)
    assert "unknown schema version 2" in msg and "upgrade sonotrap" in msg


def test_newer_sonotrap_required(tiny_bundle):
    _edit(tiny_bundle, min_sonotrap_version="99.0.0")
    assert "needs sonotrap >= 99.0.0" in _err(tiny_bundle)


def test_bad_semver(tiny_bundle):
    _edit(tiny_bundle, version="v2")
    assert "not a semantic version" in _err(tiny_bundle)


def test_label_count_differs_from_model_output(tiny_bundle):
    data = json.loads((tiny_bundle / "manifest.json").read_text())
    _edit(tiny_bundle, labels=data["labels"] + [{"code": "extra", "name": "extra"}])
    msg = _err(tiny_bundle)
    assert "outputs 2 classes but the manifest lists 3 labels" in msg


def test_label_count_checked_for_dynamic_output_too(tmp_path):
    """A model whose output width is not declared statically is caught by the self-test run."""
    import onnx

    d = make_tiny_bundle(tmp_path / "dyn")
    model = onnx.load(d / "model.onnx")
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "k"
    onnx.save(model, d / "model.onnx")
    data = json.loads((d / "manifest.json").read_text())
    _edit(d, model_sha256=sha256_file(d / "model.onnx"), labels=data["labels"][:1], thresholds={"tone_low": 0.5})
    assert "outputs 2 classes but the manifest lists 1 labels" in _err(d)


def test_frontend_edge_cannot_honour(tiny_bundle):
    data = json.loads((tiny_bundle / "manifest.json").read_text())
    _edit(tiny_bundle, frontend=data["frontend"] | {"pcen": True})
    assert "unknown to this sonotrap version" in _err(tiny_bundle)
    _edit(tiny_bundle, frontend=data["frontend"] | {"version": 7})
    assert "frontend version 7 is not supported" in _err(tiny_bundle)
    _edit(tiny_bundle, frontend=data["frontend"] | {"fmax": 30000.0})
    assert "invalid frontend parameters" in _err(tiny_bundle)


def test_frontend_that_does_not_match_model_input(tmp_path):
    d = make_tiny_bundle(tmp_path / "b")
    data = json.loads((d / "manifest.json").read_text())
    _edit(d, frontend=data["frontend"] | {"n_frames": 64})
    assert "takes input" in _err(d)


def test_model_that_does_not_load_in_onnxruntime(tiny_bundle):
    (tiny_bundle / "model.onnx").write_bytes(b"this is not an onnx model")
    _edit(tiny_bundle, model_sha256=sha256_file(tiny_bundle / "model.onnx"))
    assert "does not load in onnxruntime" in _err(tiny_bundle)


def test_wrong_io_names(tiny_bundle):
    _edit(tiny_bundle, input_name="image")
    assert "manifest says 'image'" in _err(tiny_bundle)


def test_self_test_mismatch(tmp_path):
    """Swap in a model with different weights and re-pin its hash: only the self-test notices."""
    d = make_tiny_bundle(tmp_path / "b")
    cfg = FrontendConfig()
    from tests.support.tiny_model import DEFAULT_BANDS

    swapped = {"tone_low": (5000.0, 6000.0), "tone_high": DEFAULT_BANDS["tone_high"]}
    (d / "model.onnx").write_bytes(band_model_bytes(cfg, swapped))
    _edit(d, model_sha256=sha256_file(d / "model.onnx"))
    msg = _err(d)
    assert "fails its self-test" in msg and "re-download the bundle" in msg
    assert B.load_bundle(d, self_test=False).labels == ["tone_low", "tone_high"]
    # An INT8 bundle with full-range weights: the likely cause is this CPU's integer kernels.
    _edit(d, quantization={"weight_type": "int8", "reduce_range": False})
    msg = _err(d)
    assert "full 8-bit range" in msg and "without VNNI" in msg and "rebuild it with sonotrap quantize" in msg


def test_missing_reference(tiny_bundle):
    _edit(tiny_bundle, reference={})
    assert "no self-test reference" in _err(tiny_bundle)


def test_bad_thresholds(tiny_bundle):
    _edit(tiny_bundle, thresholds={"tone_low": 1.5})
    assert "invalid thresholds" in _err(tiny_bundle)
    _edit(tiny_bundle, thresholds={"nope": 0.5})
    assert "invalid thresholds" in _err(tiny_bundle)


def test_reference_round_trip_is_exact():
    cfg = FrontendConfig()
    rng = np.random.default_rng(1)
    units = np.round(rng.random((2, 128, 128)) * 255) / 255
    images = np.stack([to_image(u.astype(np.float32), cfg) for u in units])
    back = decode_reference_inputs(encode_reference_inputs(images, cfg), cfg)
    assert np.abs(back - images).max() < 1e-5


def test_rewriting_a_bundle_drops_stale_signature(tiny_bundle, tmp_path):
    from edge.models.signing import SIGNATURE_FILE, generate_keypair, sign_bundle

    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    sign_bundle(tiny_bundle, tmp_path / "k.key")
    m = read_manifest(tiny_bundle)
    m.version = "1.0.1"
    B.write_bundle(tiny_bundle, tiny_bundle / "model.onnx", m)
    assert not (tiny_bundle / SIGNATURE_FILE).exists()


def test_cli_inspect(tiny_bundle, capsys):
    assert main(["bundle", "inspect", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert "tiny-band-detector 1.0.0" in out and "self-test OK" in out
    assert main(["bundle", "inspect", str(tiny_bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == 2
    (tiny_bundle / "model.onnx").write_bytes(b"x")
    assert main(["bundle", "inspect", str(tiny_bundle)]) == 2
    assert "sha256" in capsys.readouterr().err
