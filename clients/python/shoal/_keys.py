"""Key naming: ``funcname-<token>`` for pure tasks, ``funcname-<uuid>`` for impure ones."""

from __future__ import annotations

import hashlib
import pickle
import re
import uuid
from typing import Any, Hashable

import cloudpickle


def funcname(fn: Any) -> str:
    """A short name for a callable, as ``dask.utils.funcname`` gives it."""
    while hasattr(fn, "func") and callable(fn.func) and type(fn).__name__ == "partial":
        fn = fn.func
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if name == "<lambda>":
        return "lambda"
    return str(name)


def dumps_callable(fn: Any) -> bytes:
    """Pickle a callable the way it travels in ``update_graph`` ``funcs`` (by value if needed)."""
    data: bytes = cloudpickle.dumps(fn, protocol=5)
    return data


def dumps_payload(obj: Any) -> bytes:
    """Pickle a task payload ``(args, kwargs)``, in-band (protocol 5).

    The fast C pickler is tried first; cloudpickle takes over for lambdas, local functions and
    anything defined in ``__main__`` (which the executor could not import).
    """
    try:
        data = pickle.dumps(obj, protocol=5)
        if b"__main__" not in data:
            return data
    except Exception:
        pass
    out: bytes = cloudpickle.dumps(obj, protocol=5)
    return out


def func_hash(data: bytes) -> str:
    """The hex SHA-256 naming a pickled callable."""
    return hashlib.sha256(data).hexdigest()


def pure_key(name: str, fhash: str, payload: bytes) -> str:
    """A deterministic key for a call: same function and same arguments give the same key."""
    h = hashlib.sha256(fhash.encode())
    h.update(payload)
    return f"{name}-{h.hexdigest()[:32]}"


def impure_key(name: str) -> str:
    """A fresh unique key."""
    return f"{name}-{uuid.uuid4().hex}"


def wire_key(key: Hashable) -> str:
    """The wire (string) form of a dask key: strings as they are, tuples by ``repr``."""
    if type(key) is str:
        return key
    return repr(key)


_HEX_TAIL = re.compile(r"[-_][0-9a-fA-F]{8,}$")


def key_split(key: str) -> str:
    """The task group of a key: the name up to a trailing hex token."""
    return _HEX_TAIL.sub("", key) or key


def token_for(*parts: Any) -> str:
    """A best-effort hash of arbitrary objects (for scatter keys)."""
    try:
        import dask.base

        tok: str = dask.base.tokenize(*parts)
        return tok
    except Exception:
        pass
    h = hashlib.sha256()
    for p in parts:
        try:
            h.update(dumps_payload(p))
        except Exception:
            h.update(uuid.uuid4().bytes)
    return h.hexdigest()[:32]

