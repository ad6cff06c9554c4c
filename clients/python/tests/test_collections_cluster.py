"""Futures inside dask collections, persisted collections, and finding the active client, on a
real LocalCluster; every value is checked against dask's synchronous scheduler."""

from __future__ import annotations

import io

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask import delayed

import shoal
from shoal import Client, futures_of, progress, wait

from conftest import needs_binary

pytestmark = [needs_binary, pytest.mark.cluster]


def inc(x: int) -> int:
    return x + 1


def part(i: int) -> pd.DataFrame:
    return pd.DataFrame({"k": [i % 3] * 4, "v": np.arange(4) + 10 * i})


def test_futures_inside_delayed_dataframe_and_array(client: Client) -> None:
    f = client.submit(inc, 1)
    assert delayed(inc)(f).compute() == delayed(inc)(2).compute(scheduler="sync")
    # nested in containers, and twice in one graph
    assert delayed(sum)([f, f, 3]).compute() == 7

    parts = [client.submit(part, i) for i in range(4)]
    ddf = dd.from_delayed(parts, meta=part(0).iloc[:0])
    want = pd.concat([part(i) for i in range(4)]).groupby("k").v.sum()
    pd.testing.assert_series_equal(ddf.groupby("k").v.sum().compute().sort_index(), want.sort_index())

    blocks = [da.from_delayed(client.submit(np.full, 3, float(i)), shape=(3,), dtype=float) for i in range(3)]
    assert float(da.concatenate(blocks).sum().compute()) == 9.0


def test_persist_wait_progress_and_futures_of(client: Client) -> None:
    pdf = pd.DataFrame({"x": np.arange(100), "y": np.arange(100) % 7})
    ddf = client.persist(dd.from_pandas(pdf, npartitions=5))
    fs = futures_of(ddf)
    assert len(fs) == 5 and all(isinstance(f, shoal.Future) for f in fs)
    done, not_done = wait(ddf)
    assert len(done) == 5 and not not_done
    out = io.StringIO()
    progress(ddf, notebook=False, file=out)
    assert "5/5" in out.getvalue() and "0/0" not in out.getvalue()
    pd.testing.assert_series_equal(ddf.groupby("y").x.sum().compute(),
                                   pdf.groupby("y").x.sum(), check_names=False)
    arr = client.persist(da.arange(20, chunks=5))
    assert len(futures_of(arr)) == 4
    assert int((arr * 2).sum().compute()) == int((da.arange(20, chunks=5) * 2).sum().compute(scheduler="sync"))


def test_the_active_client_is_found(client: Client) -> None:
    assert Client.current() is client
    assert shoal.default_client() is client
    x = da.ones((10, 10), chunks=5).sum()
    assert float(x.compute(scheduler="distributed")) == float(x.compute(scheduler="sync")) == 100.0
    assert float(dask.compute(x, scheduler="dask.distributed")[0]) == 100.0


def test_wait_takes_a_generator(client: Client) -> None:
    fs = [client.submit(inc, i, pure=False) for i in range(5)]
    done, not_done = wait(f for f in fs)
    assert len(done) == 5 and not not_done
    assert all(f.done() for f in fs)
