"""Cutting task lists into ``update_graph`` messages.

A graph too big for one message goes as several, in dependency order, so the scheduler has
every dependency of a task before the task. Until the last message is sent, the client holds the
keys of earlier messages that later ones need (the *frontier*): the scheduler forgets tasks
that lead to nothing wanted. ``client.submit``/``map`` cut a finished task list with
:func:`split_batches`; dask graphs are cut as they are pickled by ``_dask.task_chunks``; both
fill a :class:`Chunk`, the one size rule (a task counts its payload plus :data:`TASK_OVERHEAD`
bytes).
"""

from __future__ import annotations

import operator
from typing import AbstractSet, Any, Iterable, Union

TASK_OVERHEAD = 200  # bytes a task counts for besides its payload
UPDATE_BATCH_BYTES = 16 << 20  # an update_graph message of about this size at most


def task_size(task: dict[str, Any]) -> int:
    return len(task.get("payload") or b"") + TASK_OVERHEAD


class Chunk:
    """The tasks of one ``update_graph`` message being filled: at most ``max_bytes`` of them
    (each counted by :func:`task_size`), unless one task alone is bigger. The one size rule of
    both cutters: :func:`split_batches` and ``_dask.task_chunks``."""

    def __init__(self, max_bytes: int = UPDATE_BATCH_BYTES) -> None:
        self.max_bytes = max_bytes
        self.tasks: list[dict[str, Any]] = []
        self.nbytes = 0

    def fits(self, task: dict[str, Any]) -> bool:
        return not self.tasks or self.nbytes + task_size(task) <= self.max_bytes

    def add(self, task: dict[str, Any]) -> None:
        self.tasks.append(task)
        self.nbytes += task_size(task)

    def add_if_fits(self, task: dict[str, Any]) -> bool:
        """``fits`` then ``add``, measuring the task once (this runs per task of a graph)."""
        size = len(task.get("payload") or b"") + TASK_OVERHEAD
        if self.tasks and self.nbytes + size > self.max_bytes:
            return False
        self.tasks.append(task)
        self.nbytes += size
        return True


class EncodedTasks:
    """The tasks of one ``update_graph`` message already encoded (``shoal._speedups`` wrote
    them): ``wire``, the msgpack array msgpack-python would write for their dicts; ``keys``,
    their keys in order; ``funcs``, the names of the functions they call; ``payload_bytes``,
    the sum of their payloads. The client sends ``wire`` as it is (no dict per task)."""

    __slots__ = ("wire", "keys", "funcs", "payload_bytes")

    def __init__(self, wire: bytes, keys: list[str], funcs: set[str], payload_bytes: int) -> None:
        self.wire = wire
        self.keys = keys
        self.funcs = funcs
        self.payload_bytes = payload_bytes

    def __len__(self) -> int:
        return len(self.keys)

    def decode(self) -> list[dict[str, Any]]:
        """The task dicts (for tests and for a reader that wants them)."""
        import msgpack

        out: list[dict[str, Any]] = msgpack.unpackb(self.wire, raw=False)
        return out


Tasks = Union[list[dict[str, Any]], EncodedTasks]  # what a chunk of a graph is


def task_keys(tasks: Tasks) -> Iterable[str]:
    """The keys of a chunk's tasks, in order."""
    if isinstance(tasks, EncodedTasks):
        return tasks.keys
    return map(_KEY, tasks)  # without a Python step per task


def task_funcs(tasks: Tasks) -> AbstractSet[Any]:
    """The functions a chunk's tasks name (None for a task that names none)."""
    if isinstance(tasks, EncodedTasks):
        return tasks.funcs
    return {t.get("func") for t in tasks}


def payload_bytes(tasks: Tasks) -> int:
    """The size of a chunk's payloads."""
    if isinstance(tasks, EncodedTasks):
        return tasks.payload_bytes
    try:  # every task a payload (py tasks): no Python step per task
        return sum(map(len, map(_PAYLOAD, tasks)))
    except (KeyError, TypeError):  # go tasks have none
        return sum(len(t.get("payload") or b"") for t in tasks)


_KEY = operator.itemgetter("key")
_PAYLOAD = operator.itemgetter("payload")


def split_batches(tasks: list[dict[str, Any]], max_bytes: int = UPDATE_BATCH_BYTES) -> list[list[dict[str, Any]]]:
    """Cut a (topologically ordered) task list into update_graph-sized batches."""
    batches: list[list[dict[str, Any]]] = []
    chunk = Chunk(max_bytes)
    for t in tasks:
        if not chunk.fits(t):
            batches.append(chunk.tasks)
            chunk = Chunk(max_bytes)
        chunk.add(t)
    batches.append(chunk.tasks)
    return batches


def frontier(batch: list[dict[str, Any]], later: list[list[dict[str, Any]]]) -> list[str]:
    """Keys of ``batch`` that tasks in later batches depend on (held until those are sent)."""
    keys = {t["key"] for t in batch}
    need: set[str] = set()
    for b in later:
        for t in b:
            need.update(d for d in t.get("deps") or () if d in keys)
    return sorted(need)


def toposort(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order tasks so that every task comes after the tasks it depends on."""
    by_key = {t["key"]: t for t in tasks}
    out: list[dict[str, Any]] = []
    state: dict[str, int] = {}
    for root in tasks:
        if root["key"] in state:
            continue
        stack: list[tuple[dict[str, Any], int]] = [(root, 0)]
        state[root["key"]] = 1
        while stack:
            t, i = stack.pop()
            deps = [d for d in t.get("deps") or () if d in by_key]
            while i < len(deps) and state.get(deps[i]):
                i += 1
            if i < len(deps):
                stack.append((t, i + 1))
                state[deps[i]] = 1
                stack.append((by_key[deps[i]], 0))
            else:
                out.append(t)
    return out
