"""Model updates against a real HTTP server, real signed bundles and a real daemon process.

The device starts on 1.0.0; the server offers bundles built from the tiny test model. Every
bad bundle must be rejected with 1.0.0 still current *and still serving hops*; a good one must
be switched to and hot-swapped in; an unhealthy one rolled back automatically.
"""

from __future__ import annotations

import json
import random
import threading
import time

import pytest

from edge.errors import SonotrapError
from edge.models.update.commands import parse_command
from edge.models.update.download import download
from edge.models.update.procedure import Updater
from edge.models.update.sources import Offer, url_allowed
from edge.util.hashing import sha256_file
from tests.support.update_server import (
    BundleServer,
    StandinDaemon,
    events,
    make_cfg,
    publish_bundle,
    write_index,
)


def test_http_update_switches_hot_swaps_and_reports(env, daemon):
    v2 = publish_bundle(env["tmp"] / "work", env["srv"], "1.1.0", env["keys"].private)
    write_index(env["srv"], {"stable": v2, "beta": v2})
    seen, report = events()
    with BundleServer(env["srv"]) as server:
        up = Updater(make_cfg(env, server.url), report=report)
        res = up.update()
        assert res.result == "updated", res
        assert (res.version, res.previous) == ("1.1.0", "1.0.0")
        daemon.assert_serving("1.1.0")
        assert env["store"].current().version == "1.1.0" and env["store"].previous().version == "1.0.0"
        kinds = [k for k, _ in seen]
        assert kinds == ["update_started", "update_downloaded", "update_verified", "model_activated",
                         "model_swap_requested", "update_succeeded"], kinds
        status = json.loads((env["state"] / "update-status.json").read_text())
        assert (status["current"], status["previous"]) == ("1.1.0", "1.0.0")
        assert status["last_update"]["result"] == "updated"
        # second poll: up to date, the bundle is not downloaded again
        n = len(server.hits(".tar.gz"))
        assert up.update().result == "up-to-date"
        assert len(server.hits(".tar.gz")) == n
        assert not list((env["state"] / "downloads").glob("*")), "downloads are cleaned up"


def test_unhealthy_daemon_triggers_automatic_rollback(env):
    v2 = publish_bundle(env["tmp"] / "work", env["srv"], "1.1.0", env["keys"].private)
    write_index(env["srv"], {"stable": v2})
    d = StandinDaemon(env["state"], "--ignore-hup")  # never swaps: the new model never serves hops
    try:
        seen, report = events()
        with BundleServer(env["srv"]) as server:
            up = Updater(make_cfg(env, server.url, health_timeout_s=1.5), report=report)
            res = up.update()
            assert res.result == "rolled-back", res
            assert "still reports model 1.0.0" in res.reason
            assert env["store"].current().version == "1.0.0"
            assert env["store"].previous().version == "1.1.0"
            d.assert_serving("1.0.0")
            kinds = [k for k, _ in seen]
            assert kinds.index("model_activated") < kinds.index("update_rolled_back")
            # the failed version is not retried on every poll
            n = len(server.hits(".tar.gz"))
            assert up.update().result == "up-to-date"
            assert len(server.hits(".tar.gz")) == n
    finally:
        d.close()


def test_operator_rollback_and_activate_hot_swap(env, daemon):
    v2 = publish_bundle(env["tmp"] / "work", env["srv"], "1.1.0", env["keys"].private)
    up = Updater(make_cfg(env, f"local:{env['srv']}"))
    assert up.update(source=f"local:{env['srv']}").result == "updated"
    daemon.assert_serving("1.1.0")
    assert up.rollback().result == "updated"
    daemon.assert_serving("1.0.0")
    assert env["store"].current().version == "1.0.0"
    # the next automatic poll does not undo the operator's rollback; an explicit version does
    assert up.update(source=f"local:{env['srv']}").result == "up-to-date"
    assert env["store"].current().version == "1.0.0"
    assert up.activate(v2.version).result == "updated"
    daemon.assert_serving("1.1.0")


def test_local_directory_source_with_and_without_index(env):
    work, srv, key = env["tmp"] / "work", env["srv"], env["keys"].private
    publish_bundle(work, srv, "1.2.0", key)
    v13 = publish_bundle(work, srv, "1.3.0", key)
    publish_bundle(work, srv, "1.10.0-beta", key)
    up = Updater(make_cfg(env))  # no daemon running: installed for the next start
    offer = up.check(source=f"local:{srv}")
    assert offer.version == "1.10.0-beta"  # highest version in a plain directory
    write_index(srv, {"stable": v13})
    assert up.check(source=f"local:{srv}").version == "1.3.0"  # the index's channel wins
    res = up.update(source=f"local:{srv}")
    assert res.result == "installed" and env["store"].current().version == "1.3.0"
    # a downgrade needs the operator's explicit permission (flag or update.allow_downgrade)
    res = up.update(source=f"local:{srv}", version="1.2.0")
    assert res.result == "rejected" and "older than the running 1.3.0" in res.reason
    assert env["store"].current().version == "1.3.0"
    assert up.update(source=f"local:{srv}", version="1.2.0", allow_downgrade=True).result == "installed"
    assert env["store"].current().version == "1.2.0"
    up.cfg.update.allow_downgrade = True
    assert up.update(source=f"local:{srv}", version="1.10.0-beta").result == "installed"
    assert up.update(source=f"local:{srv}", version="1.3.0").result == "installed"  # the setting allows it
    with pytest.raises(SonotrapError, match="no channel 'nightly'"):
        up.check(source=f"local:{srv}", channel="nightly")


def test_download_resumes_with_range(env):
    v2 = publish_bundle(env["tmp"] / "work", env["srv"], "1.1.0", env["keys"].private)
    dest = env["tmp"] / "dl" / "b.tar.gz"
    with BundleServer(env["srv"]) as server:
        url = server.url + v2.archive.name
        # 1) connection cut mid-way, no retry in this run: the partial file is kept
        server.faults.cut_after["/" + v2.archive.name] = v2.size // 2
        with pytest.raises(SonotrapError, match="partial file is kept"):
            download(url, dest, max_bytes=10**8, expected_size=v2.size, sha256=v2.sha256, attempts=1)
        part = dest.with_name(dest.name + ".part")
        assert part.stat().st_size == v2.size // 2
        # 2) next run resumes from there with a Range request and completes
        download(url, dest, max_bytes=10**8, expected_size=v2.size, sha256=v2.sha256)
        assert sha256_file(dest) == v2.sha256 and not part.exists()
        ranges = [r for r in server.hits(v2.archive.name) if r.range]
        assert [(r.range, r.status) for r in ranges] == [(f"bytes={v2.size // 2}-", 206)]
        # 3) a cut inside one run is resumed transparently
        dest.unlink()
        server.faults.cut_after["/" + v2.archive.name] = 1000
        download(url, dest, max_bytes=10**8, expected_size=v2.size, sha256=v2.sha256, attempts=3)
        assert sha256_file(dest) == v2.sha256
        assert server.hits(v2.archive.name)[-1].range == "bytes=1000-"


def test_size_limit_and_free_space_are_checked_before_downloading(env):
    v2 = publish_bundle(env["tmp"] / "work", env["srv"], "1.1.0", env["keys"].private)
    write_index(env["srv"], {"stable": v2})
    with BundleServer(env["srv"]) as server:
        res = Updater(make_cfg(env, server.url, max_download_mb=v2.size / 2e6)).update()
        assert res.result == "rejected" and "max_download_mb" in res.reason
        res = Updater(make_cfg(env, server.url, min_free_mb=1e9)).update()
        assert res.result == "rejected" and "free" in res.reason
        assert server.hits(".tar.gz") == [], "nothing downloaded"
        # the index lies about the size: streaming stops at the limit
        idx = json.loads((env["srv"] / "index.json").read_text())
        idx["channels"]["stable"].pop("size")
        (env["srv"] / "index.json").write_text(json.dumps(idx))
        res = Updater(make_cfg(env, server.url, max_download_mb=v2.size / 2e6)).update()
        assert res.result == "rejected" and "max_download_mb" in res.reason
    assert env["store"].current().version == "1.0.0"


def test_mqtt_command_parsing_and_url_allowlist(env, daemon):
    assert parse_command(b'{"version": "1.1.0"}') == {"version": "1.1.0"}
    assert parse_command(b"https://x/y.tar.gz") == {"url": "https://x/y.tar.gz"}
    assert parse_command(b"1.2.0") == {"version": "1.2.0"}
    assert parse_command(b"") == {"check": True}
    assert parse_command(b'{"action": "rollback"}') == {"rollback": True}
    allowed = ["https://models.example.org/fleet/"]
    assert url_allowed("https://models.example.org/fleet/a.tar.gz", allowed)
    assert not url_allowed("https://models.example.org/fleetX/a.tar.gz", allowed)
    assert not url_allowed("https://models.example.org/fleet/../a.tar.gz", allowed)
    assert not url_allowed("http://models.example.org/fleet/a.tar.gz", allowed)
    assert not url_allowed("https://evil.example.org/fleet/a.tar.gz", allowed)

    v2 = publish_bundle(env["tmp"] / "work", env["srv"], "1.1.0", env["keys"].private)
    with BundleServer(env["srv"]) as server:
        seen, report = events()
        up = Updater(make_cfg(env, allowed_base_urls=[server.url + "fleet/"]), report=report)
        cmd = json.dumps({"url": server.url + v2.archive.name, "sha256": v2.sha256}).encode()
        res = up.run_command(cmd)
        assert res.result == "rejected" and "allowed_base_urls" in res.reason
        assert server.requests == [], "a refused URL is never fetched"
        up = Updater(make_cfg(env, allowed_base_urls=[server.url]), report=report)
        res = up.run_command(cmd)
        assert res.result == "updated", res
        daemon.assert_serving("1.1.0")
        assert up.run_command(b'{"action": "rollback"}').result == "updated"
        daemon.assert_serving("1.0.0")


def test_fleet_of_20_spreads_its_polls(env):
    """20 update clients on the same schedule: jitter spreads the index requests over the window."""
    v2 = publish_bundle(env["tmp"] / "work", env["srv"], "1.1.0", env["keys"].private)
    write_index(env["srv"], {"stable": v2})
    window = 3.0  # stands for update.jitter_s (600 s in the field), scaled down

    delays: list[float] = []

    def poll_all(server, jitter: float) -> list[float]:
        t0 = time.monotonic()
        before = len(server.requests)

        def one(i: int) -> None:
            cfg = make_cfg(env, server.url, jitter_s=jitter)
            cfg.state_dir = str(env["tmp"] / f"device-{i}")  # 20 devices: 20 state dirs (and update locks)
            up = Updater(cfg, rng=random.Random(i))
            delays.append(up.jitter())
            assert up.check() is not None  # each sees 1.1.0 on offer

        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sorted(r.time - t0 for r in server.requests[before:] if r.path.endswith("index.json"))

    with BundleServer(env["srv"]) as server:
        spread = poll_all(server, window)
    assert len(spread) == 20
    assert all(0 <= d <= window for d in delays) and max(delays) - min(delays) > 0.7 * window
    # what the server saw: requests spread over the window, no burst
    assert spread[-1] - spread[0] > 0.6 * window, spread
    busiest = max(sum(1 for t in spread if s <= t < s + 0.3) for s in spread)
    assert busiest <= 7, f"{busiest} of 20 requests within 0.3 s despite jitter: {spread}"


def test_offer_location_is_resolved_relative_to_index(env):
    v2 = publish_bundle(env["tmp"] / "work", env["srv"], "1.1.0", env["keys"].private)
    sub = env["srv"] / "channels"
    sub.mkdir()
    (sub / "index.json").write_text(json.dumps({"channels": {"stable": v2.entry("../" + v2.archive.name)}}))
    with BundleServer(env["srv"]) as server:
        offer = Updater(make_cfg(env, server.url + "channels/index.json")).check()
    assert isinstance(offer, Offer) and offer.location.endswith("/" + v2.archive.name)
    assert "channels" not in offer.location


def test_timer_run_without_a_configured_source_is_a_quiet_no_op(tmp_path):
    from tests.support.daemon_helpers import run_cli

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    quiet = run_cli("update", "--config", str(cfg), "--no-jitter", "--if-configured")
    assert quiet.returncode == 0 and "nothing to do" in quiet.stderr
    by_hand = run_cli("update", "--config", str(cfg), "--no-jitter")
    assert by_hand.returncode == 1 and "no update source configured" in by_hand.stdout  # by hand: a failure
