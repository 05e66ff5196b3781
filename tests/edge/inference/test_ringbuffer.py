"""RingBuffer: absolute indexing, wrap-around, overwrite of the oldest samples."""

from __future__ import annotations

import numpy as np
import pytest

from edge.inference.ringbuffer import RingBuffer


def test_append_and_read_across_wraparound():
    rb = RingBuffer(10)
    stream = np.arange(37, dtype=np.float32)
    for chunk in np.array_split(stream, 9):  # uneven blocks
        rb.append(chunk)
    assert rb.total == 37 and rb.oldest == 27 and len(rb) == 10
    np.testing.assert_array_equal(rb.newest(10), stream[-10:])
    np.testing.assert_array_equal(rb.read(30, 35), stream[30:35])
    np.testing.assert_array_equal(rb.read_ending_at(37, 4), stream[33:37])


def test_reading_overwritten_or_future_samples_fails():
    rb = RingBuffer(8)
    rb.append(np.arange(20, dtype=np.float32))
    assert not rb.holds(5, 13)
    with pytest.raises(IndexError):
        rb.read(5, 13)
    with pytest.raises(IndexError):
        rb.read(15, 21)


def test_block_larger_than_capacity_keeps_newest_and_counts_all():
    rb = RingBuffer(5)
    rb.append(np.arange(3, dtype=np.float32))
    rb.append(np.arange(3, 15, dtype=np.float32))
    assert rb.total == 15
    np.testing.assert_array_equal(rb.newest(5), np.arange(10, 15))


def test_newest_before_full_and_resized_keeps_counter():
    rb = RingBuffer(6)
    rb.append(np.array([1, 2, 3], dtype=np.float32))
    np.testing.assert_array_equal(rb.newest(6), [1, 2, 3])
    rb.append(np.arange(4, 12, dtype=np.float32))
    bigger = rb.resized(20)
    assert bigger.total == rb.total == 11
    np.testing.assert_array_equal(bigger.newest(20), np.arange(6, 12))
    smaller = rb.resized(2)
    np.testing.assert_array_equal(smaller.read(9, 11), [10, 11])
