"""PortAudio re-initialisation never runs under a stream that is open or still closing.

``Pa_Terminate`` while another thread sits in ``Pa_CloseStream`` (a stream whose device
vanished can hang there) crashes the interpreter, so the stream count is what protects it.
The streams here are stand-ins whose ``close`` blocks until released; ``rescan`` itself is
the real one (it re-initialises the real PortAudio when allowed).
"""

from __future__ import annotations

import threading

import pytest

from edge.audio import devices
from tests.support.waiting import wait_for

pytest.importorskip("sounddevice", reason="PortAudio (libportaudio2) is not installed")


class HangingStream:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.closed = threading.Event()

    def close(self, ignore_errors: bool = False) -> None:
        self.release.wait(10)
        self.closed.set()


def test_rescan_waits_for_every_stream_to_be_closed_even_an_abandoned_close():
    assert devices.rescan(), "no stream is open: PortAudio re-initialises"
    stream = devices.open_stream(HangingStream)
    try:
        assert not devices.rescan(), "a stream is open"
        assert not devices.close_stream(stream, timeout_s=0.1), "the close hangs and is abandoned"
        assert not devices.rescan(), "the abandoned close is still inside PortAudio"
    finally:
        stream.release.set()
    assert stream.closed.wait(5)
    assert wait_for(devices.rescan, 5.0), "once the close returned, devices are re-listed again"


def test_a_stream_that_fails_to_open_is_not_counted():
    def broken():
        raise OSError("no such device")

    with pytest.raises(OSError):
        devices.open_stream(broken)
    assert devices.rescan()
