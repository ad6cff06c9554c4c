"""client.get sends a dask graph in chunks as it pickles it (shoal._dask.task_chunks)."""

from __future__ import annotations

from typing import Any

import pytest

from shoal import Client

from conftest import needs_binary

pytestmark = [needs_binary]


def test_dask_graph_sent_in_many_chunks(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph sent as many update_graph chunks (some cut short by the byte bound) computes
    the same result: the keys later chunks need are held until those are sent."""
    import dask.array as da

    from shoal import _dask

    chunks = _dask.task_chunks

    def small(*a: Any, **k: Any) -> Any:
        return chunks(*a, **{**k, "first": 3, "most": 64, "max_bytes": 20_000})

    monkeypatch.setattr(_dask, "task_chunks", small)
    x = da.arange(3000, chunks=2)
    y = (x * 2 + 1).sum()
    assert y.compute(scheduler=client.get) == y.compute(scheduler="sync")
    assert client.get({"a": 1, "b": (sum, ["a", "a"])}, "b") == 2
    # chunks of a graph whose results are wanted in the middle of the order
    dsk = {f"x-{i}": (sum, [i, 1]) for i in range(300)}
    assert client.get(dsk, [f"x-{i}" for i in range(0, 300, 7)]) == [i + 1 for i in range(0, 300, 7)]
