"""Large values made on one worker and used on the other, through a real cluster: the peer
fetch and the worker → executor hand-off must deliver them intact, again and again, with
windows reused rather than piling up. On Linux the workers of one machine hand such values over
as shared-memory segments; test_shm_segments_cluster.py covers that and, with it switched off,
the TCP fetch into recycled receive buffers."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from shoal import Client

from conftest import executor_mappings, needs_binary

pytestmark = needs_binary


def make_array(n: int, seed: int) -> Any:
    return np.random.default_rng(seed).standard_normal(n)


def make_table(n: int, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return pa.table({"k": np.arange(n, dtype=np.int64) + seed, "x": rng.standard_normal(n)})


def digest_array(a: Any) -> tuple[int, float, float, bool]:
    return int(a.size), float(a.sum()), float(a[-1]), bool(a.flags.writeable)


def digest_table(t: Any) -> tuple[int, int, float]:
    return t.num_rows, int(t.column("k")[0].as_py()), float(np.asarray(t.column("x")).sum())


def window_mappings() -> int:
    return executor_mappings("shoal-window")


def test_large_values_cross_workers(client: Client) -> None:
    workers = sorted(client.scheduler_info()["workers"])
    a_addr, b_addr = workers[0], workers[1]
    n = 3_000_000  # 24 MB of float64
    for seed in range(4):
        a = client.submit(make_array, n, seed, workers=[a_addr], pure=False)
        t = client.submit(make_table, n // 2, seed, workers=[a_addr], pure=False)
        ua = client.submit(digest_array, a, workers=[b_addr], pure=False)
        ut = client.submit(digest_table, t, workers=[b_addr], pure=False)
        want_a = make_array(n, seed)
        want_t = make_table(n // 2, seed)
        size, total, last, writable = ua.result(timeout=60)
        assert size == n and last == float(want_a[-1]) and writable
        assert total == pytest.approx(float(want_a.sum()))
        rows, k0, xs = ut.result(timeout=60)
        assert (rows, k0) == (n // 2, seed)
        assert xs == pytest.approx(float(np.asarray(want_t.column("x")).sum()))
        # and the value itself, fetched by the client from worker B's copy
        assert np.array_equal(client.gather(client.submit(lambda x: x, a, workers=[b_addr], pure=False)), want_a)
        del a, t, ua, ut
    if os.path.exists("/proc/self/maps"):
        assert window_mappings() <= 8, "windows are reused, not made per value"


def test_pooled_data_connection_outlives_the_worker_idle_timeout() -> None:
    """A worker closes data connections idle past --data-idle-timeout; the client's pooled one
    is then replaced on its next use, so scatter and gather keep working."""
    import time

    from shoal import LocalCluster

    with LocalCluster(n_workers=1, dashboard_port=None, extra_args=["--data-idle-timeout", "500ms"]) as cluster, \
            Client(cluster) as client:
        first = client.scatter(np.arange(1000))
        assert first.result().sum() == 499500
        time.sleep(1.5)  # the worker has closed the pooled connection by now
        second = client.scatter(np.ones(10))  # put_data on the stale connection
        assert second.result().sum() == 10
        time.sleep(1.5)
        assert first.result().sum() == 499500  # get_data on the stale connection
        assert [x.sum() for x in client.gather([first, second])] == [499500, 10]
