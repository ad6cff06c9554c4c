"""Dask graphs on Shoal: every dask task becomes one ``py`` task.

A graph from current dask (``dask._task_spec`` nodes: Task, Alias, DataNode, List/Dict
containers) or a legacy graph (``(func, arg, ...)`` tuples, key references, nested lists) is
normalised with ``dask._task_spec.convert_legacy_graph``. Each node ``n`` with key ``k`` is then
sent as a ``py`` task with:

* ``key``: :func:`shoal._keys.wire_key` of ``k`` (tuple keys by ``repr``),
* ``func``: the hash of :func:`execute_node` (one function for the whole graph, sent once),
* ``payload``: pickled ``((n, [(dep_key, Ref(wire_key(dep_key))), ...]), {})``,
* ``deps``: the wire keys of ``n.dependencies``, ``group``: ``dask.utils.key_split(k)``.

The executor swaps each ``Ref`` for the dependency's value and calls
``execute_node(n, pairs)`` which evaluates ``n({dep_key: value, ...})``, exactly what dask's
own schedulers do with a node.

Fast path: a legacy node that is a plain call, ``(func, arg, ...)`` where every argument is
either a key of the graph or a literal ``int`` (of 64 bits), ``float``, ``str``, ``bool``,
``bytes`` or ``None`` that is not a key, skips dask's node objects altogether. It becomes a
:class:`DirectCall` and is sent like ``client.submit(func, *args)``: ``func`` is the hash of
``func`` itself, and ``payload`` is a *literal payload* (docs/protocol.md §3.1): a zero byte,
then msgpack ``[args]`` or ``[args, refs]``, where ``args`` holds the literals as they are
and each key's wire key in its place, and ``refs`` lists the positions that are keys. That
is what dask would evaluate for such a node (keys replaced by their values, literals kept),
at a fraction of the cost: no ``convert_legacy_graph``, no pickled ``Task`` object or
``Ref``, no ``execute_node`` in the executor. Anything else (nested calls, lists or dicts of
keys, other objects as arguments, aliases, task-spec nodes) takes the general path.

A dict whose every node is such a call is converted by the C extension ``shoal._speedups``
when it is built (:class:`PlainCalls`, :func:`task_chunks`): the same tasks, made in C.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import sys
import threading
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping, Optional, Sequence

from ._chunk import Chunk, EncodedTasks, Tasks
from ._fuse import fuse_partitions, fusion_index
from ._keys import dumps_callable, dumps_payload, func_hash, wire_key
from ._refs import Ref, literal_packer, literal_payload, load_literal

try:  # the compiled conversion of plain-call graphs (setup.py); without it, the Python below
    from . import _speedups
except ImportError:  # pragma: no cover - built without a C compiler
    _speedups = None  # type: ignore[assignment]

#: ``func_of(fn) -> (hash, pickled)`` names a direct call's function for ``update_graph``.
FuncOf = Callable[[Any], tuple[str, bytes]]

_LITERALS = (int, float, str, bool, bytes, type(None))


# ints a literal payload carries (msgpack's range); others take the general path
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1


class DirectCall:
    """A legacy ``(func, *args)`` node sent as a plain call (see the module docstring)."""

    __slots__ = ("func", "payload", "dependencies", "wire_deps", "wire_key")

    def __init__(self, func: Any, payload: bytes, dependencies: tuple[Hashable, ...],
                 wire_deps: tuple[str, ...], wire_key: str) -> None:
        self.func = func
        self.payload = payload  # the literal payload: args, keys by their wire keys
        # each once; a tuple, not the frozenset a GraphNode has: a two-key frozenset is 216
        # bytes, a third of a node's memory, for a million nodes fresh pages to fault in
        self.dependencies = dependencies
        self.wire_deps = wire_deps  # the wire keys of dependencies, in the same order
        self.wire_key = wire_key  # the node's own

    def __repr__(self) -> str:
        return f"DirectCall({getattr(self.func, '__name__', self.func)!r}, {load_literal(self.payload)!r})"


def wire_keys(keys: Iterable[Hashable]) -> dict[Hashable, str]:
    """Each graph key's wire key (:func:`shoal._keys.wire_key`), made once per key: a
    dependency is looked up here rather than its ``repr`` made again for every node that
    names it."""
    return {k: k if type(k) is str else repr(k) for k in keys}


def direct_call(node: Any, wire: Mapping[Hashable, str], wk: str,
                pack: Optional[Callable[[Any], bytes]] = None) -> Optional[DirectCall]:
    """``node`` (whose wire key is ``wk``) as a DirectCall when it is a plain legacy call over
    keys and literals; ``wire`` maps every key of the graph to its wire key."""
    if type(node) is not tuple or not node or not callable(node[0]):
        return None
    args: list[Any] = []
    refs: list[int] = []
    deps: dict[Hashable, str] = {}  # each dependency once, with its wire key, in order
    for a in node[1:]:
        t = type(a)
        # dask's own rule (convert_legacy_task): an int, float, str or tuple found among
        # the graph's keys is a reference to that key
        if t is str or t is tuple or t is int or isinstance(a, (int, float, str, tuple)):
            try:
                dk = wire.get(a)
            except TypeError:  # an unhashable tuple
                return None
            if dk is not None:
                if t is bool or t is float:
                    return None  # equal to a key of another type (True == 1): dask decides
                refs.append(len(args))
                args.append(dk)
                deps[a] = dk
                continue
        if t not in _LITERALS or t is int and not _INT_MIN <= a <= _INT_MAX:
            return None
        args.append(a)
    try:
        payload = literal_payload(args, refs, pack or literal_packer())
    except (UnicodeEncodeError, ValueError, OverflowError):
        return None  # e.g. a str with a lone surrogate (os.fsdecode's), which msgpack refuses
    return DirectCall(node[0], payload, tuple(deps), tuple(deps.values()), wk)


_gc_lock = threading.Lock()
_gc_pausers = 0  # callers inside paused_gc
_gc_resume = False  # whether the collector ran before the first of them


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a graph is converted and sent.

    Converting a graph allocates a few container objects per node and frees almost none, the
    pattern in which CPython's collector keeps re-scanning everything alive, the user's graph
    included: measured on a 32,767-node graph, collections took 4–6 µs of the ~6 µs per node
    of normalize_graph. Nothing made here forms cycles, so pausing loses nothing; reference
    counting still frees garbage at once. Nested and concurrent users share one pause, and the
    collector is only resumed if it was running before the first of them."""
    global _gc_pausers, _gc_resume
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_resume:
                gc.enable()


def _pickled_func(fn: Any) -> tuple[str, bytes]:
    data = dumps_callable(fn)
    return func_hash(data), data


def execute_node(node: Any, deps: Sequence[tuple[Any, Any]]) -> Any:
    """Evaluate one dask graph node given its dependencies' values (runs in the executor)."""
    return node(dict(deps))


def flatten_keys(keys: Any) -> Iterator[Hashable]:
    """The keys in a (possibly nested) list of keys, in order."""
    if isinstance(keys, list):
        for k in keys:
            yield from flatten_keys(k)
    else:
        yield keys


def repack(keys: Any, values: Mapping[Hashable, Any]) -> Any:
    """Shape ``values`` like the nested list ``keys``."""
    if isinstance(keys, list):
        return [repack(k, values) for k in keys]
    return values[keys]


def normalize_graph(dsk: Any, fuse: Optional[Iterable[Hashable]] = None) -> Mapping[Hashable, Any]:
    """``dask._task_spec`` nodes (or DirectCalls) from any dask graph, expression or collection.

    With ``fuse`` (the keys the caller wants), each partition's single-output region among
    the nodes that came as task-spec nodes, the form dask's collections produce, is fused
    into one task (:func:`shoal._fuse.fuse_partitions`; linear chains included).
    Legacy tuples, a hand-written graph's form, run one task per node as written.

    A graph of plain calls only (every node a legacy ``(func, arg, ...)`` over keys and
    literals, a hand-built graph's usual form) comes back as :class:`PlainCalls`, which
    converts a node when it is read: :func:`task_chunks` then converts it as it pickles it,
    and the first chunk leaves after one pass over the graph rather than after converting all
    of it. Any other graph is converted here, whole."""
    from dask._task_spec import GraphNode, convert_legacy_graph

    if not isinstance(dsk, Mapping):
        if hasattr(dsk, "__dask_graph__"):
            dsk = dsk.__dask_graph__()
        else:
            raise TypeError(f"shoal: expected a dask graph (a mapping), got {type(dsk).__name__}")
    if _speedups is not None and type(dsk) is dict:
        compiled = _speedups.plain_graph(dsk)  # None: not a graph it sends as written
        if compiled is not None:
            return PlainCalls(dsk, compiled=compiled)
    keys = dsk.keys()
    wire = wire_keys(keys)
    needed = _plain_calls(dsk, wire)
    if needed is not None:
        return PlainCalls(dsk, wire, needed)
    pack = literal_packer()
    direct: dict[Hashable, DirectCall] = {}
    rest: dict[Hashable, Any] = {}
    native: set[Hashable] = set()
    for k, v in dsk.items():
        if isinstance(v, GraphNode):
            rest[k] = v
            native.add(k)
            continue
        d = direct_call(v, wire, wire[k], pack)
        if d is None:
            rest[k] = v
        else:
            direct[k] = d
    if not direct:
        graph: dict[Hashable, Any] = convert_legacy_graph(dsk)
    elif not rest:
        graph = direct  # in dsk's order, as built
    else:
        converted = convert_legacy_graph(rest, all_keys=keys)
        graph = {k: direct[k] if k in direct else converted[k] for k in dsk}
    if fuse is not None and len(native) > 1:
        graph = fuse_partitions(graph, fuse, native)
    return Converted(graph, wire)


class Converted(dict[Hashable, Any]):
    """A converted graph (key -> node) that also knows its keys' wire keys (:func:`wire_keys`)
    for :func:`dep_namer`."""

    def __init__(self, graph: Mapping[Hashable, Any], wire: Mapping[Hashable, str]) -> None:
        super().__init__(graph)
        self.wire = wire


def dep_namer(dsk: Mapping[Hashable, Any]) -> Callable[[Hashable], str]:
    """``dependency -> wire key`` for the nodes of ``dsk``: the wire key of the graph's own key
    equal to the dependency, as dask takes ``1.0`` or ``True`` among a node's arguments for the
    key ``1`` (their reprs differ); :func:`wire_key` for a dependency outside the graph (an
    existing result), and for a graph that does not know its wire keys."""
    wire: Optional[Mapping[Hashable, str]] = getattr(dsk, "wire", None)
    if wire is None:
        return wire_key
    get = wire.get

    def name(d: Hashable) -> str:
        w = get(d)
        return w if w is not None else wire_key(d)

    return name


def _plain_calls(dsk: Mapping[Hashable, Any], wire: Mapping[Hashable, str]) -> Optional[dict[Hashable, int]]:
    """For a graph whose every node is a plain call (a tuple of a callable and arguments, each
    a key of the graph or a literal of a type a literal payload carries, nothing nested), the
    number of nodes that name each key among their arguments; None for any other graph.

    The count is what :func:`task_chunks` needs of the whole graph before its first chunk:
    the keys no node depends on, where its walk starts, and when a key's last dependent has
    been sent. It counts every argument equal to a key, a superset of the dependencies the
    node is converted with (a bool equal to an int key, say, is not one; holding such a key
    until the end costs nothing wrong)."""
    needed: dict[Hashable, int] = {}
    get = needed.get
    for v in dsk.values():
        if type(v) is not tuple or not v or not callable(v[0]):
            return None
        found: list[Hashable] = []
        for a in v[1:]:
            try:
                is_key = a in wire
            except TypeError:  # unhashable: a list, a dict
                return None
            if is_key:
                if a not in found:
                    found.append(a)
                    needed[a] = get(a, 0) + 1
            elif type(a) not in _LITERALS:
                return None
    return needed


class PlainCalls(Mapping[Hashable, Any]):
    """A graph of plain calls (see :func:`_plain_calls`) read as converted nodes: each node is
    converted when it is read, to a DirectCall, or by dask like any legacy node in the rare
    case that a literal payload cannot carry it (an int beyond 64 bits, a str with a lone
    surrogate, a bool equal to a key). Nothing is kept: a node read twice is converted twice,
    so :func:`task_chunks`, which reads each node once, holds only the nodes on its walk.

    ``compiled``, when ``shoal._speedups.plain_graph`` found the graph (a dict of plain calls
    that each convert to a DirectCall), is its PlainGraph: :func:`task_chunks` then makes the
    graph's chunks with it, in C, once (a second walk takes the Python path). ``wire`` and
    ``needed`` are then made only if something else reads them."""

    def __init__(self, dsk: Mapping[Hashable, Any], wire: Optional[Mapping[Hashable, str]] = None,
                 needed: Optional[dict[Hashable, int]] = None, compiled: Optional[_speedups.PlainGraph] = None,
                 ) -> None:
        self.dsk = dsk
        self._wire = wire
        self._needed = needed  # per key, the nodes that name it (a superset of its dependents)
        self.compiled = compiled
        self._pack = literal_packer()

    @property
    def wire(self) -> Mapping[Hashable, str]:
        if self._wire is None:
            self._wire = wire_keys(self.dsk)
        return self._wire

    @property
    def needed(self) -> dict[Hashable, int]:
        if self._needed is None:
            if self.compiled is not None:
                self._needed = self.compiled.needed()
            else:  # the compiled graph was walked already
                needed = _plain_calls(self.dsk, self.wire)
                if needed is None:
                    raise RuntimeError("shoal: the graph changed while it was being sent")
                self._needed = needed
        return self._needed

    def __getitem__(self, k: Hashable) -> Any:
        v = self.dsk[k]
        d = direct_call(v, self.wire, self.wire[k], self._pack)
        if d is not None:
            return d
        from dask._task_spec import DataNode, GraphNode, convert_legacy_task

        node = convert_legacy_task(k, v, self.dsk)
        return node if isinstance(node, GraphNode) else DataNode(k, node)

    def __contains__(self, k: object) -> bool:
        return k in self.dsk  # (Mapping's would convert the node)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.dsk)

    def __len__(self) -> int:
        return len(self.dsk)


# dask.annotate(...) names Shoal honours, and those dask's own optimizer consumes.
HONOURED_ANNOTATIONS = ("priority", "retries", "resources", "workers", "allow_other_workers")
_DASK_OWN_ANNOTATIONS = ("fuse",)


def check_annotations(names: Iterable[str]) -> None:
    """Refuse annotations Shoal would otherwise ignore, naming them."""
    bad = sorted(set(names) - set(HONOURED_ANNOTATIONS) - set(_DASK_OWN_ANNOTATIONS))
    if bad:
        raise ValueError(f"dask.annotate({', '.join(f'{b}=' for b in bad)}): Shoal does not honour these "
                         f"annotations; it honours {', '.join(HONOURED_ANNOTATIONS)}")


def wire_annotations(ann: Mapping[str, Any], key: Hashable = None) -> dict[str, Any]:
    """Task fields for annotations (``{"priority": 1, "workers": [...], ...}``); a callable
    value is called with the task's key, as dask does."""
    def get(name: str) -> Any:
        v = ann.get(name)
        if callable(v):
            return v(key) if key is not None else None  # per key: see annotations_by_key
        return v

    out: dict[str, Any] = {}
    if get("priority"):
        out["priority"] = int(get("priority"))
    if get("retries"):
        out["retries"] = int(get("retries"))
    res = get("resources")
    if res:
        out["resources"] = {str(k): float(v) for k, v in res.items()}
    workers = get("workers")
    if workers and not get("allow_other_workers"):
        out["workers"] = [workers] if isinstance(workers, str) else [str(w) for w in workers]
    return out


def annotations_by_key(dsk: Any, global_ann: Mapping[str, Any]) -> dict[Hashable, dict[str, Any]]:
    """Per-key task fields from a graph's annotations (``__dask_annotations__``, as
    dask.distributed reads them) under the ones active at submission (``global_ann``, which
    apply to every task unless the graph says otherwise); {} when there are none."""
    by_type: Mapping[str, Mapping[Hashable, Any]] = {}
    if hasattr(dsk, "__dask_annotations__"):
        by_type = dsk.__dask_annotations__() or {}
    check_annotations(by_type)
    per_key_global = any(callable(v) for v in global_ann.values())
    if not by_type and not per_key_global:
        return {}
    out: dict[Hashable, dict[str, Any]] = {}
    keys: set[Hashable] = set()
    for per in by_type.values():
        keys.update(per)
    if per_key_global:
        keys.update(dsk.__dask_graph__() if hasattr(dsk, "__dask_graph__") else dsk)
    for k in keys:
        merged = dict(global_ann)
        merged.update({name: per[k] for name, per in by_type.items() if k in per})
        fields = wire_annotations(merged, k)
        if fields:
            out[k] = fields
    return out


def graph_to_tasks(dsk: Mapping[Hashable, Any], func: str, *,
                   annotations: Mapping[str, Any] | None = None,
                   funcs: Optional[dict[str, bytes]] = None,
                   func_of: Optional[FuncOf] = None) -> list[dict[str, Any]]:
    """The wire tasks for a normalised graph (see the module docstring). ``func`` is the hash
    of :func:`execute_node`; the functions of direct calls are named by ``func_of`` (default:
    pickled here) and added to ``funcs``."""
    from dask._task_spec import Alias

    ann = {k: v for k, v in (annotations or {}).items() if v}
    name = _func_namer(funcs, func_of)
    group = _group_namer()
    dep = dep_namer(dsk)
    tasks: list[dict[str, Any]] = []
    for k, node in dsk.items():
        task = _node_task(k, node, func, ann, Alias, group, name, dep)
        if task is not None:
            tasks.append(task)
    return tasks


def _func_namer(funcs: Optional[dict[str, bytes]], func_of: Optional[FuncOf]) -> Callable[[Any], str]:
    """``fn -> hash`` recording each function's pickle in ``funcs``, cached by identity."""
    of = func_of or _pickled_func
    out = funcs if funcs is not None else {}
    seen: dict[int, tuple[Any, str]] = {}

    def name(fn: Any) -> str:
        hit = seen.get(id(fn))
        if hit is not None and hit[0] is fn:
            return hit[1]
        h, data = of(fn)
        out[h] = data
        seen[id(fn)] = (fn, h)
        return h

    return name


def _group_namer() -> Callable[[Hashable], str]:
    """``dask.utils.key_split`` with a cache that also serves unique string keys.

    key_split keeps the words of a key up to the first one that is not alphabetic, so a key
    ending in ``-<digits>`` has the group of the key without that ending: ``tree-1-3-55`` and
    ``tree-1-3-56`` are both looked up as ``tree-1-3``. dask's own cache is by whole key,
    which misses for every node of a graph whose keys are unique strings, and for every tuple
    key (whose group is its name's: ``("x-1", 3)`` is ``x``), each miss churning its LRU."""
    from dask.utils import key_split

    cache: dict[str, str] = {}
    names: dict[str, str] = {}  # a tuple key's name → its group

    def group(k: Hashable) -> str:
        if type(k) is tuple and k and type(k[0]) is str:
            g = names.get(k[0])
            if g is None:
                g = names[k[0]] = key_split(k[0])
            return g
        if type(k) is str:
            head, sep, last = k.rpartition("-")
            if sep and last.isdigit():
                g = cache.get(head)
                if g is None:
                    g = cache[head] = key_split(head)
                return g
        out: str = key_split(k)
        return out

    return group


def _node_task(k: Hashable, node: Any, func: str, ann: Mapping[str, Any], alias: Any,
               group: Callable[[Hashable], str], name: Callable[[Any], str],
               dep: Callable[[Hashable], str]) -> dict[str, Any] | None:
    """The wire task for one node, or None for an alias of an existing result; ``dep`` names
    its dependencies (:func:`dep_namer`)."""
    if type(node) is DirectCall:
        task: dict[str, Any] = {"key": node.wire_key, "kind": "py", "func": name(node.func),
                                "payload": node.payload, "group": group(k)}
        if node.wire_deps:
            task["deps"] = node.wire_deps
        if ann:
            task.update(ann)
        return task
    wk = k if type(k) is str else repr(k)  # wire_key, inline: this runs per node
    deps = list(node.dependencies)
    if isinstance(node, alias) and wire_key(node.target) == wk:
        return None  # the node is an existing result (a persisted future) with this key
    wire_deps = [dep(d) for d in deps]
    pairs = [(d, Ref(w)) for d, w in zip(deps, wire_deps)]
    task = {
        "key": wk,
        "kind": "py",
        "func": func,
        "payload": dumps_payload(((node, pairs), {})),
        "group": group(k),
    }
    if deps:
        task["deps"] = wire_deps
    if ann:
        task.update(ann)
    return task


def dependents(dsk: Mapping[Hashable, Any]) -> dict[Hashable, int]:
    """Per key, the number of nodes of a converted graph that depend on it (of a
    :class:`PlainCalls`, its count of the nodes naming it: a superset)."""
    if isinstance(dsk, PlainCalls):
        return dsk.needed
    out: dict[Hashable, int] = {}
    get = out.get
    for node in dsk.values():
        for d in node.dependencies:
            out[d] = get(d, 0) + 1
    return out


def node_order(dsk: Mapping[Hashable, Any],
               needed: Optional[Mapping[Hashable, int]] = None) -> Iterator[tuple[Hashable, Any]]:
    """The graph's keys and nodes with every node after the nodes it depends on (dependencies
    outside the graph, existing results, are ignored), produced as the walk finds them and each
    node read from ``dsk`` once. ``needed`` is :func:`dependents` of the graph.

    The walk is depth-first from the nodes nothing depends on, so that each node comes soon
    after its dependencies: a prefix of the order is then a graph of its own whose results
    few later nodes still need (for a tree reduction, one per level). task_chunks sends the
    graph in such prefixes and must hold every key a later chunk needs; walking from the
    leaves instead (a graph's insertion order, for dask's own collections too) would hold
    every leaf of a reduction."""
    if needed is None:
        needed = dependents(dsk)
    has = dsk.dsk if isinstance(dsk, PlainCalls) else dsk  # membership without a method call
    seen: set[Hashable] = set()
    for root in itertools.chain([k for k in dsk if k not in needed], dsk):
        if root in seen:
            continue
        seen.add(root)
        node = dsk[root]
        # each entry: a node and the iterator over its dependencies not visited yet
        stack: list[tuple[Hashable, Any, Iterator[Hashable]]] = [(root, node, iter(node.dependencies))]
        while stack:
            k, node, deps = stack[-1]
            for d in deps:
                if d not in seen and d in has:
                    seen.add(d)
                    dn = dsk[d]
                    stack.append((d, dn, iter(dn.dependencies)))
                    break
            else:
                stack.pop()
                yield k, node


def task_chunks(dsk: Mapping[Hashable, Any], func: str, *,
                annotations: Mapping[str, Any] | None = None,
                per_key: Mapping[Hashable, Mapping[str, Any]] | None = None, first: int = 500,
                most: int = 20_000, max_bytes: int = 8 << 20,
                funcs: Optional[dict[str, bytes]] = None, func_of: Optional[FuncOf] = None,
                ) -> Iterator[tuple[Tasks, list[str], bool]]:
    """The wire tasks of a normalised graph in dependency order, in chunks of growing size
    (``first`` nodes, then twice as many each time, at most ``most`` nodes and — counting each
    task as its payload plus 200 bytes — at most ``max_bytes`` unless one task alone is
    bigger), produced lazily so that a client can send a chunk before pickling the next one
    (and, for :class:`PlainCalls`, before converting the next one).
    Yields ``(tasks, frontier, last)`` where ``frontier`` lists the keys of this chunk that
    later chunks depend on: those whose count of dependents not yet sent is not down to 0.
    ``tasks`` is a list of task dicts, or, for a graph of plain calls the compiled extension
    converts (:class:`PlainCalls`), an :class:`~shoal._chunk.EncodedTasks` holding the bytes
    msgpack would write for that list.
    Direct calls' functions go into ``funcs`` as in graph_to_tasks,
    before the chunk that uses them is yielded. ``per_key`` adds a key's own annotations
    (task fields) over ``annotations``."""
    from dask._task_spec import Alias

    ann = {k: v for k, v in (annotations or {}).items() if v}
    name = _func_namer(funcs, func_of)
    group = _group_namer()
    if isinstance(dsk, PlainCalls) and dsk.compiled is not None and not per_key and len(ann) <= 4 \
            and not _TASK_FIELDS & set(ann):
        # (the client's annotations are at most priority, retries, resources and workers; other
        # ones are the Python path's, which lets them replace a task's own fields as it measures)
        compiled, dsk.compiled = dsk.compiled, None  # it walks the graph once
        yield from _compiled_chunks(compiled, ann, name, group, first, most, max_bytes)
        return
    dep = dep_namer(dsk)
    needed = dependents(dsk)
    left = dict(needed)  # per key, its dependents not sent yet
    nodes = node_order(dsk, needed)
    pending = next(nodes, None)
    for size in _chunk_sizes(first, most):
        chunk = Chunk(max_bytes)
        graph_keys: list[Hashable] = []
        n = 0
        while pending is not None and n < size:
            k, node = pending
            task = _node_task(k, node, func, ann, Alias, group, name, dep)
            if task is not None and per_key and k in per_key:
                task.update(per_key[k])
            if task is not None:
                if not chunk.add_if_fits(task):
                    break  # pending starts the next chunk (and is pickled again then)
                graph_keys.append(k)
            for d in node.dependencies:
                c = left.get(d)
                if c is not None:
                    left[d] = c - 1
            n += 1
            pending = next(nodes, None)
        tasks = chunk.tasks
        frontier = [t["key"] for t, k in zip(tasks, graph_keys) if left.get(k, 0) > 0]
        last = pending is None
        yield tasks, frontier, last
        if last:
            return


_TASK_FIELDS = frozenset({"key", "kind", "func", "payload", "group", "deps"})  # what plain_wire writes


def _chunk_sizes(first: int, most: int) -> Iterator[int]:
    """The nodes per chunk task_chunks cuts: ``first``, then twice as many each time, up to
    ``most`` (for ever: the caller stops)."""
    size = max(first, 1)
    while True:
        yield size
        size = min(size * 2, most)


def _compiled_chunks(compiled: _speedups.PlainGraph, ann: dict[str, Any], name: Callable[[Any], str],
                     group: Callable[[Hashable], str], first: int, most: int,
                     max_bytes: int) -> Iterator[tuple[Tasks, list[str], bool]]:
    """task_chunks of a graph ``shoal._speedups.plain_graph`` found: the same chunks, made in C
    and encoded there (the annotations, the same for every task, are encoded once here)."""
    from ._wire import packb

    ann_wire = b"".join(packb(k) + packb(v) for k, v in ann.items())
    for size in _chunk_sizes(first, most):
        wire, keys, funcs, payload_bytes, frontier, last = compiled.plain_wire(
            min(size, sys.maxsize), min(max_bytes, sys.maxsize), name, group, ann_wire, len(ann))
        yield EncodedTasks(wire, keys, funcs, payload_bytes), frontier, last
        if last:
            return


def external_keys(dsk: Mapping[Hashable, Any]) -> set[str]:
    """Wire keys the graph depends on but does not define (existing results)."""
    defined = {wire_key(k) for k in dsk}
    dep = dep_namer(dsk)
    out: set[str] = set()
    for node in dsk.values():
        for d in node.dependencies:
            wd = dep(d)
            if wd not in defined:
                out.add(wd)
    return out


def collections_to_graph(collections: Iterable[Any], optimize_graph: bool = True,
                         finalize: bool = True) -> tuple[Any, Any]:
    """(expression, nested output keys) for dask collections, as dask's own compute does."""
    from dask.base import collections_to_expr

    expr = collections_to_expr(list(collections), optimize_graph)
    if finalize:
        from dask._expr import FinalizeCompute

        expr = FinalizeCompute(expr)
    expr = expr.optimize()
    return expr, expr.__dask_keys__()


def fuse_linear(dsk: Mapping[Hashable, Any], keys: Iterable[Hashable],
                eligible: Optional[set[Hashable]] = None) -> dict[Hashable, Any]:
    """``dsk`` with each linear chain of ``Task`` nodes fused into one node.

    A node is fused into its dependent when that dependent is its only dependent, it is the
    dependent's only dependency, it is not among ``keys``, neither blocks fusion and both are
    ``eligible`` (default: every node). The fused node keeps the key of the chain's last node,
    so nothing outside the chain sees a change; the chain's inner results are never stored or
    moved, which is the point: on Shoal every result crosses from the executor to its worker,
    and an intermediate partition that only one task reads would be encoded, written and
    decoded for nothing. dask's array, bag and delayed optimisations fuse the same chains
    (``fuse_linear_task_spec``); this variant keeps keys instead of renaming them, because an
    alias would be one more task here. Direct calls, aliases and data nodes are left alone."""
    from dask._task_spec import Task

    wanted = set(keys)
    deps, users, fusable = fusion_index(dsk, eligible)

    def absorbs(k: Hashable) -> Optional[Hashable]:
        """The dependency that ``k`` absorbs, or None."""
        if not fusable(k) or len(deps[k]) != 1 or len(dsk[k].dependencies) != 1:
            return None
        d = deps[k][0]
        if d in wanted or len(users.get(d, ())) != 1 or not fusable(d):
            return None
        return d

    out: dict[Hashable, Any] = {}
    for k in dsk:
        u = users.get(k)
        if u and len(u) == 1 and absorbs(u[0]) == k:
            continue  # the bottom or middle of a chain: fused into the node on top
        chain = [k]
        d = absorbs(k)
        while d is not None:
            chain.append(d)
            d = absorbs(d)
        if len(chain) == 1:
            out[k] = dsk[k]
        else:
            out[k] = Task.fuse(*(dsk[c] for c in reversed(chain)), key=k)
    return out
