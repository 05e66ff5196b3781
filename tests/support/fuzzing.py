"""Shared settings and checks for the hypothesis fuzz tests (config, audio, commands, bundles).

Every fuzz target asserts the same contract, so it is written once: a valid result or one short
SonotrapError line, within the deadline, and nothing written outside the directory it was given.
Test modules import this after ``pytest.importorskip("hypothesis")``.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, settings

FUZZ = settings(max_examples=150, deadline=2000, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MAX_MESSAGE_CHARS = 300  # an error names the problem and the fix; it never echoes hostile input


def files_under(root: Path) -> set[str]:
    """Every path below ``root`` (relative), to prove a call wrote nothing there."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_one_short_line(err: BaseException, limit: int = MAX_MESSAGE_CHARS) -> None:
    """A refusal is one non-empty line of at most ``limit`` characters."""
    msg = str(err)
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg[:500])
    assert len(msg) <= limit, f"{len(msg)} chars: {msg[:500]!r}"
