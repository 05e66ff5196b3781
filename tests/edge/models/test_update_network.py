"""Every network operation of the updater ends by its deadline and stays inside the allow-list.

Before: a server trickling a byte every few seconds held the update lock indefinitely, and a
redirect to another host or a ``%2e%2e`` path was fetched outside ``allowed_base_urls``.
"""

from __future__ import annotations

import json
import time

import pytest

from edge.models.update.procedure import Updater
from edge.models.update.sources import url_allowed
from tests.support.update_server import (
    BundleServer,
    events,
    make_cfg,
    publish_bundle,
    write_index,
)


def test_a_trickling_index_fails_at_the_deadline(env):
    v2 = publish_bundle(env["tmp"] / "work", env["srv"], "1.1.0", env["keys"].private)
    write_index(env["srv"], {"stable": v2})
    with BundleServer(env["srv"]) as server:
        server.faults.trickle_s = 0.2  # the index's ~200 bytes would take ~40 s
        t0 = time.monotonic()
        res = Updater(make_cfg(env, server.url, deadline_s=2.0, http_timeout_s=5.0)).update()
        took = time.monotonic() - t0
    assert res.result == "failed" and "update.deadline_s" in res.reason, res
    assert took < 6.0, f"took {took:.1f} s"


def test_trickling_headers_fail_at_the_deadline(env):
    with BundleServer(env["srv"]) as server:
        server.faults.trickle_headers_s = 0.2  # headers that never end
        t0 = time.monotonic()
        res = Updater(make_cfg(env, server.url, deadline_s=2.0, http_timeout_s=5.0)).update()
        took = time.monotonic() - t0
    assert res.result == "failed" and "update.deadline_s" in res.reason, res
    assert took < 6.0, f"took {took:.1f} s"


def test_a_trickling_download_fails_at_the_deadline(env):
    v2 = publish_bundle(env["tmp"] / "work", env["srv"], "1.1.0", env["keys"].private)
    write_index(env["srv"], {"stable": v2})
    with BundleServer(env["srv"]) as server:
        t0 = time.monotonic()
        up = Updater(make_cfg(env, server.url, deadline_s=2.0, http_timeout_s=5.0))
        offer = up.check()
        server.faults.trickle_s = 0.05  # the archive's bytes would take minutes
        res = up.apply(offer)
        took = time.monotonic() - t0
    assert res.result == "rejected" and "update.deadline_s" in res.reason, res
    assert took < 8.0, f"took {took:.1f} s"
    assert env["store"].current().version == "1.0.0"


@pytest.mark.parametrize("url, ok", [
    ("http://models.example.org/fleet/a.tar.gz", True),
    ("http://models.example.org/fleet/%2e%2e/secret", False),
    ("http://models.example.org/fleet/%2E%2E/%2e%2e/etc/passwd", False),
    ("http://models.example.org/fleet/./a.tar.gz", False),
    ("http://models.example.org@evil.example/fleet/a.tar.gz", False),
    ("http://MODELS.example.org/fleet/a.tar.gz", True),
    ("http://models.example.org:8080/fleet/a.tar.gz", False),
    ("http://models.example.org/fleetX/a.tar.gz", False),
    ("ftp://models.example.org/fleet/a.tar.gz", False),
])
def test_url_allowed_judges_the_normalised_url(url, ok):
    assert url_allowed(url, ["http://models.example.org/fleet/"]) is ok


def test_encoded_dot_dot_in_a_command_url_is_not_fetched(env):
    (env["srv"] / "fleet").mkdir()
    with BundleServer(env["srv"]) as server:
        cfg = make_cfg(env, allowed_base_urls=[server.url + "fleet/"])
        seen, report = events()
        url = server.url + "fleet/%2e%2e/" + env["v1"].archive.name
        res = Updater(cfg, report=report).run_command(json.dumps({"url": url}).encode())
        assert res.result == "rejected" and "allowed_base_urls" in res.reason
        assert server.requests == []


def test_a_redirect_to_another_host_is_refused(env, tmp_path):
    v2 = publish_bundle(env["tmp"] / "work", env["srv"], "1.1.0", env["keys"].private)
    other = tmp_path / "other"
    other.mkdir()
    (other / v2.archive.name).write_bytes(v2.archive.read_bytes())
    write_index(env["srv"], {"stable": v2})
    with BundleServer(env["srv"]) as server, BundleServer(other) as evil:
        server.faults.redirect["/" + v2.archive.name] = evil.url + v2.archive.name
        res = Updater(make_cfg(env, server.url)).update()
        assert res.result == "rejected" and "redirects to" in res.reason, res
        assert evil.requests == []
        # the index itself redirected elsewhere: refused as well
        server.faults.redirect["/index.json"] = evil.url + "index.json"
        res = Updater(make_cfg(env, server.url)).update()
        assert res.result == "failed" and "redirects to" in res.reason, res
        assert evil.requests == []
    assert env["store"].current().version == "1.0.0"
