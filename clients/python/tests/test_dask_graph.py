"""Dask graphs → py tasks → the real executor, evaluated in dependency order by a harness.

This checks the whole Python side of ``client.get`` without the Go binary: graph conversion,
payload pickling, Ref substitution, value encodings, and execute_node.
"""

from __future__ import annotations

from operator import add, mul
from typing import Any, Hashable, Iterator

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from shoal import _dask, _keys, _refs, _serialize
from shoal._chunk import EncodedTasks
from shoal.client import _split_batches, _toposort

from harness import FakeWorker


@pytest.fixture(scope="module")
def worker() -> Iterator[FakeWorker]:
    w = FakeWorker()
    yield w
    w.close()


def task_chunks(*args: Any, **kw: Any) -> Iterator[tuple[list[dict[str, Any]], list[str], bool]]:
    """_dask.task_chunks, lazily, with a chunk the compiled path encoded decoded into the task
    dicts the scheduler reads (test_speedups checks those bytes against the Python path's)."""
    for tasks, frontier, last in _dask.task_chunks(*args, **kw):
        yield (tasks.decode() if isinstance(tasks, EncodedTasks) else tasks), frontier, last


def run_graph(worker: FakeWorker, dsk: Any, keys: Any) -> Any:
    graph = _dask.normalize_graph(dsk)
    data = _keys.dumps_callable(_dask.execute_node)
    fhash = _keys.func_hash(data)
    funcs = {fhash: data}
    tasks = _toposort(_dask.graph_to_tasks(graph, fhash, funcs=funcs))
    store: dict[str, tuple[str, list[Any]]] = {}
    for t in tasks:
        h, frames = worker.run_task(t, funcs, store)
        assert h["op"] == "done", h.get("error", {}).get("traceback")
        store[t["key"]] = (h["items"][0]["encoding"], list(frames))
    flat = list(_dask.flatten_keys(keys))
    values = {k: _serialize.decode(*store[_keys.wire_key(k)]) for k in flat}
    return _dask.repack(keys, values)


def shoal_compute(worker: FakeWorker, *collections: Any) -> Any:
    return dask.compute(*collections, scheduler=lambda dsk, keys, **kw: run_graph(worker, dsk, keys))


def test_legacy_tuple_graph(worker: FakeWorker) -> None:
    dsk = {
        "x": 1,
        "y": (add, "x", 10),
        ("z", 0): (sum, ["x", "y", (mul, "y", 2)]),
        ("z", 1): (lambda a, b: [a, b], ("z", 0), [1, ["y"]]),
        "alias": "y",
    }
    out = run_graph(worker, dsk, [[("z", 0), ("z", 1)], "alias"])
    assert out == [list(r) if isinstance(r, tuple) else r for r in dask.get(dsk, [[("z", 0), ("z", 1)], "alias"])]
    assert out == [[34, [34, [1, [11]]]], 11]


def test_task_spec_graph(worker: FakeWorker) -> None:
    from dask._task_spec import Alias, DataNode, Dict, List, Task, TaskRef

    dsk = {
        "a": DataNode("a", 5),
        "b": Task("b", add, TaskRef("a"), 1),
        "c": Task("c", lambda xs, d: sum(xs) + d["k"], List(TaskRef("a"), TaskRef("b")),
                  Dict(k=TaskRef("b"))),
        "d": Alias("d", "c"),
    }
    assert run_graph(worker, dsk, ["c", "d"]) == [17, 17]


def test_delayed(worker: FakeWorker) -> None:
    @dask.delayed
    def f(x: int) -> int:
        return x * 3

    total = dask.delayed(sum)([f(i) for i in range(10)])
    (out,) = shoal_compute(worker, total)
    assert out == dask.compute(total, scheduler="sync")[0] == 135


def test_array(worker: FakeWorker) -> None:
    x = da.random.RandomState(0).random((60, 60), chunks=(20, 20))
    y = (x @ x.T).mean(axis=0)
    (out,) = shoal_compute(worker, y)
    np.testing.assert_allclose(out, y.compute(scheduler="sync"))


def test_dataframe(worker: FakeWorker) -> None:
    rng = np.random.default_rng(1)
    pdf = pd.DataFrame({"k": rng.integers(0, 5, 200), "v": rng.random(200),
                        "s": [f"s{i % 7}" for i in range(200)]})
    other = pd.DataFrame({"k": range(5), "name": [f"n{i}" for i in range(5)]})
    df = dd.from_pandas(pdf, npartitions=4)
    odf = dd.from_pandas(other, npartitions=2)
    g = df.groupby("k").v.agg(["sum", "mean", "count"])
    m = df.merge(odf, on="k", how="inner")
    s = df.set_index("v")
    got = shoal_compute(worker, g, m, s)
    want = dask.compute(g, m, s, scheduler="sync")
    pd.testing.assert_frame_equal(got[0], want[0])
    pd.testing.assert_frame_equal(got[1].sort_values(["k", "v"]).reset_index(drop=True),
                                  want[1].sort_values(["k", "v"]).reset_index(drop=True))
    pd.testing.assert_frame_equal(got[2], want[2])


def test_toposort_and_batches() -> None:
    tasks = [{"key": "c", "deps": ["b"], "payload": b"x" * 10},
             {"key": "b", "deps": ["a"], "payload": b"x" * 10},
             {"key": "a", "payload": b"x" * 10}]
    order = [t["key"] for t in _toposort(tasks)]
    assert order == ["a", "b", "c"]
    assert len(_split_batches(tasks)) == 1


def test_wire_keys_and_groups() -> None:
    assert _keys.wire_key("x-1") == "x-1"
    assert _keys.wire_key(("x-1", 0, 2)) == "('x-1', 0, 2)"
    graph = _dask.normalize_graph({("sum-abc123", 0): (sum, [1, 2])})
    (task,) = _dask.graph_to_tasks(graph, "h")
    assert task["group"] == "sum" and task["kind"] == "py" and task["func"] == "h"


def test_paused_gc_restores_the_collector() -> None:
    import gc

    assert gc.isenabled()
    with _dask.paused_gc():
        assert not gc.isenabled()
        with _dask.paused_gc():  # nested (or another thread's) pause
            assert not gc.isenabled()
        assert not gc.isenabled()  # still inside the outer one
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with _dask.paused_gc():
            raise RuntimeError("conversion failed")
    assert gc.isenabled()
    gc.disable()  # an application that runs without the collector keeps it off
    try:
        with _dask.paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_groups_are_dasks_key_split() -> None:
    from dask.utils import key_split

    group = _dask._group_namer()
    keys: list[Any] = ["tree-1-3-55", "tree-1-3-56", "x", "x-1", "x-1-2-3", ("x-2", 1), "('x-2', 1)",
                       "hello-world-1", "ae05086432ca935f6eba409a8ecd4896", "x-abcdefab", "_(x)",
                       "a-b-c-12", "1-2", "-5", "x--3", "x-abcdefab-3", "x-y-3-z-4", "5", "a-b1-2",
                       b"hello-world-1", 7, None, ("a", 1)]
    for k in keys + keys:  # twice: the second time from the cache
        assert group(k) == key_split(k), k


def test_task_chunks_hold_few_keys_of_a_reduction() -> None:
    """A reduction's chunks are subtrees: later chunks need about one key per level of each
    earlier chunk, not every leaf (each held key costs the client a future and a message)."""
    leaves = 1024
    dsk: dict[str, Any] = {f"l-{i}": (add, i, 1) for i in range(leaves)}
    level = list(dsk)
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = [f"n-{depth}-{i}" for i in range(len(level) // 2)]
        dsk.update({k: (add, level[2 * i], level[2 * i + 1]) for i, k in enumerate(nxt)})
        level = nxt
    chunks = list(task_chunks(_dask.normalize_graph(dsk), "h", first=64, most=256))
    assert len(chunks) > 3
    assert max(len(frontier) for _, frontier, _ in chunks) <= depth + 1


def test_plain_calls_are_converted_as_they_are_sent(worker: FakeWorker, monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph of plain calls is converted node by node as task_chunks reaches it: its first
    chunk leaves after converting about that chunk, not the whole graph. Its chunks obey the
    same rules as a converted graph's, and give dask's answer; a node a literal payload cannot
    carry is converted by dask; one node that is not a plain call converts the graph whole."""
    leaves = 2048
    dsk: dict[Any, Any] = {("leaf", i): (add, i, 1) for i in range(leaves)}
    level = list(dsk)
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = [("sum", depth, i) for i in range(len(level) // 2)]
        dsk.update({k: (add, level[2 * i], level[2 * i + 1]) for i, k in enumerate(nxt)})
        level = nxt
    dsk["big"] = (add, 1 << 70, ("leaf", 3))  # beyond msgpack: dask converts this one
    root = level[0]
    graph = _dask.normalize_graph(dsk)
    assert isinstance(graph, _dask.PlainCalls)
    assert type(graph["big"]).__name__ != "DirectCall" and type(graph[root]).__name__ == "DirectCall"

    converted: list[Any] = []
    real = _dask.direct_call

    def counting(node: Any, *a: Any) -> Any:
        converted.append(node)
        return real(node, *a)

    monkeypatch.setattr(_dask, "direct_call", counting)
    chunks_iter = task_chunks(graph, "h", first=64, most=256)
    first = next(chunks_iter)
    assert len(first[0]) == 64
    assert len(converted) <= 64 + depth + 2, "the first chunk converted more than its nodes and its walk"
    chunks = [first, *chunks_iter]
    assert len(converted) <= len(dsk) + depth + len(chunks)  # each node about once
    monkeypatch.undo()
    check_chunks(graph, chunks)
    assert max(len(frontier) for _, frontier, _ in chunks) <= depth + 2

    data = _keys.dumps_callable(_dask.execute_node)
    fhash = _keys.func_hash(data)
    funcs = {fhash: data}
    store: dict[str, tuple[str, list[Any]]] = {}
    for tasks, _, _ in task_chunks(graph, fhash, funcs=funcs, first=64, most=256):
        for t in tasks:
            h, frames = worker.run_task(t, funcs, store)
            assert h["op"] == "done", h.get("error", {}).get("traceback")
            store[t["key"]] = (h["items"][0]["encoding"], list(frames))
    got = {k: _serialize.decode(*store[_keys.wire_key(k)]) for k in (root, "big")}
    assert got == dict(zip((root, "big"), dask.get(dsk, [root, "big"])))
    assert got[root] == sum(range(1, leaves + 1))

    dsk["x"] = (sum, [("leaf", 0), ("leaf", 1)])  # a list of keys: not a plain call
    assert type(_dask.normalize_graph(dsk)) is _dask.Converted  # converted whole


def concat(*a: Any) -> tuple[Any, ...]:
    return a


def test_direct_calls(worker: FakeWorker) -> None:
    """Plain legacy calls over keys and literals skip dask's node objects, and give what dask
    gives, including dask's rules for which arguments are keys."""
    dsk: dict[Any, Any] = {
        "a": 1,
        1: 100,                          # an int key: the argument 1 below refers to it
        ("t", 0): (add, "a", 2),         # direct: a key and a literal
        "s": (concat, "a", "not-a-key", 1, 2.5, None, False, b"x", ("t", 0)),
        "nested": (add, (mul, "a", 3), 1),    # a nested call: general path
        "listarg": (sum, ["a", ("t", 0)]),    # a list of keys: general path
        "dictarg": (dict, {"k": "a"}),        # a dict argument: general path
        "lit": (concat, (1, 2)),              # a tuple that is not a key: general path
        "alias": "s",
    }
    graph = _dask.normalize_graph(dsk)
    kinds = {k: type(v).__name__ for k, v in graph.items()}
    assert kinds[("t", 0)] == kinds["s"] == "DirectCall"
    assert all(kinds[k] != "DirectCall" for k in ("a", 1, "nested", "listarg", "dictarg", "lit", "alias"))
    deps = graph["s"].dependencies  # type: ignore[attr-defined]
    assert sorted(map(repr, deps)) == sorted(map(repr, ["a", 1, ("t", 0)]))  # each once
    funcs: dict[str, bytes] = {}
    tasks = _dask.graph_to_tasks(graph, "h", funcs=funcs)
    by_key = {t["key"]: t for t in tasks}
    assert by_key["s"]["func"] == _keys.func_hash(_keys.dumps_callable(concat))
    assert by_key["s"]["func"] in funcs and "h" not in funcs
    assert sorted(by_key["s"]["deps"]) == sorted(["a", "1", _keys.wire_key(("t", 0))])
    keys = [("t", 0), "s", "nested", "listarg", "dictarg", "lit", "alias"]
    out = run_graph(worker, dsk, keys)
    assert out == list(dask.get(dsk, keys))
    # "a": 1 is an alias of the key 1 (dask's rule), so "a" is 100 too
    assert out[1] == (100, "not-a-key", 100, 2.5, None, False, b"x", 102)


@pytest.mark.parametrize("plain", [True, False], ids=["plain-calls", "general"])
def test_a_dependency_equal_to_a_key_of_another_type_names_that_key(worker: FakeWorker, plain: bool) -> None:
    """dask takes an argument equal to a key for that key (``1.0`` and ``True`` for the key
    ``1``, ``("t", 0.0)`` for ``("t", 0)``): the task depends on that key's wire key, not on
    one made from the argument's own repr, which no task defines."""
    dsk: dict[Any, Any] = {
        1: (add, 40, 2),
        ("t", 0): (add, 1, 1),
        "f": (add, 1.0, 3),
        "b": (add, True, 0),
        "tf": (add, ("t", 0.0), 2),
    }
    if not plain:
        dsk["nested"] = (add, (mul, 1.0, 2), 1)  # not a plain call: dask converts the graph
    graph = _dask.normalize_graph(dsk)
    assert isinstance(graph, _dask.PlainCalls) == plain
    by_key = {t["key"]: t for t in _dask.graph_to_tasks(graph, "h", funcs={})}
    assert list(by_key["f"]["deps"]) == list(by_key["b"]["deps"]) == ["1"]
    assert list(by_key["tf"]["deps"]) == [_keys.wire_key(("t", 0))]
    assert not _dask.external_keys(graph)
    keys = [k for k in dsk if k != 1]
    assert run_graph(worker, dsk, keys) == list(dask.get(dsk, keys))


def test_direct_calls_send_literal_payloads(worker: FakeWorker) -> None:
    """A direct call's payload is a literal one: a zero byte, then msgpack of the arguments with
    each dependency's wire key at the positions listed; the executor puts the values there.
    Every literal type keeps its type (str and bytes apart, bool apart from int); an int msgpack
    cannot carry takes the general path instead."""
    big = 1 << 70
    dsk: dict[Any, Any] = {
        ("k", 1): (add, 2, 3),
        "twice": (concat, ("k", 1), ("k", 1), "k-1", True, 1.5, b"\x00b", None, -(1 << 63), (1 << 64) - 1),
        "big": (add, big, ("k", 1)),
        "surrogate": (add, "x\udc80", "y"),  # not UTF-8: msgpack refuses it, pickle does not
    }
    graph = _dask.normalize_graph(dsk)
    assert type(graph["big"]).__name__ != "DirectCall"
    assert type(graph["surrogate"]).__name__ != "DirectCall"
    twice = graph["twice"]
    assert type(twice).__name__ == "DirectCall"
    payload = twice.payload  # type: ignore[attr-defined]
    assert payload[:1] == b"\x00"
    wk = _keys.wire_key(("k", 1))
    assert list(twice.wire_deps) == [wk]  # type: ignore[attr-defined]
    assert _refs.load_literal(payload) == (wk, wk, "k-1", True, 1.5, b"\x00b", None,
                                                   -(1 << 63), (1 << 64) - 1)
    args = _refs.load_literal(payload, {wk: 5})
    assert args[:2] == (5, 5) and type(args[3]) is bool and type(args[5]) is bytes
    from shoal.executor import load_payload
    assert load_payload(payload, {wk: 5}) == (args, {})
    assert load_payload(graph[("k", 1)].payload, {}) == ((2, 3), {})  # type: ignore[attr-defined]
    out = run_graph(worker, dsk, ["twice", "big", "surrogate"])
    assert out == list(dask.get(dsk, ["twice", "big", "surrogate"]))
    assert out[0][:3] == (5, 5, "k-1") and out[1] == big + 5 and out[2] == "x\udc80y"


def test_task_chunks_name_direct_call_functions() -> None:
    dsk = {f"x-{i}": (add, i, 1) for i in range(50)}
    dsk.update({f"y-{i}": (mul, f"x-{i}", 2) for i in range(50)})
    graph = _dask.normalize_graph(dsk)
    funcs: dict[str, bytes] = {}
    calls: list[Any] = []

    def func_of(fn: Any) -> tuple[str, bytes]:
        calls.append(fn)
        data = _keys.dumps_callable(fn)
        return _keys.func_hash(data), data

    chunks = list(task_chunks(graph, "h", first=7, most=20, funcs=funcs, func_of=func_of))
    assert calls == [add, mul] or calls == [mul, add]  # each function named once
    assert {t["func"] for tasks, _, _ in chunks for t in tasks} == set(funcs)


def check_chunks(graph: Any, chunks: list[tuple[list[dict[str, Any]], list[str], bool]]) -> None:
    """Chunks of ``graph`` cover every task once, only the last is last, each task comes after
    its dependencies, and each chunk's frontier is exactly its keys that later chunks need."""
    assert [last for _, _, last in chunks] == [False] * (len(chunks) - 1) + [True]
    seen: set[str] = set()
    all_keys = [t["key"] for tasks, _, _ in chunks for t in tasks]
    assert len(all_keys) == len(set(all_keys)) == len(_dask.graph_to_tasks(graph, "h"))
    for i, (tasks, frontier, _) in enumerate(chunks):
        for t in tasks:
            assert all(d in seen for d in t.get("deps", ())), "a dependency comes later"
            seen.add(t["key"])
        later = {d for tl, _, _ in chunks[i + 1:] for t in tl for d in t.get("deps", ())}
        assert sorted(frontier) == sorted({t["key"] for t in tasks} & later)


def test_task_chunks_order_and_frontier(worker: FakeWorker) -> None:
    """Chunks come in dependency order, cover every task once, grow, and each one's frontier
    is exactly the keys later chunks depend on; running them chunk by chunk gives dask's
    answer."""
    x = da.arange(300, chunks=3)
    s = (x + 1).sum()
    expr, keys = _dask.collections_to_graph([s], True, True)
    graph = _dask.normalize_graph(expr)

    def check(chunks: list[tuple[list[dict[str, Any]], list[str], bool]]) -> None:
        check_chunks(graph, chunks)

    chunks = list(task_chunks(graph, "h", first=7, most=40))
    check(chunks)
    sizes = [len(tasks) for tasks, _, _ in chunks]
    assert sizes[0] <= 7 and max(sizes) <= 40 and len(chunks) > 3
    # a byte bound cuts chunks short (but never below one task)
    biggest = max(len(t["payload"]) for tasks, _, _ in chunks for t in tasks) + 200
    chunks = list(task_chunks(graph, "h", first=50, most=50, max_bytes=3 * biggest))
    check(chunks)
    assert all(sum(len(t["payload"]) + 200 for t in tasks) <= 3 * biggest for tasks, _, _ in chunks)
    assert all(len(tasks) >= 1 for tasks, _, _ in chunks)
    check(list(task_chunks(graph, "h", max_bytes=1)))
    # evaluated in chunk order, the graph gives the right sum
    data = _keys.dumps_callable(_dask.execute_node)
    fhash = _keys.func_hash(data)
    store: dict[str, tuple[str, list[Any]]] = {}
    for tasks, _, _ in task_chunks(graph, fhash, first=7, most=40):
        for t in tasks:
            h, frames = worker.run_task(t, {fhash: data}, store)
            assert h["op"] == "done", h.get("error", {}).get("traceback")
            store[t["key"]] = (h["items"][0]["encoding"], list(frames))
    (key,) = _dask.flatten_keys(keys)
    assert _serialize.decode(*store[_keys.wire_key(key)]) == sum(range(1, 301))
    # a graph of existing results only still gives one (empty) chunk
    assert list(task_chunks({}, "h")) == [([], [], True)]


def test_dask_defaults_pick_a_shuffle_that_works_across_hosts() -> None:
    from shoal.client import dask_defaults

    def get(*a: Any) -> None:
        return None

    # one machine: the shoal shuffle when it can be used, else dask's own default (the disk
    # shuffle, whose files live in one temporary directory)
    for addr in ("127.0.0.1:8786", "localhost:8786", "tcp://127.0.0.1:1", "[::1]:8786"):
        assert dask_defaults(get, addr, None) == {"scheduler": get}, addr
        assert dask_defaults(get, addr, None, True) == {"scheduler": get,
                                                       "dataframe.shuffle.method": "shoal"}, addr
    # a scheduler reached over the network may have workers on other hosts
    for addr in ("10.0.0.5:8786", "sched.example.org:8786", "tls://192.168.1.2:8786"):
        assert dask_defaults(get, addr, None) == {"scheduler": get,
                                                 "dataframe.shuffle.method": "tasks"}, addr
        assert dask_defaults(get, addr, None, True)["dataframe.shuffle.method"] == "tasks"
    # the user's choice wins
    assert dask_defaults(get, "10.0.0.5:8786", "p2p") == {"scheduler": get}
    assert dask_defaults(get, "127.0.0.1:8786", "disk", True) == {"scheduler": get}


# -------------------------------------------------------------------------------------------
# linear fusion of task-spec graphs


def _chain_graph() -> dict[Hashable, Any]:
    """Task-spec nodes: a -> b -> c -> d, c -> e (so c has two dependents), f alone,
    g <- (d, f)."""
    from dask._task_spec import Task, TaskRef

    return {
        "a": Task("a", add, 1, 2),
        "b": Task("b", mul, TaskRef("a"), 10),
        "c": Task("c", add, TaskRef("b"), 1),
        "d": Task("d", mul, TaskRef("c"), 2),
        "e": Task("e", add, TaskRef("c"), 5),
        "f": Task("f", add, 100, 0),
        "g": Task("g", add, TaskRef("d"), TaskRef("f")),
    }


def test_fuse_linear_fuses_chains_only() -> None:
    dsk = _chain_graph()
    fused = _dask.fuse_linear(dsk, ["g", "e"])
    # a -> b -> c is one chain, kept under c's key. c has two dependents, so d (whose only
    # dependency it is) cannot absorb it; g has two dependencies and absorbs nothing
    assert sorted(fused) == ["c", "d", "e", "f", "g"]
    assert fused["c"].dependencies == frozenset()
    assert fused["d"].dependencies == {"c"} and fused["g"].dependencies == {"d", "f"}
    got = dask.get(fused, ["g", "e"])
    assert list(got) == list(dask.get(dsk, ["g", "e"])) == [(3 * 10 + 1) * 2 + 100, 31 + 5]
    # a wanted key is never fused away
    assert sorted(_dask.fuse_linear(dsk, ["g", "e", "b"])) == ["b", "c", "d", "e", "f", "g"]
    # nodes outside `eligible` stay as they are
    assert sorted(_dask.fuse_linear(dsk, ["g", "e"], {"b", "c"})) == ["a", "c", "d", "e", "f", "g"]


def _part(i: int) -> pd.DataFrame:
    return pd.DataFrame({"k": np.arange(25) % 7, "x": np.arange(25.0) + 25 * i})


def test_normalize_graph_fuses_task_spec_nodes_not_legacy_tuples(worker: FakeWorker) -> None:
    legacy = {"a": (add, 1, 2), "b": (mul, "a", 10), "c": (add, "b", 1)}
    assert sorted(_dask.normalize_graph(legacy, fuse=["c"])) == ["a", "b", "c"]
    native = _dask.normalize_graph(_chain_graph(), fuse=["g", "e"])
    assert sorted(native) == ["c", "d", "e", "f", "g"]
    # a dataframe's from_map partitions are fused into the task that reads them
    df = dd.from_map(_part, range(4), meta=_part(0).iloc[:0], enforce_metadata=False)
    agg = df.groupby("k").x.sum()
    ex, keys = _dask.collections_to_graph([agg], True, finalize=True)
    flat = list(_dask.flatten_keys(keys))
    plain = _dask.normalize_graph(ex)
    fused = _dask.normalize_graph(ex, fuse=flat)
    # from_map -> (column projection) -> groupby chunk: one task per partition, reading nothing
    chunks = [k for k in fused if str(k[0]).startswith("chunk-")]
    assert len(plain) > len(fused) == len(chunks) + 1 and len(chunks) == 4
    assert all(not fused[k].dependencies for k in chunks)
    got = run_graph(worker, fused, flat)
    pdf = pd.concat([_part(i) for i in range(4)])
    pd.testing.assert_series_equal(got[0], pdf.groupby("k").x.sum())
