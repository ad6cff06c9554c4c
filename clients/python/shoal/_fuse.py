"""Fusion of a partition's work into one task (issue 19).

dask.distributed keeps every task's result in the worker process that made it, so a
partition-local diamond — ``df[(df.a > 1) & (df.b < 2)]`` reads the partition, takes two
columns, compares them, combines the masks and filters, six tasks of one partition — costs
dask nothing between its tasks. On Shoal each result crosses from the Python executor to its
worker: a pandas partition is converted to Arrow, written into a segment and converted back by
every task that reads it. Profiled on TPC-H at SF 1 (docs/performance.md, "TPC-H") that moving
took more executor time than the queries' own pandas work, and the linear-chain fusion
(:func:`shoal._dask.fuse_linear`) does not reach these diamonds.

:func:`fuse_partitions` fuses each *single-output region* instead: working from the graph's
outputs back to its inputs, a task joins the group of its users when all of its users are in
one group, so every task of a group but its top one is used only inside the group, and the
group runs as one task (``Task.fuse``) under the top task's key: no intermediate is stored,
encoded or moved, and nothing is computed twice. Two rules keep the parallelism a partitioned
collection has:

- a task joins its users' group only when it is of the same partition (its key's index, the
  tuple after the name, equals theirs), except a linear chain (it is its user's only
  dependency and its user its only user), which ``fuse_linear`` fuses as well; and
- never into a user that reads several partitions of the same collection (a reduction tree's
  node, a shuffle's gather, an array product), where fusing one input would make that input
  wait for the others instead of running beside them.

Keys that are not tuples (``delayed``) join only along linear chains: their independent
branches may run in parallel on different workers.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Mapping, Optional


def fusion_index(dsk: Mapping[Hashable, Any], eligible: Optional[set[Hashable]] = None
                 ) -> tuple[dict[Hashable, list[Hashable]], dict[Hashable, list[Hashable]], Callable[[Hashable], bool]]:
    """What both fusers (this module's and :func:`shoal._dask.fuse_linear`) work from: each
    node's dependencies inside ``dsk``, each node's users, and whether a node may be fused (a
    plain ``Task`` that does not block fusion, among ``eligible`` when given)."""
    from dask._task_spec import Task

    deps: dict[Hashable, list[Hashable]] = {}
    users: dict[Hashable, list[Hashable]] = {}
    for k, node in dsk.items():
        ds = [d for d in node.dependencies if d in dsk]
        deps[k] = ds
        for d in ds:
            users.setdefault(d, []).append(k)

    def fusable(k: Hashable) -> bool:
        n = dsk[k]
        return type(n) is Task and not n.block_fusion and (eligible is None or k in eligible)

    return deps, users, fusable


def _index(key: Hashable) -> Optional[tuple[Any, ...]]:
    if type(key) is tuple and len(key) > 1:
        return key[1:]
    return None


def _name(key: Hashable) -> Hashable:
    return key[0] if type(key) is tuple and key else key


def fuse_partitions(dsk: Mapping[Hashable, Any], keys: Iterable[Hashable],
                    eligible: Optional[set[Hashable]] = None) -> dict[Hashable, Any]:
    """``dsk`` with each single-output region of one partition's ``Task`` nodes fused into
    one node that keeps the region's top key (see the module's docstring). ``keys`` (the
    wanted ones) are never fused into another task; only ``eligible`` nodes (default: every
    node) that are plain ``Task`` nodes not blocking fusion take part."""
    from dask._task_spec import Task

    wanted = set(keys)
    deps, users, fusable = fusion_index(dsk, eligible)

    # users before their dependencies: a reverse topological order (Kahn's algorithm over users)
    pending = {k: len(users.get(k, ())) for k in dsk}
    order = [k for k, n in pending.items() if n == 0]
    i = 0
    while i < len(order):
        for d in deps[order[i]]:
            pending[d] -= 1
            if pending[d] == 0:
                order.append(d)
        i += 1
    if len(order) != len(dsk):  # a cycle: leave the graph as it is, the scheduler reports it
        return dict(dsk)

    top: dict[Hashable, Hashable] = {}  # task -> the top key of its group
    for k in order:
        top[k] = k
        if k in wanted or not fusable(k):
            continue
        us = users.get(k)
        if not us:
            continue
        t = top[us[0]]
        if any(top[u] != t for u in us) or not fusable(t):
            continue
        if len(us) == 1 and len(deps[us[0]]) == 1:
            top[k] = t  # a linear chain
            continue
        idx, name = _index(k), _name(k)
        if idx is None or any(_index(u) != idx for u in us):
            continue
        if any(_name(d) == name and d != k for u in us for d in deps[u]):
            continue  # a user reading several partitions of this collection
        top[k] = t

    groups: dict[Hashable, list[Hashable]] = {}
    for k in order:
        groups.setdefault(top[k], []).append(k)
    out: dict[Hashable, Any] = {}
    for k in dsk:
        members = groups.get(k)
        if members is None:
            continue  # inside another task's group
        if len(members) == 1:
            out[k] = dsk[k]
        else:
            out[k] = Task.fuse(*(dsk[m] for m in reversed(members)), key=k)
    return out
