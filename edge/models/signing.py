"""Ed25519 signatures for model bundles.

What is signed: the exact bytes of ``manifest.json``. The manifest pins the model file by
its sha256, so one small signature covers the model too, and re-signing never needs the
(25 MB) model in memory. The signature is detached: ``manifest.json.sig`` next to the
manifest, a small JSON document ``{"format", "algorithm", "key_id", "signature"}`` where
``signature`` is base64 and ``key_id`` is the first 16 hex digits of the sha256 of the raw
public key (so a device can say *which* trusted key vouched for a model).

Keys are files: the private key is PKCS#8 PEM (mode 0600), the public key is
SubjectPublicKeyInfo PEM (``*.pub``). A device trusts a key by having its ``.pub`` file in
its trusted-keys directory (or by being pointed at that one file).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import SonotrapError
from edge.models.archive import check_listed_files, open_bundle_dir
from edge.models.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, manifest_data
from edge.util.hashing import sha256_file

SIGNATURE_FORMAT = "sonotrap-signature/1"
PUBLIC_KEY_SUFFIXES = (".pub", ".pem")


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(private_path: str | Path, public_path: str | Path | None = None) -> str:
    """Write a new ed25519 key pair; returns its key id. Refuses to overwrite a private key."""
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path is not None else private_path.with_suffix(".pub")
    if private_path.exists():
        raise SonotrapError(f"{private_path} already exists; choose another path or delete it first")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_id(key.public_key())


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    if not path.is_file():
        raise SonotrapError(f"private key {path} does not exist; create one with 'sonotrap bundle keygen'")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise SonotrapError(f"private key {path} cannot be read ({err}); pass the file from 'sonotrap bundle keygen'") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SonotrapError(f"private key {path} is not an ed25519 key; create one with 'sonotrap bundle keygen'")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    if not path.is_file():
        raise SonotrapError(f"public key {path} does not exist; copy the signer's .pub file there")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (ValueError, TypeError) as err:
        raise SonotrapError(f"public key {path} cannot be read ({err}); copy the signer's .pub file again") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SonotrapError(f"public key {path} is not an ed25519 key; use a key from 'sonotrap bundle keygen'")
    return key


def load_trusted_keys(trusted: str | Path) -> dict[str, Ed25519PublicKey]:
    """Key id -> key, from one ``.pub`` file or every ``*.pub``/``*.pem`` file in a directory."""
    trusted = Path(trusted)
    if trusted.is_dir():
        files = sorted(p for p in trusted.iterdir() if p.suffix in PUBLIC_KEY_SUFFIXES and p.is_file())
    elif trusted.is_file():
        files = [trusted]
    else:
        raise SonotrapError(
            f"trusted keys {trusted} do not exist; point it at a .pub file or a directory of them"
        )
    keys = {}
    for f in files:
        k = load_public_key(f)
        keys[key_id(k)] = k
    if not keys:
        raise SonotrapError(f"no public keys (*.pub) in {trusted}; copy the signer's .pub file there")
    return keys


def sign_bundle(bundle_dir: str | Path, private_key_path: str | Path) -> Path:
    """Write ``manifest.json.sig`` for the bundle directory; returns the signature path."""
    bundle_dir = Path(bundle_dir)
    manifest = bundle_dir / MANIFEST_FILE
    if not manifest.is_file():
        raise SonotrapError(f"{bundle_dir} has no {MANIFEST_FILE}; sign a bundle directory")
    _check_model_pinned(bundle_dir, manifest.read_bytes())
    key = load_private_key(private_key_path)
    signature = key.sign(manifest.read_bytes())
    doc = {
        "format": SIGNATURE_FORMAT,
        "algorithm": "ed25519",
        "key_id": key_id(key.public_key()),
        "signed_file": MANIFEST_FILE,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    out = bundle_dir / SIGNATURE_FILE
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return out


def read_signature(bundle_dir: str | Path) -> dict:
    """The parsed signature document of a bundle directory (SonotrapError if absent/corrupt)."""
    path = Path(bundle_dir) / SIGNATURE_FILE
    if not path.is_file():
        raise SonotrapError(
            f"bundle {bundle_dir} is not signed (no {SIGNATURE_FILE}); sign it with 'sonotrap bundle sign'"
        )
    try:
        doc = json.loads(path.read_text())
        sig = base64.b64decode(doc["signature"], validate=True)
        if doc.get("algorithm") != "ed25519" or len(sig) != 64:
            raise ValueError("not an ed25519 signature")
        doc["_raw"] = sig
        return doc
    except (ValueError, KeyError, TypeError, binascii.Error) as err:
        raise SonotrapError(f"signature {path} is corrupt ({err}); re-sign or re-download the bundle") from None


def verify_bundle(bundle_dir: str | Path, trusted_keys: str | Path) -> str:
    """Check the bundle's signature against the trusted keys; returns the signing key id.

    Also checks the model file against the sha256 in the (now authenticated) manifest, so a
    successful return means manifest *and* model are exactly what the key holder signed.
    A ``.tar.gz`` bundle is unpacked safely first.
    """
    bundle_dir = Path(bundle_dir)
    if bundle_dir.is_file():
        bundle_dir = open_bundle_dir(bundle_dir)
    manifest = bundle_dir / MANIFEST_FILE
    if not manifest.is_file():
        raise SonotrapError(f"{bundle_dir} has no {MANIFEST_FILE}; point at a bundle directory or .tar.gz")
    doc = read_signature(bundle_dir)
    keys = load_trusted_keys(trusted_keys)
    kid = str(doc.get("key_id", ""))
    candidates = [keys[kid]] if kid in keys else []
    if not candidates:
        raise SonotrapError(
            f"bundle {bundle_dir} is signed by key {kid or '?'}, which is not among the trusted keys "
            f"in {trusted_keys}; add the signer's .pub file there if you trust it"
        )
    data = manifest.read_bytes()
    try:
        candidates[0].verify(doc["_raw"], data)
    except InvalidSignature:
        raise SonotrapError(
            f"bad signature on bundle {bundle_dir}: manifest was modified after signing or signed "
            "by another key; re-download the bundle"
        ) from None
    _check_model_pinned(bundle_dir, data)
    return kid


def _check_model_pinned(bundle_dir: Path, manifest_bytes: bytes) -> None:
    doc = manifest_data(manifest_bytes, bundle_dir / MANIFEST_FILE)
    model_file = str(doc.get("model_file", MODEL_FILE))
    expected = doc.get("model_sha256")
    if not expected:
        raise SonotrapError(f"manifest in {bundle_dir} is corrupt ('model_sha256' missing); re-download the bundle")
    model = bundle_dir / model_file
    if not model.is_file():
        raise SonotrapError(f"model bundle {bundle_dir} lacks {model_file}; re-download the bundle")
    if sha256_file(model) != expected:
        raise SonotrapError(
            f"model {model} fails its sha256 check (corrupt or tampered); re-download the bundle"
        )
    check_listed_files(bundle_dir, doc)
