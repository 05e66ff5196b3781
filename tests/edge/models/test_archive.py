"""The one archive extractor: every unsafe shape is refused before anything is written."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from edge.errors import SonotrapError
from edge.models.archive import extract_archive, read_manifest_bytes, write_archive


def _tar(path: Path, members: dict[str, bytes], dirs: tuple[str, ...] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_flat_and_one_top_folder_unpack(tmp_path):
    flat = _tar(tmp_path / "flat.tar.gz", {"manifest.json": b"{}", "model.onnx": b"m"}, dirs=(".",))
    assert extract_archive(flat, tmp_path / "a") == tmp_path / "a"
    nested = _tar(tmp_path / "nested.tar.gz", {"b-1.0.0/manifest.json": b"{}"}, dirs=("b-1.0.0",))
    root = extract_archive(nested, tmp_path / "b")
    assert root == tmp_path / "b" / "b-1.0.0" and (root / "manifest.json").read_bytes() == b"{}"


@pytest.mark.parametrize(
    "members, message",
    [
        ({"../x": b"1"}, "unsafe path"),
        ({"/etc/x": b"1"}, "unsafe path"),
        ({"a/b/c": b"1"}, "unsafe path"),
        ({"a/manifest.json": b"1", "b/model.onnx": b"2"}, "more than one top folder"),
    ],
)
def test_unsafe_shapes_are_refused(tmp_path, members, message):
    archive = _tar(tmp_path / "evil.tar.gz", members)
    with pytest.raises(SonotrapError, match=message):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_duplicate_member_is_refused(tmp_path):
    archive = tmp_path / "dup.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for data in (b"first", b"second"):
            info = tarfile.TarInfo("model.onnx")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SonotrapError, match="twice"):
        extract_archive(archive, tmp_path / "out")


def test_total_size_cap_is_checked_before_writing(tmp_path):
    archive = _tar(tmp_path / "big.tar.gz", {"manifest.json": b"{}", "model.onnx": b"\0" * 5000})
    with pytest.raises(SonotrapError, match="unpacks to more than"):
        extract_archive(archive, tmp_path / "out", max_total_bytes=4000)
    assert not (tmp_path / "out").exists()
    assert extract_archive(archive, tmp_path / "ok", max_total_bytes=6000) == tmp_path / "ok"


def test_manifest_is_read_without_unpacking(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "manifest.json").write_text('{"version": "1.0.0"}')
    (src / "model.onnx").write_bytes(b"m")
    archive = write_archive(src, tmp_path / "b.tar.gz")
    assert read_manifest_bytes(archive) == b'{"version": "1.0.0"}'
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["manifest.json", "model.onnx"]
