"""Hypothesis fuzzing of ``cmd/update`` payloads: what anyone on the broker can publish.

The bytes go through the signature/addressing/freshness gate and then the command parser, as
the daemon's command handler does. Whatever arrives -- random bytes, any JSON document, or a
correctly signed command with absurd fields -- the answer is a command or one short refusal,
at once, and nothing is written outside the device's state directory.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install -e .[dev] (hypothesis)")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edge.errors import SonotrapError  # noqa: E402
from edge.models.signing import key_id, load_private_key  # noqa: E402
from edge.models.update.command_auth import COMMAND_FORMAT, CommandGate  # noqa: E402
from edge.models.update.commands import COMMAND_FIELDS, parse_command  # noqa: E402
from tests.support.fuzzing import FUZZ, assert_one_short_line, files_under  # noqa: E402
from tests.support.update_server import make_keys  # noqa: E402

DEVICE = "rec-fuzz"
NOW = 1_800_000_000.0
SECRET = "0.9.0-downgrade"  # in every fuzzed payload: a refusal must never echo it

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30), st.sampled_from([2**63, -(2**64), 10**300]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.sampled_from(["", SECRET, "1.2.0", "rollback", "http://x/a.tar.gz", "a\nb", "\x00", "x" * 2000]),
)
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=20)


def deep(n: int, brackets: tuple[str, str]) -> str:
    return brackets[0] * n + "0" + brackets[1] * n


deep_docs = st.builds(deep, st.integers(1, 4000), st.sampled_from([("[", "]"), ('{"a":', "}")]))


@pytest.fixture(scope="module")
def device(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fuzzcmd")
    keys = make_keys(root / "keys")
    state = root / "state"
    gate = CommandGate(DEVICE, keys.public_dir, state, window_s=300, clock=lambda: NOW)
    return {"root": root, "state": state, "gate": gate, "key": load_private_key(keys.private)}


def _signed(device: dict, body: dict | str) -> bytes:
    """An envelope as ``sonotrap command sign`` writes it, around any body (even a bad one)."""
    text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"), sort_keys=True)
    key = device["key"]
    return json.dumps({"format": COMMAND_FORMAT, "key_id": key_id(key.public_key()), "body": text,
                       "signature": base64.b64encode(key.sign(text.encode())).decode()}).encode()


def _body(command) -> dict:
    return {"device": DEVICE, "topic": "update", "issued_at": NOW, "nonce": os.urandom(16).hex(), "command": command}


def _outside_state(root: Path) -> set[str]:
    return {p for p in files_under(root) if not p.startswith("state")}


def _verdict(device: dict, payload: bytes) -> dict | None:
    """What the daemon does with a ``cmd/update`` message: a parsed command, or None = refused."""
    before = _outside_state(device["root"])
    t0 = time.monotonic()
    try:
        signed = device["gate"].check(payload, "update")
        cmd = parse_command(json.dumps(signed.command).encode())  # as the command handler hands it on
    except SonotrapError as err:
        assert_one_short_line(err)
        assert SECRET not in str(err)
        cmd = None
    assert time.monotonic() - t0 < 1.0
    assert _outside_state(device["root"]) == before, "a command wrote outside the state directory"
    return cmd


def _assert_command_shape(cmd: dict) -> None:
    assert set(cmd) <= {*COMMAND_FIELDS, "rollback", "check"}
    for k, v in cmd.items():
        if k == "size":
            assert isinstance(v, int) and v >= 0
        elif k not in ("rollback", "check"):
            assert isinstance(v, str) and 0 < len(v) <= 1024 and v.isprintable(), (k, v[:80])


@FUZZ
@given(raw=st.binary(max_size=600) | st.binary(min_size=4000, max_size=4200))
def test_arbitrary_bytes_on_cmd_update_are_refused_in_one_line(device, raw) -> None:
    assert _verdict(device, raw) is None  # nothing unsigned is ever obeyed


@FUZZ
@given(doc=json_values | st.dictionaries(st.sampled_from(
    ["format", "key_id", "body", "signature", "x"]), json_values | st.just(COMMAND_FORMAT), max_size=5))
def test_arbitrary_json_on_cmd_update_is_refused_in_one_line(device, doc) -> None:
    try:
        payload = json.dumps(doc).encode()
    except RecursionError:
        payload = b"[" * 3000
    assert _verdict(device, payload) is None


@FUZZ
@given(text=deep_docs)
def test_deeply_nested_json_is_refused_in_one_line(device, text) -> None:
    assert _verdict(device, text.encode()) is None
    assert _verdict(device, _signed(device, text)) is None
    try:  # the parser alone, as ``Updater.run_command`` calls it
        _assert_command_shape(parse_command(text.encode()))
    except SonotrapError as err:
        assert_one_short_line(err)


fields = st.fixed_dictionaries({}, optional={
    "version": json_values | st.sampled_from(["1.2.0", "1.2.0\n", "9" * 5000]),
    "url": json_values | st.sampled_from(["http://x/a.tar.gz", "file:///etc/passwd", "http://x/\r\nHost: y"]),
    "sha256": json_values | st.sampled_from(["a" * 64, "A" * 64, "g" * 64, "a" * 65]),
    "size": json_values | st.sampled_from([0, 1, -1, 2**70, 1.5, True]),
    "channel": json_values,
    "action": json_values | st.just("rollback"),
    "unknown": json_values,
})


@FUZZ
@given(command=fields, nonce=st.binary(min_size=16, max_size=16))
def test_signed_commands_with_fuzzed_fields_give_a_command_or_one_line(device, command, nonce) -> None:
    cmd = _verdict(device, _signed(device, _body(command) | {"nonce": nonce.hex()}))
    if cmd is not None:
        _assert_command_shape(cmd)


envelope = st.fixed_dictionaries({}, optional={
    "device": json_values | st.just(DEVICE), "topic": json_values | st.just("update"),
    "issued_at": json_values | st.sampled_from([NOW, NOW + 1e300, -1e308, 1e308, 10**400, NOW - 301]),
    "nonce": json_values | st.sampled_from(["0" * 16, "f" * 64, "F" * 32, "0" * 65]),
    "command": json_values | fields,
})


@FUZZ
@given(over=envelope)
def test_signed_envelopes_with_fuzzed_fields_give_a_command_or_one_line(device, over) -> None:
    try:
        payload = _signed(device, _body({}) | over)
    except (ValueError, OverflowError):  # JSON cannot hold it; then nobody can sign it either
        return
    cmd = _verdict(device, payload)
    if cmd is not None:
        _assert_command_shape(cmd)


@FUZZ
@given(payload=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()) | fields.map(
    lambda f: json.dumps(f).encode()) | st.text(max_size=2000).map(str.encode))
def test_command_parser_alone_gives_a_command_or_one_line(payload) -> None:
    try:
        cmd = parse_command(payload)
    except SonotrapError as err:
        assert_one_short_line(err)
    else:
        _assert_command_shape(cmd)
