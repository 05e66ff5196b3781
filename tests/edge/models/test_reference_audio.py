"""Verification runs the frontend and the model on the bundle's recorded reference audio.

Before: the self-test fed the model stored spectrograms and ran the frontend only on synthetic
audio to see that it runs, so a validly signed bundle whose frontend settings differ from the
ones its model was trained with passed every check and classified garbage in the field.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from edge.errors import SonotrapError
from edge.models.archive import extract_archive, write_archive
from edge.models.bundle import describe, load_bundle, write_bundle
from edge.models.manifest import read_manifest
from edge.models.reference_audio import AUDIO_FILE
from edge.models.selftest import has_reference_audio
from edge.models.signing import sign_bundle
from edge.models.verify import verify_in_subprocess
from edge.util.hashing import sha256_file
from tests.support.tiny_model import make_tiny_bundle, tone_windows
from tests.support.update_server import Keys, make_keys


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


@pytest.fixture
def audio_bundle(tmp_path: Path, keys: Keys) -> Path:
    d = make_tiny_bundle(tmp_path / "bundle", reference_audio=tone_windows())
    sign_bundle(d, keys.private)
    return d


def _verify(d: Path, keys: Keys):
    return verify_in_subprocess(d, trusted_keys=keys.public_dir, allow_unsigned=False)


def _edit_manifest(d: Path, keys: Keys, edit) -> None:
    """Change the manifest and re-sign it with the trusted key: the signature stays valid."""
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m, indent=2))
    sign_bundle(d, keys.private)


def test_bundle_lists_and_signs_its_reference_audio_and_verifies(audio_bundle, keys, tmp_path):
    m = json.loads((audio_bundle / "manifest.json").read_text())
    audio = audio_bundle / AUDIO_FILE
    assert m["files"][AUDIO_FILE] == {"size": audio.stat().st_size, "sha256": sha256_file(audio)}
    entry = m["reference"]["audio"]
    assert entry["file"] == AUDIO_FILE and entry["windows"] == 2 and entry["sample_rate"] == 32000
    # the builder's expected outputs: each tone fires its own label
    assert entry["output"][0][0] > 0.9 and entry["output"][1][1] > 0.9
    assert audio.stat().st_size < 400_000
    assert _verify(audio_bundle, keys).version == "1.0.0"
    b = load_bundle(audio_bundle, trusted_keys=keys.public_dir, require_signature=True)
    assert has_reference_audio(b) and "reference audio" in describe(b)["self_test"]
    # the archive carries the member, and an unpacked copy verifies the same way
    archive = write_archive(audio_bundle, tmp_path / "b.tar.gz")
    with tarfile.open(archive) as tar:
        assert AUDIO_FILE in tar.getnames()
    assert _verify(extract_archive(archive, tmp_path / "unpacked"), keys).version == "1.0.0"


@pytest.mark.parametrize("change", [{"fmax": 8000.0}, {"fmin": 900.0}, {"floor_db": -20.0}])
def test_signed_bundle_whose_frontend_does_not_match_its_reference_is_refused(audio_bundle, keys, change):
    _edit_manifest(audio_bundle, keys, lambda m: m["frontend"].update(change))
    with pytest.raises(SonotrapError) as exc:
        _verify(audio_bundle, keys)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "reference audio gives" in msg and "bundle says" in msg and "frontend settings do not match" in msg, msg
    assert "tone_" in msg  # names the label


def test_tampered_reference_audio_is_refused(audio_bundle, keys):
    audio = audio_bundle / AUDIO_FILE
    data = bytearray(audio.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    audio.write_bytes(bytes(data))
    with pytest.raises(SonotrapError, match="sha256") as exc:
        _verify(audio_bundle, keys)
    assert AUDIO_FILE in str(exc.value)
    # the loader alone (no trusted keys) checks it against the listing too
    with pytest.raises(SonotrapError, match="reference audio .* fails its size/sha256 check"):
        load_bundle(audio_bundle)


def test_missing_or_unlisted_reference_audio_is_refused(audio_bundle, keys):
    (audio_bundle / AUDIO_FILE).unlink()
    with pytest.raises(SonotrapError, match="lacks its reference audio"):
        load_bundle(audio_bundle)
    _edit_manifest(audio_bundle, keys, lambda m: m["files"].pop(AUDIO_FILE))
    with pytest.raises(SonotrapError, match="corrupt reference-audio entry .*not listed"):
        _verify(audio_bundle, keys)


def test_old_bundle_without_reference_audio_still_verifies(tmp_path, keys):
    d = make_tiny_bundle(tmp_path / "old")
    sign_bundle(d, keys.private)
    m = json.loads((d / "manifest.json").read_text())
    assert "audio" not in m["reference"] and list(m["files"]) == ["model.onnx"]
    assert _verify(d, keys).version == "1.0.0"
    b = load_bundle(d)
    assert not has_reference_audio(b) and "stored spectrograms only" in describe(b)["self_test"]


def test_rewriting_the_manifest_keeps_the_reference_audio(audio_bundle):
    """Operating points rewrite the manifest through write_bundle: the audio stays listed and checked."""
    m = read_manifest(audio_bundle)
    m.thresholds = {k: 0.7 for k in m.thresholds}
    write_bundle(audio_bundle, audio_bundle / "model.onnx", m)
    again = json.loads((audio_bundle / "manifest.json").read_text())
    assert AUDIO_FILE in again["files"] and again["reference"]["audio"]["file"] == AUDIO_FILE
    assert has_reference_audio(load_bundle(audio_bundle))


@pytest.mark.parametrize("field, value, match", [
    ("windows", 100, "corrupt reference-audio entry"),
    ("window_samples", 1 << 30, "corrupt reference-audio entry"),
    ("output", "abc", "corrupt reference-audio entry"),
    ("sample_rate", 16000, "sampled at 32000 Hz, its manifest entry says 16000 Hz"),
])
def test_malformed_reference_audio_entry_is_one_line(audio_bundle, keys, field, value, match):
    _edit_manifest(audio_bundle, keys, lambda m: m["reference"]["audio"].update({field: value}))
    with pytest.raises(SonotrapError, match=match) as exc:
        _verify(audio_bundle, keys)
    assert "\n" not in str(exc.value)
