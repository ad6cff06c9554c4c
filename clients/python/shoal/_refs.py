"""Placeholders for other keys' results inside a pickled ``py`` task payload.

The client replaces every :class:`~shoal.Future` found in a task's arguments (inside lists,
tuples, sets and dicts, at any depth) with ``Ref(key)``; the executor swaps each ``Ref`` back
for the dependency's value before calling the function (docs/protocol.md §3.1, ``payload``).
A *literal payload*, the other form of ``payload``, names dependencies by their wire keys at
listed positions of msgpack arguments instead (:func:`literal_payload`, :func:`load_literal`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import msgpack


class Ref:
    """A reference to the result of ``key``."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"Ref({self.key!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.key == self.key

    def __hash__(self) -> int:
        return hash(("shoal-ref", self.key))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Ref, (self.key,))


NOTHING: Any = object()
"""Returned by a ``replace`` callback to leave a leaf as it is."""


def replace(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """Rebuild ``obj`` with every leaf for which ``fn`` returns something other than NOTHING
    replaced by that value (which is not traversed further).

    Lists, tuples (namedtuples too), sets, frozensets and dicts are traversed. Containers in
    which nothing changed are returned as they are (no copy).
    """
    new = fn(obj)
    if new is not NOTHING:
        return new
    typ = type(obj)
    if typ is list or typ is tuple or typ is set or typ is frozenset:
        items = [replace(x, fn) for x in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return typ(items)
    if typ is dict:
        changed = False
        out = {}
        for k, v in obj.items():
            nv = replace(v, fn)
            changed = changed or nv is not v
            out[k] = nv
        return out if changed else obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        items = [replace(x, fn) for x in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return typ(*items)
    return obj


def substitute(obj: Any, values: Mapping[str, Any]) -> Any:
    """Replace each ``Ref(key)`` in ``obj`` by ``values[key]``."""

    def swap(x: Any) -> Any:
        if type(x) is Ref:
            return values[x.key]
        return NOTHING

    return replace(obj, swap)


# Literal payloads (docs/protocol.md §3.1): a plain call's arguments as msgpack, the wire keys
# of its dependencies in the places of their values. The client's dask graphs write them
# (shoal._dask.direct_call); the executor reads them (shoal.executor.load_payload).

def literal_packer() -> Callable[[Any], bytes]:
    """A ``pack`` for :func:`literal_payload` (one per graph: a Packer is not thread-safe)."""
    return msgpack.Packer(use_bin_type=True, buf_size=1024).pack  # type: ignore[no-any-return]


def literal_payload(args: list[Any], refs: list[int], pack: Callable[[Any], bytes]) -> bytes:
    """A literal payload: ``args`` with the wire keys of dependencies at positions ``refs``
    (a zero byte, which no pickle starts with, then msgpack ``[args]`` or ``[args, refs]``)."""
    return b"\x00" + pack([args, refs] if refs else [args])


def load_literal(payload: bytes | bytearray, values: Optional[Mapping[str, Any]] = None) -> tuple[Any, ...]:
    """The call arguments of a literal payload, each dependency's wire key replaced by its
    value in ``values`` (kept as the key without ``values``)."""
    body = msgpack.unpackb(memoryview(payload)[1:], raw=False)
    args = body[0]
    if values is not None and len(body) > 1:
        for i in body[1]:
            args[i] = values[args[i]]
    return tuple(args)
