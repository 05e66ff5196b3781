"""Model store: verified install in a separate process, atomic current/previous, keep N, rollback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edge.errors import SonotrapError
from edge.models.archive import write_archive
from edge.models.bundle import load_bundle
from edge.models.manifest import version_key
from edge.models.signing import sign_bundle
from edge.models.store import ModelStore
from tests.support.tiny_model import make_tiny_bundle
from tests.support.update_server import make_keys


@pytest.fixture
def keys(tmp_path):
    return make_keys(tmp_path / "keys")


def _signed(tmp_path: Path, keys, version: str, **kw) -> Path:
    d = make_tiny_bundle(tmp_path / f"src-{version}", version=version, **kw)
    sign_bundle(d, keys.private)
    return d


def test_version_order():
    assert version_key("1.10.0") > version_key("1.9.2")
    assert version_key("1.0.0") > version_key("1.0.0-beta")
    assert version_key("2.0.0") > version_key("1.99.99")


def test_install_activate_rollback_and_links_are_atomic_relative(tmp_path, keys):
    store = ModelStore(tmp_path / "state" / "models", keep_versions=3)
    assert store.current() is None and store.list() == []
    m1 = store.install(_signed(tmp_path, keys, "1.0.0"), trusted_keys=keys.public_dir)
    assert store.current() is None, "install alone must not switch"
    store.activate(m1.version)
    m2 = store.install(write_archive(_signed(tmp_path, keys, "1.1.0"), tmp_path / "b.tar.gz"),
                       trusted_keys=keys.public_dir)
    old, new = store.activate(m2.version)
    assert (old.version, new.version) == ("1.0.0", "1.1.0")
    # links are relative names of sibling dirs and the daemon's path loads the right bundle
    assert os.readlink(store.root / "current") == "tiny-band-detector-1.1.0"
    assert os.readlink(store.root / "previous") == "tiny-band-detector-1.0.0"
    assert load_bundle(store.current_path(), self_test=False).version == "1.1.0"
    listed = {m.version: (m.current, m.previous) for m in store.list()}
    assert listed == {"1.0.0": (False, True), "1.1.0": (True, False)}
    assert store.current().key_id is not None
    # rollback swaps current and previous; twice is back where we were
    frm, to = store.rollback()
    assert (frm.version, to.version) == ("1.1.0", "1.0.0")
    assert load_bundle(store.current_path(), self_test=False).version == "1.0.0"
    store.rollback()
    assert store.current().version == "1.1.0"
    assert not list(store.root.glob(".current.tmp*")) and not list(store.root.glob(".staging-*"))


def test_keep_versions_never_deletes_current_or_previous(tmp_path, keys):
    store = ModelStore(tmp_path / "models", keep_versions=1)
    for v in ("1.0.0", "1.1.0"):
        store.install(_signed(tmp_path, keys, v), trusted_keys=keys.public_dir)
        store.activate(v)
    # keep_versions=1, yet both current and previous survive pruning
    assert {m.version for m in store.list()} == {"1.0.0", "1.1.0"}
    store.install(_signed(tmp_path, keys, "1.2.0"), trusted_keys=keys.public_dir)
    assert len(store.list()) == 3, "installing alone prunes nothing"
    store.activate("1.2.0")
    assert {m.version for m in store.list()} == {"1.1.0", "1.2.0"}
    store.rollback()  # current 1.1.0, previous 1.2.0
    store.install(_signed(tmp_path, keys, "1.3.0"), trusted_keys=keys.public_dir)
    store.activate("1.3.0")  # previous becomes 1.1.0; 1.2.0 goes
    assert {(m.version, m.current, m.previous) for m in store.list()} == {("1.1.0", False, True), ("1.3.0", True, False)}


def test_rejected_bundles_never_enter_the_store(tmp_path, keys):
    store = ModelStore(tmp_path / "models")
    good = store.install(_signed(tmp_path, keys, "1.0.0"), trusted_keys=keys.public_dir)
    store.activate(good.version)

    unsigned = make_tiny_bundle(tmp_path / "unsigned", version="1.1.0")
    with pytest.raises(SonotrapError, match="not signed"):
        store.install(unsigned, trusted_keys=keys.public_dir)

    other = make_keys(tmp_path / "other", "rogue")
    with pytest.raises(SonotrapError, match="not among the trusted keys"):
        store.install(_signed(tmp_path / "o", other, "1.2.0"), trusted_keys=keys.public_dir)

    tampered = _signed(tmp_path / "t", keys, "1.3.0")
    m = json.loads((tampered / "manifest.json").read_text())
    m["thresholds"]["tone_low"] = 0.01
    (tampered / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SonotrapError, match="bad signature"):
        store.install(tampered, trusted_keys=keys.public_dir)

    crash = _signed(tmp_path / "c", keys, "1.4.0")
    (crash / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf" * 10)
    m = json.loads((crash / "manifest.json").read_text())
    from edge.util.hashing import sha256_file

    m["model_sha256"] = sha256_file(crash / "model.onnx")
    m["files"]["model.onnx"] = {"size": (crash / "model.onnx").stat().st_size, "sha256": m["model_sha256"]}
    (crash / "manifest.json").write_text(json.dumps(m))
    sign_bundle(crash, keys.private)
    with pytest.raises(SonotrapError, match="does not load in onnxruntime"):
        store.install(crash, trusted_keys=keys.public_dir)

    assert [x.version for x in store.list()] == ["1.0.0"]
    assert store.current().version == "1.0.0"
    assert not list(store.root.glob(".staging-*"))


def test_allow_unsigned_still_rejects_a_bad_signature(tmp_path, keys):
    store = ModelStore(tmp_path / "models")
    unsigned = make_tiny_bundle(tmp_path / "unsigned", version="1.1.0")
    assert store.install(unsigned, trusted_keys=None, allow_unsigned=True).version == "1.1.0"
    bad = _signed(tmp_path, make_keys(tmp_path / "r", "rogue"), "1.2.0")
    with pytest.raises(SonotrapError, match="not among the trusted keys"):
        store.install(bad, trusted_keys=keys.public_dir, allow_unsigned=True)


def test_same_version_different_model_is_refused(tmp_path, keys):
    store = ModelStore(tmp_path / "models")
    store.install(_signed(tmp_path, keys, "1.0.0"), trusted_keys=keys.public_dir)
    again = store.install(_signed(tmp_path / "again", keys, "1.0.0"), trusted_keys=keys.public_dir)
    assert again.version == "1.0.0"  # identical model: no-op
    other = _signed(tmp_path / "x", keys, "1.0.0", bands={"tone_low": (900.0, 1500.0), "tone_high": (3800.0, 4400.0)})
    with pytest.raises(SonotrapError, match="already installed with a different model"):
        store.install(other, trusted_keys=keys.public_dir)


def test_archive_with_a_symlink_is_refused(tmp_path, keys):
    import tarfile

    src = _signed(tmp_path, keys, "1.0.0")
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(src / "manifest.json", arcname="manifest.json")
        info = tarfile.TarInfo("model.onnx")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    store = ModelStore(tmp_path / "models")
    with pytest.raises(SonotrapError, match="not a plain file"):
        store.install(evil, trusted_keys=keys.public_dir)


def test_rollback_without_previous_and_unknown_version(tmp_path, keys):
    store = ModelStore(tmp_path / "models")
    with pytest.raises(SonotrapError, match="no previous model"):
        store.rollback()
    with pytest.raises(SonotrapError, match="not installed"):
        store.activate("9.9.9")


def test_daemon_uses_the_store_when_no_model_is_configured(tmp_path, keys):
    """model.bundle unset: the shipped demo model until the store has a `current`, then the store."""
    from edge.config import Config
    from edge.models.bundle import DEFAULT_BUNDLE
    from edge.service.daemon import model_bundle_path

    cfg = Config()
    cfg.state_dir = str(tmp_path / "state")
    assert model_bundle_path(cfg) == DEFAULT_BUNDLE
    store = ModelStore(tmp_path / "state" / "models")
    store.activate(store.install(_signed(tmp_path, keys, "2.0.0"), trusted_keys=keys.public_dir).version)
    assert load_bundle(model_bundle_path(cfg), self_test=False).version == "2.0.0"
    cfg.model.bundle = str(DEFAULT_BUNDLE)  # an explicit setting always wins
    assert model_bundle_path(cfg) == DEFAULT_BUNDLE
