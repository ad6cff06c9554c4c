"""The Client against an in-process fake scheduler/worker (no Go binary needed)."""

from __future__ import annotations

import gc
import time
import traceback
from operator import add
from typing import Iterator

import dask
import dask.array as da
import numpy as np
import pyarrow as pa
import pytest

from shoal import AuthenticationError, CancelledError, Client
from shoal.exceptions import RemoteTraceback

from fakecluster import FakeCluster


@pytest.fixture()
def fake() -> Iterator[FakeCluster]:
    f = FakeCluster(token="s3cret")
    yield f
    f.close()


@pytest.fixture()
def client(fake: FakeCluster) -> Iterator[Client]:
    with Client(fake.scheduler_address, token="s3cret", timeout=5, set_as_default=False) as c:
        yield c


def inc(x: int) -> int:
    return x + 1


def test_submit_map_gather(client: Client, fake: FakeCluster) -> None:
    assert client.submit(inc, 1).result(timeout=5) == 2
    futures = client.map(inc, range(50))
    assert client.gather(futures) == list(range(1, 51))
    assert client.submit(sum, futures).result(timeout=5) == sum(range(1, 51))
    graphs = [m for m in fake.received if m["op"] == "update_graph"]
    # the function crossed the wire once
    assert sum(1 for g in graphs for h in (g.get("funcs") or {}) if h == graphs[0]["tasks"][0]["func"]) == 1
    t = graphs[-1]["tasks"][0]
    assert t["kind"] == "py" and len(t["deps"]) == 50 and t["key"].startswith("sum-")
    assert client.dashboard_link == "http://x/status"


def test_errors(client: Client) -> None:
    def divide_by_zero() -> float:
        return 1 / 0

    f = client.submit(divide_by_zero)
    with pytest.raises(ZeroDivisionError) as info:
        f.result(timeout=5)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    # The remote traceback reaches the caller: it names the task's function and its error.
    # (Not its source line: cloudpickle decides the file name that a function pickled by value
    # reports, "<dynamic-code>" since 3.1.3, so the worker cannot show the line.)
    text = str(info.value.__cause__)
    assert "in divide_by_zero" in text and "ZeroDivisionError: division by zero" in text
    # Future.traceback() is a traceback object with the worker's frames (see test_dask_compat_cluster.py)
    assert "in divide_by_zero" in "".join(traceback.format_tb(f.traceback()))
    g = client.submit(inc, f)
    assert isinstance(g.exception(timeout=5), ZeroDivisionError)
    assert client.gather([client.submit(inc, 1), f], errors="skip") == [2]


def test_scatter_and_go(client: Client) -> None:
    arr = np.arange(100)
    f = client.scatter(arr)
    assert client.submit(np.sum, f).result(timeout=5) == arr.sum()
    t = client.scatter(pa.table({"x": [1, 2, 3]}))
    assert client.submit_go("row_count", t).result(timeout=5) == 3
    assert client.submit_go("inc", 1).result(timeout=5) == 2


def test_dask_get(client: Client) -> None:
    x = da.ones((10, 10), chunks=5)
    assert (x + 1).sum().compute(scheduler=client.get) == 200
    assert dask.compute({"a": dask.delayed(add)(1, 2)}, scheduler=client.get) == ({"a": 3},)
    fut = client.compute(x.sum())
    assert fut.result(timeout=5) == 100
    xp = client.persist(x + 1)
    assert (xp * 2).sum().compute(scheduler=client.get) == 400


def test_release_and_cancel(client: Client, fake: FakeCluster) -> None:
    f = client.submit(inc, 99)
    key = f.key
    f.result(timeout=5)
    del f
    gc.collect()
    deadline = time.time() + 5
    while not any(m["op"] == "release_keys" and key in m["keys"] for m in fake.received):
        assert time.time() < deadline
        time.sleep(0.02)
    g = client.submit(inc, 1000)
    client.cancel([g])
    with pytest.raises(CancelledError):
        g.result(timeout=5)


def test_info(client: Client) -> None:
    info = client.scheduler_info()
    (addr,) = info["workers"]
    assert info["workers"][addr]["nthreads"] == 1


def test_bad_token(fake: FakeCluster) -> None:
    with pytest.raises(AuthenticationError):
        Client(fake.scheduler_address, token="nope", timeout=5)
