"""shoal._fuse.fuse_partitions: a partition's single-output region becomes one task, without
costing a partitioned collection its parallelism (no cluster needed: graphs run with dask's
synchronous scheduler)."""

from __future__ import annotations

from operator import add, and_, getitem, gt, lt, mul
from typing import Any, Hashable

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from shoal._fuse import fuse_partitions


def _total(*xs: int) -> int:
    return sum(xs)


def _partition_graph(n: int) -> dict[Hashable, Any]:
    """Per partition i: a frame, two columns, a mask from both (a diamond), the filtered frame
    and its sum; then a tree node summing every partition's sum."""
    from dask._task_spec import Task, TaskRef

    dsk: dict[Hashable, Any] = {}
    for i in range(n):
        df = ("df", i)
        dsk[df] = Task(df, pd.DataFrame, {"a": list(range(10 * i, 10 * i + 10)), "b": [1.0] * 10})
        dsk[("a", i)] = Task(("a", i), getitem, TaskRef(df), "a")
        dsk[("b", i)] = Task(("b", i), getitem, TaskRef(df), "b")
        dsk[("gt", i)] = Task(("gt", i), gt, TaskRef(("a", i)), 3)
        dsk[("lt", i)] = Task(("lt", i), lt, TaskRef(("b", i)), 2.0)
        dsk[("mask", i)] = Task(("mask", i), and_, TaskRef(("gt", i)), TaskRef(("lt", i)))
        dsk[("filt", i)] = Task(("filt", i), getitem, TaskRef(df), TaskRef(("mask", i)))
        dsk[("chunk", i)] = Task(("chunk", i), lambda f: int(f.a.sum()), TaskRef(("filt", i)))
    dsk[("total", 0)] = Task(("total", 0), _total, *[TaskRef(("chunk", i)) for i in range(n)])
    return dsk


def test_a_partitions_diamond_becomes_one_task_and_the_reduction_keeps_its_inputs_apart() -> None:
    dsk = _partition_graph(3)
    fused = fuse_partitions(dsk, [("total", 0)])
    # one task per partition (under its top key, the chunk) and the tree node: the total does
    # not absorb partition 0's chunk, which would then wait for the other partitions
    assert sorted(fused, key=str) == sorted([("chunk", 0), ("chunk", 1), ("chunk", 2), ("total", 0)], key=str)
    assert fused[("total", 0)].dependencies == {("chunk", i) for i in range(3)}
    assert all(fused[("chunk", i)].dependencies == frozenset() for i in range(3))
    want = sum(x for x in range(30) if x > 3)
    assert dask.get(fused, [("total", 0)]) == dask.get(dsk, [("total", 0)]) == (want,)


def test_wanted_keys_and_ineligible_nodes_stay_tasks() -> None:
    dsk = _partition_graph(2)
    fused = fuse_partitions(dsk, [("total", 0), ("mask", 1)])
    assert ("mask", 1) in fused and ("mask", 0) not in fused
    assert ("mask", 1) in fused[("chunk", 1)].dependencies
    got = dask.get(fused, [("total", 0), ("mask", 1)])
    assert got[0] == sum(x for x in range(20) if x > 3) and list(got[1]) == [True] * 10
    # nodes outside `eligible` join no group
    keep = fuse_partitions(dsk, [("total", 0)], eligible={k for k in dsk if k[0] != "df"})
    assert ("df", 0) in keep and ("df", 1) in keep


def test_other_partitions_are_not_fused_except_along_a_chain() -> None:
    from dask._task_spec import Task, TaskRef

    dsk = {
        ("x", 0): Task(("x", 0), add, 1, 1),
        ("x", 1): Task(("x", 1), add, 2, 2),
        ("y", 0): Task(("y", 0), mul, TaskRef(("x", 1)), 10),  # a chain across partitions
        ("z", 0): Task(("z", 0), add, TaskRef(("x", 0)), TaskRef(("y", 0))),
    }
    fused = fuse_partitions(dsk, [("z", 0)])
    # x0 joins z (same partition; z reads no other partition of x); y0 absorbs x1 along a
    # chain, then joins z (same partition): one task, and nothing is computed twice
    assert list(fused) == [("z", 0)]
    assert dask.get(fused, [("z", 0)]) == dask.get(dsk, [("z", 0)]) == (2 + 40,)


def test_delayed_keys_fuse_only_chains() -> None:
    from dask._task_spec import Task, TaskRef

    dsk = {
        "a": Task("a", add, 1, 2),
        "b": Task("b", mul, TaskRef("a"), 10),  # a -> b: a chain
        "c": Task("c", add, 5, 5),
        "d": Task("d", add, TaskRef("b"), TaskRef("c")),  # b and c may run on two workers
    }
    fused = fuse_partitions(dsk, ["d"])
    assert sorted(fused) == ["b", "c", "d"]
    assert dask.get(fused, ["d"]) == (40,)


def test_a_dataframe_query_gives_the_same_answer_in_fewer_tasks() -> None:
    pdf = pd.DataFrame({"k": np.arange(1000) % 7, "x": np.arange(1000.0), "y": np.arange(1000.0) % 3})
    df = dd.from_pandas(pdf, npartitions=4)
    q = df[(df.x > 100) & (df.y < 2)]
    q = q.assign(z=q.x * (1 - q.y)).groupby("k").z.sum()
    from dask._task_spec import convert_legacy_graph

    graph = convert_legacy_graph(dict(q.__dask_graph__()))
    keys = [q.__dask_keys__()[0]] if isinstance(q.__dask_keys__()[0], tuple) else q.__dask_keys__()
    fused = fuse_partitions(graph, keys)
    assert len(fused) < len(graph)
    got = dask.get(fused, keys)[0]
    want = pdf[(pdf.x > 100) & (pdf.y < 2)].assign(z=lambda f: f.x * (1 - f.y)).groupby("k").z.sum()
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_names=False)


def test_a_cycle_leaves_the_graph_alone() -> None:
    from dask._task_spec import Task, TaskRef

    dsk = {("p", 0): Task(("p", 0), add, TaskRef(("q", 0)), 1), ("q", 0): Task(("q", 0), add, TaskRef(("p", 0)), 1)}
    assert fuse_partitions(dsk, [("p", 0)]) == dsk
