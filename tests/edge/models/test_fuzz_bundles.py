"""Hypothesis fuzzing of model bundles: ``manifest.json`` documents and ``.tar.gz`` archives.

Bundles arrive from the network and USB sticks and are read before any signature is checked,
so the one manifest parser and the one archive extractor must meet anything: a valid bundle or
one short SonotrapError line, at once, and never a byte written outside the destination.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import shutil
import tarfile
import time
import uuid

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install -e .[dev] (hypothesis)")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edge.errors import SonotrapError  # noqa: E402
from edge.inference.frontend import FrontendConfig  # noqa: E402
from edge.models.archive import extract_archive, listed_files, read_manifest_bytes, write_archive  # noqa: E402
from edge.models.bundle import load_bundle  # noqa: E402
from edge.models.manifest import MANIFEST_FILE, SIGNATURE_FILE, manifest_data, parse_manifest  # noqa: E402
from tests.support.fuzzing import FUZZ, assert_one_short_line, files_under  # noqa: E402
from tests.support.tiny_model import make_tiny_bundle  # noqa: E402

LOAD_FUZZ = settings(FUZZ, max_examples=60)  # each load builds an onnxruntime session


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fuzzbundle")
    bundle = make_tiny_bundle(root / "base")
    archive = write_archive(bundle, root / "base.tar.gz")
    (root / "victim.txt").write_text("untouched")
    (root / "out").mkdir()
    (root / "load").mkdir()
    data = json.loads((bundle / MANIFEST_FILE).read_text())
    return {"root": root, "bundle": bundle, "archive": archive.read_bytes(), "data": data}


# --------------------------------------------------------------------------- manifests

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([10**300, -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["", "1.0.0", "99.0.0", "../x", "/etc/passwd", "a\x00b", "a\nb", "model.onnx", "x" * 5000]),
)
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3), max_leaves=12)
FRONTEND_ABSURD = st.sampled_from([0, -1, 1, 2**31, 2**63, 1e7, 1e-9, float("nan"), float("inf"), "1024", None, True])
ODD_NAMES = st.sampled_from(["../x", "/abs", "a/b", "a\x00b", "", ".", "..", "model.onnx", "manifest.json", "x" * 300, "ok.bin"])


@st.composite
def mutated_manifests(draw, data: dict) -> dict:
    doc = copy.deepcopy(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "del", "add", "frontend", "label", "files", "threshold"]))
        if op == "set":
            doc[draw(st.sampled_from(sorted(data)))] = draw(json_values)
        elif op == "del" and doc:
            doc.pop(draw(st.sampled_from(sorted(doc))))
        elif op == "add":
            doc[draw(st.text(max_size=10))] = draw(json_values)
        elif op == "frontend" and isinstance(doc.get("frontend"), dict):
            key = draw(st.sampled_from([*sorted(data["frontend"]), "unknown"]))
            doc["frontend"][key] = draw(FRONTEND_ABSURD | json_values)
        elif op == "label" and isinstance(doc.get("labels"), list) and doc["labels"]:
            lab = doc["labels"][draw(st.integers(0, len(doc["labels"]) - 1))]
            if isinstance(lab, dict):
                lab[draw(st.sampled_from(["code", "name", "enabled", "group", "extra"]))] = draw(json_values)
        elif op == "files":
            entry = draw(st.fixed_dictionaries({"size": json_values | st.just(1433), "sha256": json_values | st.just("0" * 64)}))
            doc["files"] = {draw(ODD_NAMES | st.text(max_size=12)): draw(st.just(entry) | json_values)}
        elif op == "threshold" and isinstance(doc.get("thresholds"), dict):
            doc["thresholds"][draw(st.sampled_from(["tone_low", "nope"]) | st.text(max_size=300))] = draw(json_values)
    return doc


def _parse(raw: bytes) -> None:
    """Every reader of a manifest's bytes, in the order the loader uses them."""
    t0 = time.monotonic()
    try:
        data = manifest_data(raw, "m.json")
        manifest = parse_manifest(data, "m.json")
        listed_files(data, "m.json")
        FrontendConfig.from_dict(manifest.frontend)
    except SonotrapError as err:
        assert_one_short_line(err)
    assert time.monotonic() - t0 < 1.0


def _dumps(doc) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


@FUZZ
@given(data=st.data())
def test_fuzzed_manifests_parse_or_fail_with_one_line(base, data) -> None:
    _parse(_dumps(data.draw(mutated_manifests(base["data"]))))


@FUZZ
@given(raw=st.binary(max_size=300) | st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n)
       | st.integers(1, 100_000).map(lambda n: b'{"a":' * n + b"0" + b"}" * n))
def test_arbitrary_bytes_as_a_manifest_fail_with_one_line(raw) -> None:
    _parse(raw)


@LOAD_FUZZ
@given(data=st.data())
def test_bundles_with_fuzzed_manifests_load_or_fail_with_one_line(base, data) -> None:
    work = base["root"] / "load" / uuid.uuid4().hex
    shutil.copytree(base["bundle"], work)
    (work / MANIFEST_FILE).write_bytes(_dumps(data.draw(mutated_manifests(base["data"]))))
    before = files_under(base["root"])
    t0 = time.monotonic()
    try:
        load_bundle(work, self_test=True)
    except SonotrapError as err:
        assert_one_short_line(err, limit=300 + len(str(work)))
    assert time.monotonic() - t0 < 2.0
    assert files_under(base["root"]) == before, "loading a bundle directory wrote files"
    shutil.rmtree(work)


# --------------------------------------------------------------------------- archives

KINDS = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE]
MEMBER_NAMES = st.sampled_from([
    "model.onnx", "manifest.json.sig", "extra.bin", "../victim.txt", "/tmp/abs.bin", "top/model.onnx",
    "./model.onnx", "top/../../victim.txt", "a/b/c/d/e/f/g/h", "a\\b", "top", ".", "x" * 200, "top/extra.bin",
]) | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)


@st.composite
def structured_tars(draw) -> bytes:
    fmt = draw(st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]))
    members = draw(st.lists(st.tuples(MEMBER_NAMES, st.sampled_from(KINDS), st.binary(max_size=40),
                                      st.sampled_from([None, None, None, 2**33, 2**40, 10])), max_size=6))
    listed = {name: {"size": draw(st.sampled_from([len(body), len(body) + 1, -1])), "sha256": "0" * 64}
              for name, kind, body, _ in members if kind == tarfile.REGTYPE and draw(st.booleans())}
    if draw(st.booleans()):  # usually a manifest, which decides what may be written
        manifest = _dumps({"files": listed} if listed or draw(st.booleans()) else {}) if draw(st.integers(0, 4)) else draw(st.binary(max_size=30))
        members.insert(draw(st.integers(0, len(members))), (draw(st.sampled_from(["manifest.json", "top/manifest.json"])), tarfile.REGTYPE, manifest, None))
    out = io.BytesIO()
    for name, kind, body, declared in members:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = len(body) if kind == tarfile.REGTYPE else 0
        info.linkname = draw(st.sampled_from(["../victim.txt", "/etc/passwd", "model.onnx", "top", ""])) if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        data = body if kind == tarfile.REGTYPE else b""
        if declared is not None:
            info.size = declared  # a header that lies about its size
        try:
            out.write(info.tobuf(fmt, "utf-8", "surrogateescape"))
        except ValueError:  # this format cannot name it; then no archive can carry it so
            continue
        out.write(data + b"\0" * (-len(data) % 512))
    raw = out.getvalue() + b"\0" * 1024
    return gzip.compress(raw, mtime=0) if draw(st.booleans()) else raw


@st.composite
def damaged_archives(draw, good: bytes) -> bytes:
    blob = bytearray(good if draw(st.booleans()) else gzip.decompress(good))
    for _ in range(draw(st.integers(1, 6))):
        blob[draw(st.integers(0, len(blob) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(blob))))
    blob = bytes(blob[:cut] if cut is not None else blob)
    return gzip.compress(blob, mtime=0) if draw(st.booleans()) and blob[:2] != b"\x1f\x8b" else blob


def _extract(base: dict, blob: bytes) -> None:
    root = base["root"]
    archive = root / "in.tar.gz"
    archive.write_bytes(blob)
    dest = root / "out" / uuid.uuid4().hex
    outside = files_under(root)
    t0 = time.monotonic()
    try:
        bundle = extract_archive(archive, dest)
    except SonotrapError as err:
        assert_one_short_line(err, limit=300 + len(str(archive)))
        assert not dest.exists(), "a refused archive left files behind"
    else:
        assert bundle == dest or bundle.parent == dest
        allowed = {MANIFEST_FILE, SIGNATURE_FILE, *listed_files(json.loads((bundle / MANIFEST_FILE).read_bytes()), "m")}
        for p in dest.rglob("*"):
            assert not p.is_symlink() and (p.is_dir() or p.is_file()), p
            assert p.resolve().is_relative_to(dest.resolve()), p
            assert p.is_dir() or p.name in allowed, p
        shutil.rmtree(dest)
    try:
        read_manifest_bytes(archive)
    except SonotrapError as err:
        assert_one_short_line(err, limit=300 + len(str(archive)))
    assert time.monotonic() - t0 < 2.0
    assert files_under(root) == outside, "unpacking wrote outside its destination"
    assert (root / "victim.txt").read_text() == "untouched"


@FUZZ
@given(blob=st.binary(max_size=2000) | st.binary(max_size=600).map(lambda b: gzip.compress(b, mtime=0)))
def test_arbitrary_bytes_as_a_bundle_archive_fail_with_one_line(base, blob) -> None:
    _extract(base, blob)


@FUZZ
@given(data=st.data())
def test_damaged_bundle_archives_unpack_or_fail_with_one_line(base, data) -> None:
    _extract(base, data.draw(damaged_archives(base["archive"])))


@FUZZ
@given(blob=structured_tars())
def test_hostile_tar_members_never_land_outside_the_destination(base, blob) -> None:
    _extract(base, blob)


# --------------------------------------------------------------------------- what fuzzing found


def test_an_archive_of_a_million_headers_is_refused_before_they_are_read(base) -> None:
    """A small .tar.gz of 50 000 empty headers once took seconds and tens of MB to refuse (every header was read before the member cap)."""
    info = tarfile.TarInfo("d")
    info.type = tarfile.DIRTYPE
    blob = gzip.compress(info.tobuf(tarfile.GNU_FORMAT) * 50_000 + b"\0" * 1024, compresslevel=1, mtime=0)
    t0 = time.monotonic()
    _extract(base, blob)
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize("model_file", ["/etc/passwd", "../base/model.onnx", None, "a\nb", "x" * 5000])
def test_model_file_must_be_a_plain_name_in_the_bundle(base, model_file) -> None:
    """An absolute or ``..`` path once made the loader read and hash a file outside the bundle; ``None`` raised a TypeError."""
    with pytest.raises(SonotrapError, match="model_file") as exc:
        parse_manifest({**base["data"], "model_file": model_file}, "m.json")
    assert_one_short_line(exc.value)
