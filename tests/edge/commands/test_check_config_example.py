"""config.example.toml stays true: it loads, shows every setting, and its values are the defaults."""

from __future__ import annotations

import dataclasses
import re

from edge.config import Config, load_config
from tests.support.daemon_helpers import REPO, run_cli

EXAMPLE = REPO / "config.example.toml"


def test_example_loads_and_equals_the_defaults():
    assert load_config(EXAMPLE) == Config()


def test_example_mentions_every_setting():
    text = EXAMPLE.read_text()
    section, seen = "", set()
    for line in text.splitlines():
        m = re.match(r"^#?\s*\[([\w.]+)\]", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^#?\s*(\w+)\s*=", line)
        if m:
            seen.add(f"{section}.{m.group(1)}" if section else m.group(1))
    expected = set()
    for f in dataclasses.fields(Config):
        value = getattr(Config(), f.name)
        if dataclasses.is_dataclass(value):
            expected |= {f"{f.name}.{g.name}" for g in dataclasses.fields(value) if g.name != "thresholds"}
        else:
            expected.add(f.name)
    assert expected - seen == set(), "settings missing from config.example.toml"


def test_check_accepts_the_example(tmp_path, tiny_bundle):
    r = run_cli("check", "--config", str(EXAMPLE), "--model", str(tiny_bundle), "--state-dir", str(tmp_path),
                "--skip-audio", "--skip-broker")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "config.example.toml is valid" in r.stdout
