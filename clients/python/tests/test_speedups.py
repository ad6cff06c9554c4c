"""The compiled conversion of plain-call graphs (``shoal._speedups``) against the Python one.

``make test`` sets ``SHOAL_REQUIRE_SPEEDUPS=1``: there the extension must have been built (the
editable install compiles it); elsewhere these tests skip without it.
"""

from __future__ import annotations

import gc
import math
import operator
import os
import random
import sys
from typing import Any, Hashable, Iterator

import msgpack
import pytest

from shoal import _dask, _refs, _wire
from shoal._chunk import EncodedTasks, Tasks

speedups = _dask._speedups
if speedups is None:
    if os.environ.get("SHOAL_REQUIRE_SPEEDUPS"):
        raise RuntimeError("shoal._speedups is not built (SHOAL_REQUIRE_SPEEDUPS is set): "
                           "`pip install -e .` compiles it, with a C compiler")
    pytest.skip("shoal._speedups is not built", allow_module_level=True)

Chunks = list[tuple[bytes, list[str], bool]]  # (the tasks as sent, frontier, last) per chunk


def inc(x: int) -> int:
    return x + 1


def concat(*a: Any) -> tuple[Any, ...]:
    return a


def chunks(dsk: Any, compiled: bool, **kw: Any) -> tuple[Chunks, dict[str, bytes]]:
    """task_chunks of dsk by the compiled path or the Python one, and the functions named."""
    funcs: dict[str, bytes] = {}
    saved = _dask._speedups
    _dask._speedups = saved if compiled else None
    try:
        graph = _dask.normalize_graph(dsk)
        if compiled:
            assert isinstance(graph, _dask.PlainCalls) and graph.compiled is not None
        out = wired(_dask.task_chunks(graph, "h", funcs=funcs, **kw))
    finally:
        _dask._speedups = saved
    return out, funcs


def wired(chunks: Iterator[tuple[Tasks, list[str], bool]]) -> Chunks:
    """Chunks with their tasks as the bytes the client sends: those the compiled path wrote, or
    the task dicts packed as the client packs them. An EncodedTasks' keys, function names and
    payload size are checked against its tasks."""
    out: Chunks = []
    for tasks, frontier, last in chunks:
        if isinstance(tasks, EncodedTasks):
            dicts = tasks.decode()
            assert tasks.keys == [t["key"] for t in dicts] and len(tasks) == len(dicts)
            assert tasks.funcs == {t["func"] for t in dicts}
            assert tasks.payload_bytes == sum(len(t["payload"]) for t in dicts)
            out.append((tasks.wire, frontier, last))
        else:
            out.append((_wire.packb(tasks), frontier, last))
    return out


def decoded(chunks: Chunks) -> list[list[dict[str, Any]]]:
    """The task dicts of each chunk, as the scheduler reads them."""
    return [msgpack.unpackb(w, raw=False) for w, _, _ in chunks]


def tuple_key(*parts: Any) -> Hashable:
    return parts


def str_key(*parts: Any) -> Hashable:
    return "-".join(map(str, parts))


def tree(leaves: int, key: Any = tuple_key) -> tuple[dict[Hashable, Any], Hashable]:
    """million.py's graph: (inc, i) leaves and a pairwise (add, a, b) tree over them."""
    dsk: dict[Hashable, Any] = {key("leaf", i): (inc, i) for i in range(leaves)}
    level = list(dsk)
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt: list[Hashable] = [key("sum", depth, i) for i in range(len(level) // 2)]
        dsk.update({k: (operator.add, level[2 * i], level[2 * i + 1]) for i, k in enumerate(nxt)})
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return dsk, level[0]


LITERALS: list[Any] = [
    None, True, False, 0, 1, 127, 128, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32, (1 << 63) - 1,
    1 << 63, (1 << 64) - 1, -1, -32, -33, -128, -129, -32768, -32769, -(1 << 31), -(1 << 31) - 1,
    -(1 << 63), 0.0, -0.0, 1.5, math.inf, -math.inf, 1e300, "", "a" * 31, "b" * 32, "c" * 255,
    "d" * 256, "e" * 65535, "f" * 65536, "é∑😀", b"", b"x" * 255, b"y" * 256, b"z" * 65536,
]


def test_literal_payloads_are_msgpacks() -> None:
    """The C encoder writes each literal as msgpack-python does, byte for byte."""
    pack = _refs.literal_packer()
    for v in LITERALS:
        assert speedups.literal_payload([v], []) == _refs.literal_payload([v], [], pack), repr(v)[:40]
    assert speedups.literal_payload(LITERALS, [0, 3]) == _refs.literal_payload(LITERALS, [0, 3], pack)
    many = list(range(70000))  # an array32 header
    assert speedups.literal_payload(many, list(range(20))) == _refs.literal_payload(many, list(range(20)), pack)
    nan = speedups.literal_payload([math.nan], [])
    assert math.isnan(msgpack.unpackb(nan[1:])[0][0])
    for bad in (1 << 64, -(1 << 63) - 1, "\udc80", [1], 1.5j):
        with pytest.raises(TypeError):
            speedups.literal_payload([bad], [])


def graphs() -> Iterator[tuple[str, dict[Hashable, Any]]]:
    dsk, _ = tree(1000)
    yield "tree of tuple keys", dsk
    yield "tree of str keys", tree(601, str_key)[0]
    yield "every literal", {("lit", i): (concat, v, i) for i, v in enumerate(LITERALS)}
    yield "keys of every type", {
        "a": (inc, 1), 7: (concat, "a", "a", 2), ("t", 0): (concat, 7, "a", 7, "nokey", None),
        -3: (concat,), "b": (concat, ("t", 0), -3, b"bytes", 2.5, False), ("t", 1, "x"): (inc, 5),
    }
    # more functions than the compiled path caches at once
    fns = [lambda x, i=i: x + i for i in range(20)]
    dsk = {f"f-{i}": (fns[i % 20], i) for i in range(200)}
    dsk.update({f"g-{i}": (fns[(i * 7) % 20], f"f-{i}") for i in range(200)})
    yield "twenty functions", dsk
    yield "a cycle", {"x": (inc, "y"), "y": (inc, "x"), "z": (inc, "x")}
    yield "empty", {}


@pytest.mark.parametrize("name,dsk", list(graphs()), ids=[n for n, _ in graphs()])
@pytest.mark.parametrize("sizes", [dict(first=7, most=50), dict(first=500, most=20_000, max_bytes=3_000)],
                         ids=["by-count", "by-bytes"])
def test_compiled_chunks_are_the_python_chunks(name: str, dsk: dict[Hashable, Any], sizes: dict[str, int]) -> None:
    """Same tasks, same order, same cuts, same frontiers, same functions, with annotations."""
    ann = {"priority": 3, "retries": 2}
    got, got_funcs = chunks(dsk, True, annotations=ann, **sizes)
    want, want_funcs = chunks(dsk, False, annotations=ann, **sizes)
    assert got == want
    assert got_funcs == want_funcs
    assert sum(len(t) for t in decoded(got)) == len(dsk)
    if "max_bytes" in sizes and len(dsk) > 100:
        assert len(got) > 3  # cut by size, not only by count


def test_tuple_keys_are_named_by_their_repr() -> None:
    """The compiled path writes the repr of a tuple of ints and plain strs itself; every key,
    of that shape or not, gets exactly repr(key) as its wire key."""
    parts: list[Any] = [0, 1, -1, 7, 1 << 62, -(1 << 63), (1 << 63) - 1, 1 << 63, 1 << 80, -(1 << 80), True, False,
                        None, 2.5, "", "x", "sum-1", "a b", 'say "hi"', "it's", "back\\slash", "tab\t", "\x7f",
                        "\x1f", "ü", "日本", "\udc80x", b"b", ("nested", 1), "z" * 300]
    rng = random.Random(5)
    keys: list[Hashable] = [(p,) for p in parts] + [("k", p, i) for i, p in enumerate(parts)]
    keys += [tuple(rng.choice(parts) for _ in range(rng.randint(1, 20))) for _ in range(400)]
    keys += [(), ("a",) * 16, ("a",) * 17, tuple(range(16)), ("y" * 120, "z" * 120, 3)]
    keys = list(dict.fromkeys(keys))  # (equal keys, such as 1 and True, are one key)
    dsk: dict[Hashable, Any] = {k: (inc, i) for i, k in enumerate(keys)}
    ok = {k: v for k, v in dsk.items() if speedups.plain_graph({k: v}) is not None}
    assert len(ok) > len(dsk) - 10  # (keys whose repr msgpack cannot carry are declined)
    g = speedups.plain_graph(ok)
    assert g is not None
    _, got, _, _, _, last = g.plain_wire(len(ok), 1 << 30, lambda fn: "f", lambda k: "g", b"", 0)
    assert last and sorted(got) == sorted(map(repr, ok))


@pytest.mark.parametrize("node", [
    (operator.add, True, 1),       # a bool equal to the key 1
    (operator.add, 1.0, 2),        # a float equal to it
    (operator.add, 1 << 70, 2),    # an int beyond msgpack
    (operator.add, "\udc80", 2),   # a str msgpack refuses
    (sum, [1, 2]),                 # a list
    (operator.add, ("u", [1]), 2),  # an unhashable tuple
    (operator.add, (1, 2), 2),     # a tuple that is not a key
    (operator.add, b"k", 2),       # bytes equal to a key
    (operator.add, None, 2),       # None equal to a key
    ("notcallable", 1),
    5,                             # not a call at all
    (operator.add, 1.5j, 2),       # an argument of another type
], ids=repr)
def test_compiled_path_declines_what_python_decides(node: Any) -> None:
    """A graph the C path would not send as written comes back None from plain_graph; the Python
    path then converts it as before."""
    dsk: dict[Hashable, Any] = {1: (inc, 0), b"k": (inc, 1), None: (inc, 2), "n": node}
    assert speedups.plain_graph(dsk) is None
    assert not isinstance(_dask.normalize_graph(dsk), _dask.PlainCalls) or \
        _dask.normalize_graph(dsk).compiled is None  # type: ignore[union-attr]


def test_compiled_graph_is_a_snapshot() -> None:
    """The graph changed (even emptied) between normalize_graph and its chunks changes nothing."""
    dsk, _ = tree(300)
    want, _ = chunks(dict(dsk), False, first=16, most=64)
    graph = _dask.normalize_graph(dsk)
    assert isinstance(graph, _dask.PlainCalls) and graph.compiled is not None
    dsk.clear()
    dsk["junk"] = (inc, [object()])
    got = wired(_dask.task_chunks(graph, "h", funcs={}, first=16, most=64))
    assert got == want
    # the graph is walked by the compiled path once; another walk takes the Python path
    assert graph.compiled is None


def test_compiled_conversion_keeps_no_references() -> None:
    """Once the chunks and the graph are dropped, every key, argument and function has the
    references it had before (nothing leaked, nothing freed twice): three conversions, after a
    first one that fills dask's caches."""
    name = "leaf-name-" + str(os.getpid())
    key = (name, 1)
    arg = "a literal str " + str(os.getpid())
    fn = lambda x, y: x  # noqa: E731
    dsk: dict[Hashable, Any] = {key: (fn, arg, 3), (name, 2): (fn, key, key)}
    chunks(dsk, True)  # dask's key_split keeps the names it has split
    gc.collect()
    before = [sys.getrefcount(x) for x in (name, key, arg, fn)]
    for _ in range(3):
        out, _ = chunks(dsk, True, first=1, most=1)
        tasks = decoded(out)
        assert [t["key"] for c in tasks for t in c] == [repr(key), repr((name, 2))]
        assert tasks[1][0]["deps"] == [repr(key)]  # named twice, a dependency once
        del tasks
        del out
    gc.collect()
    assert [sys.getrefcount(x) for x in (name, key, arg, fn)] == before


def test_needed_counts_match() -> None:
    """PlainCalls made by the compiled path still answers what the Python one does."""
    dsk, root = tree(100)
    dsk["twice"] = (operator.add, ("leaf", 0), ("leaf", 0))
    compiled = _dask.normalize_graph(dsk)
    saved = _dask._speedups
    _dask._speedups = None
    try:
        python = _dask.normalize_graph(dsk)
    finally:
        _dask._speedups = saved
    assert isinstance(compiled, _dask.PlainCalls) and isinstance(python, _dask.PlainCalls)
    assert compiled.needed == python.needed
    assert dict(compiled.wire) == dict(python.wire)
    assert [k for k, _ in _dask.node_order(compiled)] == [k for k, _ in _dask.node_order(python)]



def test_callbacks_cannot_break_the_compiled_graph() -> None:
    """Code the conversion runs (a key's __repr__, the namers) that calls plain_wire again,
    empties the graph's containers or raises gets an error, never a crash, and a chunk that
    failed part-way is not silently skipped by the next call."""
    g = speedups.plain_graph({f"k-{i}": (inc, i) for i in range(10)})
    assert g is not None

    def reenter(fn: Any) -> str:
        return g.plain_wire(1, 1 << 20, str, str, b"", 0)[1][0]

    with pytest.raises(RuntimeError, match="called again while it runs"):
        g.plain_wire(5, 1 << 20, reenter, str, b"", 0)

    calls = 0

    def fails_on_the_fourth(key: Any) -> str:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise KeyError("boom")
        return "g"

    g = speedups.plain_graph({f"k-{i}": (inc, i) for i in range(10)})
    assert g is not None
    with pytest.raises(KeyError, match="boom"):
        g.plain_wire(10, 1 << 20, lambda fn: "f", fails_on_the_fourth, b"", 0)
    with pytest.raises(RuntimeError, match="failed before"):
        g.plain_wire(10, 1 << 20, lambda fn: "f", str, b"", 0)

    class Clearing:
        """In a key, empties every list and dict that refers to that key when repr'd."""

        key: Any = None

        def __repr__(self) -> str:
            for ref in gc.get_referrers(self.key):
                if isinstance(ref, (list, dict)):
                    ref.clear()
            return "clearing"

    part = Clearing()
    key = part.key = ("c", part)
    dsk: dict[Hashable, Any] = {key: (inc, 1), "after": (inc, 2)}
    g = speedups.plain_graph(dsk)
    assert g is not None
    _, keys, _, _, frontier, last = g.plain_wire(10, 1 << 20, lambda fn: "f", lambda k: "g", b"", 0)
    assert keys == ["('c', clearing)", "after"] and last and not dsk
    # named by a node, such a key's wire key is the Python path's to make
    assert speedups.plain_graph({key: (inc, 1), "after": (inc, key)}) is None

    class Hunting:
        """A key whose hash looks for a PlainGraph being made and uses it."""

        armed = True
        found = 0

        def __hash__(self) -> int:
            if Hunting.armed:
                Hunting.armed = False
                for o in gc.get_objects():
                    if type(o).__name__ == "PlainGraph":
                        Hunting.found += 1
                        o.needed()
                        o.plain_wire(10, 1 << 20, str, str, b"", 0)
            return 1

    g = None  # the graphs above, gone before the hunt
    gc.collect()
    g2 = speedups.plain_graph({Hunting(): (inc, 1), "b": (inc, 2)})
    assert g2 is not None and Hunting.found == 0  # not reachable until whole


def test_odd_keys_convert_as_python_does() -> None:
    """A key whose repr is a str subclass, annotations that name "key" (the client never sends
    them, but the wire key stays the node's), a dependency whose str key msgpack refuses."""

    class Named(str):
        pass

    class Key(tuple):  # type: ignore[type-arg]
        def __repr__(self) -> str:
            return Named("named")

    dsk: dict[Hashable, Any] = {Key(("x", 1)): (inc, 1), "y": (inc, 2)}  # named by no node
    assert chunks(dsk, True)[0] == chunks(dsk, False)[0]
    dsk = {"a": (inc, 1), "b": (inc, "a")}
    got = chunks(dsk, True, annotations={"key": "X"})[0]
    assert got == chunks(dsk, False, annotations={"key": "X"})[0]
    assert [t.get("deps") for c in decoded(got) for t in c] == [None, ["a"]]
    assert speedups.plain_graph({"\udc80": (inc, 1), "b": (inc, "\udc80")}) is None


def test_a_cycle_through_the_compiled_graph_is_collected() -> None:
    """PlainGraph takes part in garbage collection: a graph whose node refers back to its
    PlainCalls is freed once dropped."""
    import weakref

    class Fn:
        def __call__(self, x: int) -> int:
            return x

    fn = Fn()
    graph = _dask.normalize_graph({"a": (fn, 1)})
    assert isinstance(graph, _dask.PlainCalls) and graph.compiled is not None
    fn.graph = graph  # type: ignore[attr-defined]
    ref = weakref.ref(graph)
    del graph, fn
    gc.collect()
    assert ref() is None


def test_a_second_walk_takes_the_python_path() -> None:
    """A PlainCalls the compiled path has sent still answers node_order, dependents and another
    task_chunks, as the Python path does; annotations naming a task's own field, or more than
    the client's four (neither of which the client sends), take the Python path."""
    dsk, _ = tree(50)
    graph = _dask.normalize_graph(dsk)
    assert isinstance(graph, _dask.PlainCalls) and graph.compiled is not None
    first = wired(_dask.task_chunks(graph, "h", funcs={}, first=4, most=8))
    assert graph.compiled is None
    again = wired(_dask.task_chunks(graph, "h", funcs={}, first=4, most=8))
    assert again == first == chunks(dsk, False, first=4, most=8)[0]
    five = {"priority": 1, "retries": 2, "resources": {"GPU": 1.0}, "workers": ["w"], "other": 3}
    for ann in ({"key": "X"}, {"payload": b"x" * 1000}, {"group": "G"}, {"kind": "x"}, {"func": "zz"},
                {"deps": ["q"]}, five):
        got = chunks(dict(dsk), True, annotations=ann, first=1, most=1, max_bytes=2500)[0]
        assert got == chunks(dict(dsk), False, annotations=ann, first=1, most=1, max_bytes=2500)[0]
