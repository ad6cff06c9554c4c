"""A non-contiguous numpy result (a slice's view) leaves the executor as a contiguous array,
pickled with its data out of band, so that readers unpickle it without a copy."""

from __future__ import annotations

from typing import Any

import numpy as np

from shoal.executor import contiguous

from harness import FakeWorker, result_of


def column_slice(n: int) -> Any:
    return np.arange(n * n, dtype=np.float64).reshape(n, n)[:, 1:-1]


def test_a_sliced_result_goes_out_of_band(worker: FakeWorker) -> None:
    reply = worker.run(column_slice, 300, key="slice")
    item = reply[0]["items"][0]
    assert item["encoding"] == "pickle" and item["nframes"] == 2  # the pickle and the data
    got = result_of(reply)
    np.testing.assert_array_equal(got, column_slice(300))
    assert got.flags.c_contiguous


def test_contiguous_leaves_everything_else_as_it_is() -> None:
    a = np.arange(100_000.0).reshape(100, 1000)
    for v in (a, np.asfortranarray(a), a[:1, ::8], np.array([None] * 5000)[::2], "x", [a[:, ::2]]):
        assert contiguous(v) is v  # contiguous, small, objects, not an array
    s = a[:, 1:-1]
    c = contiguous(s)
    assert c is not s and c.flags.c_contiguous and np.array_equal(c, s)


def test_keepable_only_arrays_numpy_allocated() -> None:
    from shoal.executor import SEG_MIN, keepable

    n = SEG_MIN // 8
    owned = np.arange(2 * n, dtype=np.float64)
    assert keepable(owned)
    assert keepable(owned[:n])  # half of an array numpy allocated (it keeps all of it alive)
    big = np.arange(4 * n, dtype=np.float64)
    assert keepable(big[: 2 * n]) and keepable(big[n:])
    assert not keepable(big[: 2 * n - 1])  # less than half: the rest would be held unaccounted
    assert keepable(owned.reshape(2, n).T)  # Fortran-contiguous
    assert not keepable(np.arange(n // 2, dtype=np.float64))  # too small to be worth keeping
    assert not keepable(owned[::2])  # not contiguous
    assert not keepable(np.array([None] * (2 * n)))  # Python objects
    # over memory numpy did not allocate (an input's mapping is unmapped after its run)
    assert not keepable(np.frombuffer(bytearray(2 * SEG_MIN), dtype=np.uint8))
    assert not keepable(np.frombuffer(memoryview(owned.tobytes()), dtype=np.float64))
    assert not keepable(owned.tolist())


def test_keepable_rows_only_views_of_whole_rows() -> None:
    from shoal.executor import SEG_MIN, keepable_rows

    n = SEG_MIN // 8 // 1022 + 1
    a = np.zeros((n, 1024))
    assert keepable_rows(a[:, 1:-1])  # whole rows of a, 1,022 of 1,024 columns
    assert not keepable_rows(a)  # contiguous: kept as it is anyway
    assert not keepable_rows(np.zeros((200, 2048))[:, :1000])  # less than half of its array
    assert not keepable_rows(a[:, ::2])  # rows not contiguous
    assert not keepable_rows(a[::-1, 1:-1])  # rows backwards
    assert not keepable_rows(np.zeros((64 * n, 64))[:, 1:-1])  # rows too short to gather one by one
    assert not keepable_rows(np.zeros((4, n, 1024))[:, :, 1:-1])  # not 2-D
    assert not keepable_rows(np.frombuffer(bytearray(a.nbytes), dtype=np.float64).reshape(n, 1024)[:, 1:-1])
