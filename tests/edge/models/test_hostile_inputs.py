"""Hostile bundles, indexes, commands and update folders end in one clear error, never more.

Each case was found by an adversarial review: a manifest with thresholds as a string, a
command with ``{"size": "abc"}``, an index with ``size``/``channels`` of the wrong type, a
signed archive carrying extra members, and a local update folder holding a symlink to
``/dev/zero``, a FIFO or a symlinked secret.
"""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from edge.errors import SonotrapError
from edge.models.archive import extract_archive
from edge.models.manifest import parse_manifest, read_manifest_data
from edge.models.store import ModelStore
from edge.models.update.commands import parse_command
from edge.models.update.procedure import Updater
from tests.support.update_server import BundleServer, events, make_cfg, publish_bundle


def test_manifest_fields_of_the_wrong_type_are_one_line_errors(env):
    data = read_manifest_data(env["v1"].dir)
    for key, bad in [("thresholds", "0.5"), ("labels", "tone_low"), ("frontend", 3), ("version", 1)]:
        with pytest.raises(SonotrapError, match=key) as exc:
            parse_manifest({**data, key: bad}, "m.json")
        assert "\n" not in str(exc.value)
    with pytest.raises(SonotrapError, match="thresholds"):
        parse_manifest({**data, "thresholds": {"tone_low": "0.5"}}, "m.json")


@pytest.mark.parametrize("payload, what", [
    (b'{"size": "abc", "url": "http://x/a.tar.gz"}', "size"),
    (b'{"size": -1, "version": "1.2.0"}', "size"),
    (b'{"version": 12}', "version"),
    (b'{"url": ["http://x"]}', "url"),
    (b'{"version": "1.2.0", "sha256": "zz"}', "sha256"),
])
def test_command_fields_of_the_wrong_type_are_rejected(env, payload, what):
    with pytest.raises(SonotrapError, match=what):
        parse_command(payload)
    seen, report = events()
    res = Updater(make_cfg(env, allowed_base_urls=["http://x/"]), report=report).run_command(payload)
    assert res.result == "rejected" and what in res.reason
    assert seen[-1][0] == "update_rejected"


@pytest.mark.parametrize("index, what", [
    ({"channels": {"stable": {"version": "1.1.0", "url": "a.tar.gz", "size": "abc"}}}, "size"),
    ({"channels": {"stable": {"version": "1.1.0", "url": "a.tar.gz", "size": 1.5}}}, "size"),
    ({"channels": ["stable"]}, "channels"),
    ({"channels": {"stable": {"version": 1.1, "url": "a.tar.gz"}}}, "version"),
    (["not", "an", "object"], "JSON object"),
])
def test_index_fields_of_the_wrong_type_are_one_line_errors(env, index, what):
    (env["srv"] / "index.json").write_text(json.dumps(index))
    with BundleServer(env["srv"]) as server:
        res = Updater(make_cfg(env, server.url)).update()
    assert res.result == "failed" and what in res.reason and "\n" not in res.reason
    assert env["store"].current().version == "1.0.0"


def _repack(src_dir, archive, extra: dict[str, bytes]) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(src_dir.iterdir()):
            tar.add(f, arcname=f.name)
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_signed_archive_with_unlisted_members_is_refused_before_writing(env, tmp_path):
    v1 = env["v1"]
    archive = tmp_path / "padded.tar.gz"
    _repack(v1.dir, archive, {"padding.bin": b"\0" * 100_000})
    with pytest.raises(SonotrapError, match="does not list"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    store = ModelStore(tmp_path / "models")
    with pytest.raises(SonotrapError, match="does not list"):
        store.install(archive, trusted_keys=env["keys"].public_dir)
    assert store.list() == []


def test_archive_member_with_another_size_than_listed_is_refused(env, tmp_path):
    d = env["v1"].dir
    archive = tmp_path / "grown.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(d.iterdir()):
            if f.name == "model.onnx":
                data = f.read_bytes() + b"\0" * 1000
                info = tarfile.TarInfo(f.name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.add(f, arcname=f.name)
    with pytest.raises(SonotrapError, match="its manifest says"):
        extract_archive(archive, tmp_path / "out")


def test_bundle_writer_lists_every_file(env, tmp_path):
    d = env["v1"].dir
    m = json.loads((d / "manifest.json").read_text())
    assert m["files"]["model.onnx"]["size"] == (d / "model.onnx").stat().st_size  # the writer lists it
    store = ModelStore(tmp_path / "models")
    assert store.install(d, trusted_keys=env["keys"].public_dir).version == "1.0.0"


def test_local_folder_symlink_to_dev_zero_and_fifo_are_skipped(env, tmp_path):
    usb = tmp_path / "usb"
    usb.mkdir()
    os.symlink("/dev/zero", usb / "zero-9.0.0.tar.gz")
    os.mkfifo(usb / "fifo-9.1.0.tar.gz")
    seen, report = events()
    up = Updater(make_cfg(env, local_dir=str(usb)), report=report)
    res = up.update()
    assert res.result == "up-to-date" and env["store"].current().version == "1.0.0"
    # the same files named by an index are refused with one line, not read
    (usb / "index.json").write_text(json.dumps({"channels": {
        "stable": {"version": "9.0.0", "url": "zero-9.0.0.tar.gz"},
        "beta": {"version": "9.1.0", "url": "fifo-9.1.0.tar.gz"},
        "alpha": {"version": "9.2.0", "url": "../srv/tiny-band-detector-1.0.0.tar.gz"}}}))
    for channel, why in [("stable", "link or special file"), ("beta", "link or special file"),
                         ("alpha", "outside the update folder")]:
        res = up.update(channel=channel)
        assert res.result == "rejected" and why in res.reason, res.reason
    assert env["store"].current().version == "1.0.0"


def test_symlinked_secret_in_a_bundle_folder_is_not_copied(env, tmp_path):
    usb = tmp_path / "usb"
    (tmp_path / "arch").mkdir()
    v2 = publish_bundle(tmp_path / "w", tmp_path / "arch", "1.1.0", env["keys"].private)
    bundle = usb / "tiny-1.1.0"
    bundle.parent.mkdir()
    v2.dir.rename(bundle)
    secret = tmp_path / "secret.txt"
    secret.write_text("root password")
    os.symlink(secret, bundle / "notes.txt")  # not listed: never copied
    store = ModelStore(tmp_path / "models")
    stored = store.install(bundle, trusted_keys=env["keys"].public_dir)
    assert not (store.root / stored.dirname / "notes.txt").exists()
    (bundle / "manifest.json.sig").rename(bundle / "sig")
    os.symlink(secret, bundle / "manifest.json.sig")  # a covered name that is a link: refused
    with pytest.raises(SonotrapError, match="link or special file"):
        ModelStore(tmp_path / "models2").install(bundle, trusted_keys=env["keys"].public_dir)


def test_only_the_archive_module_opens_tar_files():
    from tests.support.paths import REPO

    users = [p.relative_to(REPO).as_posix() for d in ("edge", "trainer", "bench", "scripts")
             for p in (REPO / d).rglob("*.py") if "tarfile" in p.read_text()]
    assert users == ["edge/models/archive.py"], users
