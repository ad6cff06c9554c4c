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


def inc(x: int) -> int:
    return x + 1


def test_plain_call_graph_through_the_compiled_path(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-built tree of plain calls (million.py's graph, smaller) is sent by the compiled
    conversion (shoal._speedups), in many chunks, and gives dask's answer; literals of every
    kind reach the function as they were written."""
    import operator

    import dask

    from shoal import _dask

    if _dask._speedups is None:
        pytest.skip("shoal._speedups is not built")
    used: list[int] = []
    compiled_chunks, task_chunks = _dask._compiled_chunks, _dask.task_chunks

    def counting(*a: Any, **k: Any) -> Any:
        for chunk in compiled_chunks(*a, **k):
            used.append(len(chunk[0]))
            yield chunk

    monkeypatch.setattr(_dask, "_compiled_chunks", counting)
    monkeypatch.setattr(_dask, "task_chunks", lambda *a, **k: task_chunks(*a, **{**k, "first": 16, "most": 512}))
    leaves = 5000
    dsk: dict[Any, Any] = {("leaf", i): (inc, i) for i in range(leaves)}
    level = list(dsk)
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt: list[Any] = [("sum", depth, i) for i in range(len(level) // 2)]
        dsk.update({k: (operator.add, level[2 * i], level[2 * i + 1]) for i, k in enumerate(nxt)})
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    literals = (None, True, -(1 << 63), (1 << 64) - 1, 2.5, "é" * 40, b"\x00" * 300)
    dsk["lits"] = (lambda *a: a, *literals, level[0])
    assert client.get(dsk, "lits") == (*literals, sum(range(1, leaves + 1))) == dask.get(dsk, "lits")
    assert sum(used) == len(dsk) and len(used) > 5
