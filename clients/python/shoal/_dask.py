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
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable, Iterator, Mapping, Sequence

from ._keys import dumps_payload, wire_key
from ._refs import Ref


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


def normalize_graph(dsk: Any) -> dict[Hashable, Any]:
    """A dict of ``dask._task_spec`` nodes from any dask graph, expression or collection."""
    from dask._task_spec import convert_legacy_graph

    if not isinstance(dsk, Mapping):
        if hasattr(dsk, "__dask_graph__"):
            dsk = dsk.__dask_graph__()
        else:
            raise TypeError(f"shoal: expected a dask graph (a mapping), got {type(dsk).__name__}")
    graph: dict[Hashable, Any] = convert_legacy_graph(dsk)
    return graph


def graph_to_tasks(dsk: Mapping[Hashable, Any], func: str, *,
                   annotations: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The wire tasks for a normalised graph (see the module docstring)."""
    from dask._task_spec import Alias
    from dask.utils import key_split

    ann = {k: v for k, v in (annotations or {}).items() if v}
    tasks: list[dict[str, Any]] = []
    for k, node in dsk.items():
        wk = wire_key(k)
        deps = list(node.dependencies)
        if isinstance(node, Alias) and wire_key(node.target) == wk:
            continue  # the node is an existing result (a persisted future) with this key
        pairs = [(d, Ref(wire_key(d))) for d in deps]
        task: dict[str, Any] = {
            "key": wk,
            "kind": "py",
            "func": func,
            "payload": dumps_payload(((node, pairs), {})),
            "group": key_split(k),
        }
        if deps:
            task["deps"] = [wire_key(d) for d in deps]
        task.update(ann)
        tasks.append(task)
    return tasks


def external_keys(dsk: Mapping[Hashable, Any]) -> set[str]:
    """Wire keys the graph depends on but does not define (existing results)."""
    defined = {wire_key(k) for k in dsk}
    out: set[str] = set()
    for node in dsk.values():
        for d in node.dependencies:
            wd = wire_key(d)
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
