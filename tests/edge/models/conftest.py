"""Fixtures shared by the model-store, update and command tests: a device's folders and keys."""

import pytest

from tests.support.update_server import StandinDaemon, make_device


@pytest.fixture
def env(tmp_path):
    """A device (store, state, keys) and an update server folder under ``tmp_path``."""
    return make_device(tmp_path)


@pytest.fixture
def daemon(env):
    """A stand-in daemon that answers the updater's control requests, closed after the test."""
    d = StandinDaemon(env["state"])
    yield d
    d.close()
