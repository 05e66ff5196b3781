"""Ed25519 bundle signatures: keygen, sign, verify positive and negative (real files, real crypto)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from edge.cli import main
from edge.errors import SonotrapError
from edge.models import signing
from edge.models.archive import write_archive
from edge.models.bundle import load_bundle


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path, str]:
    priv, pub = tmp_path / "keys" / "signer.key", tmp_path / "trusted" / "signer.pub"
    kid = signing.generate_keypair(priv, pub)
    return priv, pub, kid


def test_keygen_writes_private_key_0600_and_refuses_overwrite(keys):
    priv, pub, kid = keys
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert len(kid) == 16
    with pytest.raises(SonotrapError, match="already exists"):
        signing.generate_keypair(priv, pub)


def test_sign_then_verify_with_file_and_directory(tiny_bundle, keys):
    priv, pub, kid = keys
    sig = signing.sign_bundle(tiny_bundle, priv)
    assert sig.name == "manifest.json.sig" and json.loads(sig.read_text())["key_id"] == kid
    assert signing.verify_bundle(tiny_bundle, pub) == kid
    assert signing.verify_bundle(tiny_bundle, pub.parent) == kid
    b = load_bundle(tiny_bundle, trusted_keys=pub.parent, require_signature=True)
    assert b.signed_by == kid


def test_verify_rejects_edited_manifest(tiny_bundle, keys):
    priv, pub, _ = keys
    signing.sign_bundle(tiny_bundle, priv)
    m = tiny_bundle / "manifest.json"
    m.write_text(m.read_text().replace('"version": "1.0.0"', '"version": "9.0.0"'))
    with pytest.raises(SonotrapError, match="bad signature"):
        signing.verify_bundle(tiny_bundle, pub)
    with pytest.raises(SonotrapError, match="bad signature"):
        load_bundle(tiny_bundle, trusted_keys=pub)


def test_verify_rejects_swapped_model(tiny_bundle, keys, tmp_path):
    priv, pub, _ = keys
    signing.sign_bundle(tiny_bundle, priv)
    with open(tiny_bundle / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(SonotrapError, match="sha256"):
        signing.verify_bundle(tiny_bundle, pub)


def test_verify_rejects_untrusted_key(tiny_bundle, keys, tmp_path):
    priv, _pub, _ = keys
    other = tmp_path / "other"
    signing.generate_keypair(other / "o.key", other / "o.pub")
    signing.sign_bundle(tiny_bundle, priv)
    with pytest.raises(SonotrapError, match="not among the trusted keys"):
        signing.verify_bundle(tiny_bundle, other / "o.pub")


def test_forged_signature_with_trusted_key_id_is_rejected(tiny_bundle, keys, tmp_path):
    """An attacker copies the trusted key id into a signature made with their own key."""
    priv, pub, kid = keys
    signing.generate_keypair(tmp_path / "evil.key", tmp_path / "evil.pub")
    signing.sign_bundle(tiny_bundle, tmp_path / "evil.key")
    sig = tiny_bundle / signing.SIGNATURE_FILE
    doc = json.loads(sig.read_text())
    doc["key_id"] = kid
    sig.write_text(json.dumps(doc))
    with pytest.raises(SonotrapError, match="bad signature"):
        signing.verify_bundle(tiny_bundle, pub)


def test_unsigned_bundle(tiny_bundle, keys):
    _, pub, _ = keys
    with pytest.raises(SonotrapError, match="not signed"):
        signing.verify_bundle(tiny_bundle, pub)
    with pytest.raises(SonotrapError, match="not signed"):
        load_bundle(tiny_bundle, trusted_keys=pub, require_signature=True)
    with pytest.raises(SonotrapError, match="no trusted keys"):
        load_bundle(tiny_bundle, require_signature=True)
    assert load_bundle(tiny_bundle, trusted_keys=pub).signed_by is None  # optional signature


def test_corrupt_signature_file(tiny_bundle, keys):
    _, pub, _ = keys
    (tiny_bundle / signing.SIGNATURE_FILE).write_text("{not json")
    with pytest.raises(SonotrapError, match="signature .* is corrupt"):
        signing.verify_bundle(tiny_bundle, pub)


def test_verify_signed_tar_gz(tiny_bundle, keys, tmp_path, monkeypatch):
    monkeypatch.setenv("SONOTRAP_CACHE_DIR", str(tmp_path / "cache"))
    priv, pub, kid = keys
    signing.sign_bundle(tiny_bundle, priv)
    archive = write_archive(tiny_bundle, tmp_path / "b.tar.gz")
    assert signing.verify_bundle(archive, pub) == kid
    assert load_bundle(archive, trusted_keys=pub, require_signature=True).signed_by == kid


def test_cli_keygen_sign_verify(tiny_bundle, tmp_path, capsys):
    priv, pub = tmp_path / "k" / "me.key", tmp_path / "k" / "me.pub"
    assert main(["bundle", "keygen", str(priv)]) == 0
    assert pub.is_file()
    assert main(["bundle", "sign", str(tiny_bundle), "--key", str(priv)]) == 0
    assert main(["bundle", "verify", str(tiny_bundle), "--trusted", str(pub)]) == 0
    assert "OK" in capsys.readouterr().out
    m = tiny_bundle / "manifest.json"
    m.write_text(m.read_text().replace("tone_low", "tone_lox"))
    assert main(["bundle", "verify", str(tiny_bundle), "--trusted", str(pub)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bad signature") and err.count("\n") == 1
