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


def test_an_argument_equal_to_a_key_of_another_type_is_that_key(client: Client) -> None:
    """``client.get`` runs a graph whose nodes name the key ``1`` as ``1.0`` or ``True`` (dask
    takes them for it) as dask does: before, the task waited for a key ``"1.0"`` no task
    defines and failed with a missing dependency."""
    import operator

    import dask

    dsk: dict[Any, Any] = {1: (operator.add, 40, 2), "eq-f": (operator.add, 1.0, 3), "eq-b": (operator.add, True, 0),
                           "eq-n": (operator.add, (operator.mul, 1.0, 2), 1)}  # (its last 1 is the key too)
    keys = ["eq-f", "eq-b", "eq-n"]
    assert client.get(dsk, keys) == list(dask.get(dsk, keys)) == [45, 42, 126]
