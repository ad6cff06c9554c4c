"""Large numpy results kept in the executor that made them (docs/protocol.md §3.5, "Kept
results"), through real processes: a scheduler and two `shoal worker` processes with their
/metrics ports (the harness of test_shm_segments_cluster).

An array some task depends on when it is made (the scheduler says ``keep``) is kept; one that
nothing depends on yet is written out, ready to be handed over without a copy. A task on the
same executor takes the kept array itself; a task on another worker, or the
client, gets the bytes the worker copies out of the executor (exported once, then an ordinary
segment); an array over an input's mapping is not kept; and when the executor dies, what it kept
is recomputed from its lineage."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pytest

from shoal import wait
from test_shm_segments_cluster import N, ProcCluster, digest_array, make_array, procs  # noqa: F401

pytestmark = pytest.mark.skipif(os.environ.get("SHOAL_EXECUTOR_KEEP") == "0", reason="SHOAL_EXECUTOR_KEEP=0")


def identity(a: Any) -> Any:
    return a


def make_columns(n: int, seed: int) -> Any:
    """A view of whole rows of a larger array (columns 1 to 1,022 of 1,024), as dask's slices are."""
    return np.random.default_rng(seed).standard_normal((n, 1024))[:, 1:-1]


def seceding_columns(n: int, seed: int) -> Any:
    """make_columns from a task that gave its thread back: its answer is never kept."""
    from shoal import secede

    secede()
    return make_columns(n, seed)


def digest_2d(a: Any) -> tuple[tuple[int, ...], float, float]:
    return tuple(a.shape), float(a.sum()), float(a[-1, -1])


def make_counted(n: int, seed: int, log: str) -> Any:
    with open(log, "a") as f:
        f.write("made\n")
    return make_array(n, seed)


def die_once(flag: str) -> int:
    if not os.path.exists(flag):
        open(flag, "w").close()
        os._exit(3)
    return 1


def test_kept_used_in_place_then_exported(procs: ProcCluster) -> None:  # noqa: F811
    client, names = procs.client()
    with client:
        a_addr, b_addr = names["a"], names["b"]
        lone = client.submit(make_array, N, 20, workers=[a_addr], pure=False)
        wait([lone], timeout=60)
        assert procs.metric("a", "kept_results_total") == 0, "nothing depended on it: written out"
        assert procs.metric("a", "shm_segment_bytes") >= N * 8
        del lone
        deadline = time.monotonic() + 10
        while procs.metric("a", "shm_segment_bytes") > 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)

        # a digest on A depends on it: the array stays in A's executor, which the digest uses
        a, s = client.get({"a-21": (make_array, N, 21), "s-21": (digest_array, "a-21")}, ["a-21", "s-21"],
                          workers=[a_addr], sync=False)
        want = make_array(N, 21)
        size, total, last = s.result(timeout=60)
        assert (size, last) == (N, float(want[-1])) and total == pytest.approx(float(want.sum()))
        assert procs.metric("a", "kept_results_total") == 1, procs.logs()
        assert procs.metric("a", "kept_used_total") == 1, "the run on A took the kept array"
        assert procs.metric("a", "kept_exported_total") == 0
        assert procs.metric("a", "shm_segment_bytes") == 0, "nothing was written to shared memory"

        # B needs it: A copies it out of its executor once, and B opens that segment
        size, total, last = client.submit(digest_array, a, workers=[b_addr], pure=False).result(timeout=60)
        assert (size, last) == (N, float(want[-1])) and total == pytest.approx(float(want.sum()))
        assert procs.metric("a", "kept_exported_total") == 1
        assert procs.metric("b", "shm_transfers_in_total") == 1
        assert procs.metric("a", "shm_segment_bytes") >= N * 8
        assert np.array_equal(client.gather(a), want)
        assert procs.metric("a", "kept_exported_total") == 1, "exported once"


def test_array_over_an_input_mapping_is_not_kept(procs: ProcCluster) -> None:  # noqa: F811
    client, names = procs.client()
    with client:
        a_addr, b_addr = names["a"], names["b"]
        a = client.submit(make_array, N, 22, workers=[a_addr], pure=False)
        # on B, a arrives as a segment mapped for the run: identity's result is a view of it
        b, c = client.get({"b-22": (identity, a), "c-22": (digest_array, "b-22")}, ["b-22", "c-22"],
                          workers=[b_addr], sync=False)
        c.result(timeout=60)
        assert procs.metric("b", "kept_results_total") == 0, procs.logs()
        # after its run's mapping is gone, the value is whole (it was written out)
        size, total, last = client.submit(digest_array, b, workers=[b_addr], pure=False).result(timeout=60)
        want = make_array(N, 22)
        assert (size, last) == (N, float(want[-1])) and total == pytest.approx(float(want.sum()))
        assert np.array_equal(client.gather(b), want)


def test_lost_with_its_executor_then_recomputed(procs: ProcCluster) -> None:  # noqa: F811
    client, names = procs.client()
    with client:
        a_addr = names["a"]
        log, flag = os.path.join(procs.dir, "made"), os.path.join(procs.dir, "died")
        a, s = client.get({"a-23": (make_counted, N, 23, log), "s-23": (digest_array, "a-23")},
                          ["a-23", "s-23"], workers=[a_addr], sync=False)
        wait([a, s], timeout=60)  # not a.result(): reading it would export it
        assert procs.metric("a", "kept_results_total") == 1, procs.logs()
        # the executor holding it dies (the task is retried and then succeeds)
        assert client.submit(die_once, flag, workers=[a_addr], pure=False).result(timeout=60) == 1
        want = make_array(N, 23)
        size, total, last = client.submit(digest_array, a, workers=[a_addr], pure=False).result(timeout=60)
        assert (size, last) == (N, float(want[-1])) and total == pytest.approx(float(want.sum()))
        assert np.array_equal(client.gather(a), want)
        with open(log) as f:
            assert f.read().count("made") == 2, "recomputed once from its lineage"


def test_view_of_rows_kept_as_it_is(procs: ProcCluster) -> None:  # noqa: F811
    client, names = procs.client()
    with client:
        a_addr, b_addr = names["a"], names["b"]
        n = 2_500  # 1,022 columns of float64: 20.4 MB, not contiguous
        v, s = client.get({"v-24": (make_columns, n, 24), "s-24": (digest_2d, "v-24")}, ["v-24", "s-24"],
                          workers=[a_addr], sync=False)
        want = make_columns(n, 24)
        assert not want.flags.c_contiguous
        shape, total, last = s.result(timeout=60)
        assert shape == want.shape and last == float(want[-1, -1]) and total == pytest.approx(float(want.sum()))
        assert procs.metric("a", "kept_results_total") == 1, procs.logs()
        assert procs.metric("a", "kept_used_total") == 1
        # on B, and in the client: its rows gathered out of A's executor, in order
        shape, total, last = client.submit(digest_2d, v, workers=[b_addr], pure=False).result(timeout=60)
        assert shape == want.shape and last == float(want[-1, -1]) and total == pytest.approx(float(want.sum()))
        assert procs.metric("a", "kept_exported_total") == 1
        got = client.gather(v)
        assert np.array_equal(got, want)


def test_seceded_view_of_rows_sends_its_bytes(procs: ProcCluster) -> None:  # noqa: F811
    client, names = procs.client()
    with client:
        a_addr = names["a"]
        n = 2_500
        v, s = client.get({"v-25": (seceding_columns, n, 25), "s-25": (digest_2d, "v-25")}, ["v-25", "s-25"],
                          workers=[a_addr], sync=False)
        want = make_columns(n, 25)
        shape, total, last = s.result(timeout=60)
        assert shape == want.shape and last == float(want[-1, -1]) and total == pytest.approx(float(want.sum()))
        assert np.array_equal(client.gather(v), want)
        assert procs.metric("a", "kept_results_total") == 0
