"""Shared state held by the scheduler: Variable, Queue, Lock, Semaphore, Event and published
datasets, with dask.distributed's names and semantics (docs/python.md, "Shared state").

The scheduler stores each value as opaque bytes (msgpack when the value is plain data a Go
client can read, a pickle otherwise) or as the key of a future, and keeps every future a
stored value refers to alive. A value that comes back holds Futures of the receiving client.
Blocking calls wait in the scheduler, which answers when the value, lease or event is there
or the timeout passed; nothing polls.

Each object is named (a random name by default) and finds its client when first used: the
``client=`` it was given, else the task's or the process's default client, so objects can be
passed to tasks, where they use the client the task has.
"""

from __future__ import annotations

import collections.abc
import io
import os
import pickle
import threading
import uuid
import weakref
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import cloudpickle
import msgpack

from ._wire import packb
from .exceptions import LimitExceededError, TimeoutError
from .futures import Future

if TYPE_CHECKING:
    from .client import Client

MAX_VALUE_BYTES = 1 << 20  # the scheduler's bound on one value (docs/protocol.md, "Shared state")
DEFAULT_LEASE_TIMEOUT = 30.0  # seconds; dask's distributed.scheduler.locks.lease-timeout

_MSGPACK_SCALARS = (type(None), bool, float, str, bytes)
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1
_NO_DEFAULT: Any = object()

Timeout = Union[float, int, str, None]


# ---------------------------------------------------------------------------------------------
# clients, timeouts, values


def _client(client: Optional["Client"]) -> "Client":
    """The client to talk to: the one given, else the task's client (``shoal.get_client`` when
    the package has it), else the default client."""
    if client is not None:
        return client
    import shoal

    from .client import default_client

    get = getattr(shoal, "get_client", None)
    if get is not None:
        try:
            c: Client = get()
            return c
        except ValueError:
            pass
    return default_client()


def _seconds(timeout: Timeout) -> Optional[float]:
    """A timeout as seconds (dask also takes strings such as "1s"); None: no limit."""
    if timeout is None:
        return None
    if isinstance(timeout, str):
        from dask.utils import parse_timedelta

        return float(parse_timedelta(timeout))
    return max(float(timeout), 0.0)


def _wire_timeout(timeout: Optional[float]) -> dict[str, Any]:
    """The ``timeout`` field: absent answers at once, negative waits without limit."""
    if timeout is None:
        return {"timeout": -1.0}
    return {"timeout": timeout} if timeout > 0 else {}


def _local_wait(client: "Client", timeout: Optional[float]) -> float:
    """How long to wait for the scheduler's answer to a request that may wait ``timeout``."""
    if timeout is None:
        return threading.TIMEOUT_MAX
    return timeout + client.timeout


def _is_msgpack(value: Any, depth: int = 0) -> bool:
    """Whether msgpack gives ``value`` back exactly (a tuple would come back a list)."""
    typ = type(value)
    if typ in _MSGPACK_SCALARS:
        return True
    if typ is int:
        return bool(_INT_MIN <= value <= _INT_MAX)
    if depth > 32:
        return False
    if typ is list:
        return all(_is_msgpack(v, depth + 1) for v in value)
    if typ is dict:
        return all(type(k) is str and _is_msgpack(v, depth + 1) for k, v in value.items())
    return False


class _Pickler(pickle.Pickler):
    """Pickles Futures as their keys (persistent ids), collecting them."""

    def __init__(self, file: Any, keys: list[str]) -> None:
        super().__init__(file, protocol=5)
        self.keys = keys

    def persistent_id(self, obj: Any) -> Any:  # noqa: D102
        if isinstance(obj, Future):
            self.keys.append(obj.key)
            return ("shoal-future", obj.key)
        return None


class _CloudPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """_Pickler for what only cloudpickle can pickle (lambdas, classes from __main__)."""

    def __init__(self, file: Any, keys: list[str]) -> None:
        super().__init__(file, protocol=5)
        self.keys = keys

    persistent_id = _Pickler.persistent_id


class _Unpickler(pickle.Unpickler):
    """Turns the keys _Pickler wrote back into Futures of ``client``."""

    def __init__(self, data: bytes, client: "Client") -> None:
        super().__init__(io.BytesIO(data))
        self.client = client

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "shoal-future":
            return Future(str(pid[1]), self.client)
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")


def _dumps(value: Any, keys: list[str]) -> bytes:
    buf = io.BytesIO()
    try:
        _Pickler(buf, keys).dump(value)
        data = buf.getvalue()
        if b"__main__" not in data:
            return data
    except Exception:
        pass
    keys.clear()
    buf = io.BytesIO()
    _CloudPickler(buf, keys).dump(value)
    return buf.getvalue()


def _encode(op: str, name: str, value: Any) -> dict[str, Any]:
    """The request fields carrying ``value`` (docs/protocol.md, "Shared state": a Value)."""

    if isinstance(value, Future):
        return {"items": [{"key": value.key, "encoding": "future"}], "keys": [value.key]}
    keys: list[str] = []
    if _is_msgpack(value):
        enc, data = "msgpack", packb(value)
    else:
        enc, data = "pickle", _dumps(value, keys)
    if len(data) > MAX_VALUE_BYTES:
        raise LimitExceededError(
            f"{op} {name!r}: the value is {len(data)} bytes, over the limit of {MAX_VALUE_BYTES} bytes for "
            f"shared state: scatter it (client.scatter) and store the future instead", code="limit-exceeded")
    out: dict[str, Any] = {"items": [{"encoding": enc, "nbytes": len(data)}], "payload": data}
    if keys:
        out["keys"] = list(dict.fromkeys(keys))
    return out


def _decode(client: "Client", reply: dict[str, Any]) -> list[Any]:
    """The values a reply carries. The scheduler made this client want the futures they refer
    to; Futures are made for them before anything else, then ``wanted`` asks for their state."""

    keys = [str(k) for k in reply.get("keys") or ()]
    held = [Future(k, client) for k in keys]
    if keys:
        client._send({"op": "wanted", "keys": keys})
    payload = reply.get("payload") or b""
    out: list[Any] = []
    off = 0
    for it in reply.get("items") or ():
        enc = it.get("encoding")
        if enc == "future":
            out.append(Future(str(it["key"]), client))
            continue
        n = int(it.get("nbytes") or 0)
        data = payload[off:off + n]
        off += n
        if enc == "msgpack":
            out.append(msgpack.unpackb(data, raw=False, strict_map_key=False))
        else:
            out.append(_Unpickler(bytes(data), client).load())
    del held
    return out


def _call(client: "Client", header: dict[str, Any], wait: Optional[float] = None) -> dict[str, Any]:
    return client._request(header, timeout=_local_wait(client, wait) if "timeout" in header else None)


class _Named:
    """A named shared object and the client it talks through."""

    _prefix = "shared"

    def __init__(self, name: Optional[str] = None, client: Optional["Client"] = None) -> None:
        self.name = name if name is not None else f"{self._prefix}-{uuid.uuid4().hex}"
        self._client = client

    @property
    def client(self) -> "Client":
        if self._client is None:
            self._client = _client(None)
        return self._client

    def __reduce__(self) -> tuple[Any, ...]:
        # sent to a task without the client: there it uses the task's client
        return (type(self), (self.name,))

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name}>"


# ---------------------------------------------------------------------------------------------
# Variable, Queue, Event


class Variable(_Named):
    """A named value held by the scheduler: ``set`` it from one client or task, ``get`` it from
    another. It may hold a Future (the scheduler keeps its result while the variable holds
    it; ``get`` returns a Future of the getting client) or any value of at most 1 MiB."""

    _prefix = "variable"

    def set(self, value: Any, timeout: Timeout = None) -> None:
        """Store ``value`` (replacing the previous one)."""
        c = self.client
        c._request({"op": "variable_set", "name": self.name, **_encode("variable_set", self.name, value)},
                   timeout=_seconds(timeout))

    def get(self, timeout: Timeout = None) -> Any:
        """The value; waits for a first ``set`` (up to ``timeout`` seconds, then TimeoutError)."""
        c, t = self.client, _seconds(timeout)
        r = _call(c, {"op": "variable_get", "name": self.name, **_wire_timeout(t)}, t)
        if not r.get("accepted"):
            raise TimeoutError(f"Variable {self.name!r} was not set within {t}s")
        return _decode(c, r)[0]

    def delete(self) -> None:
        """Forget the value (the scheduler releases a future it held)."""
        self.client._request({"op": "variable_delete", "name": self.name})


class Queue(_Named):
    """A named first-in first-out queue held by the scheduler, shared by clients and tasks. It
    holds Futures (kept alive while queued) or values of at most 1 MiB. ``maxsize`` > 0 makes
    ``put`` wait while the queue holds that many items; any queue holds at most 100,000."""

    _prefix = "queue"

    def __init__(self, name: Optional[str] = None, client: Optional["Client"] = None, maxsize: int = 0) -> None:
        super().__init__(name, client)
        self.maxsize = int(maxsize)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, None, self.maxsize))

    def put(self, value: Any, timeout: Timeout = None) -> None:
        """Append ``value``; on a full queue wait up to ``timeout`` seconds (TimeoutError)."""
        c, t = self.client, _seconds(timeout)
        h = {"op": "queue_put", "name": self.name, **_encode("queue_put", self.name, value), **_wire_timeout(t)}
        if self.maxsize > 0:
            h["n"] = self.maxsize
        if not _call(c, h, t).get("accepted"):
            raise TimeoutError(f"Queue {self.name!r} stayed full for {t}s")

    def get(self, timeout: Timeout = None, batch: Union[bool, int] = False) -> Any:
        """The oldest item, waiting up to ``timeout`` seconds (TimeoutError). ``batch=True``
        returns every item there now, as a list (possibly empty, never waiting); ``batch=n``
        waits for n items and returns them as a list (fewer when they exceed 32 MiB)."""
        c, t = self.client, _seconds(timeout)
        n = -1 if batch is True else int(batch)
        if n < -1:
            raise ValueError(f"batch={batch!r}: give True or a positive number of items")
        h = {"op": "queue_get", "name": self.name, **_wire_timeout(t)}
        if n:
            h["n"] = n
        if n < 0:
            h.pop("timeout", None)
        r = _call(c, h, t)
        if not r.get("accepted"):
            raise TimeoutError(f"Queue {self.name!r} had no item within {t}s")
        vals = _decode(c, r)
        return vals if n else vals[0]

    def qsize(self) -> int:
        """How many items the queue holds now."""
        return int(self.client._request({"op": "queue_qsize", "name": self.name}).get("n") or 0)


class Event(_Named):
    """A named event held by the scheduler: ``wait`` blocks until some client or task ``set``s
    it; ``clear`` unsets it."""

    _prefix = "event"

    def set(self) -> None:
        self.client._request({"op": "event_set", "name": self.name})

    def clear(self) -> None:
        self.client._request({"op": "event_clear", "name": self.name})

    def wait(self, timeout: Timeout = None) -> bool:
        """Whether the event is set, waiting up to ``timeout`` seconds (None: until it is)."""
        c, t = self.client, _seconds(timeout)
        return bool(_call(c, {"op": "event_wait", "name": self.name, **_wire_timeout(t)}, t).get("accepted"))

    def is_set(self) -> bool:
        return bool(self.client._request({"op": "event_wait", "name": self.name}).get("accepted"))


# ---------------------------------------------------------------------------------------------
# Semaphore and Lock, with their leases


class Semaphore(_Named):
    """A named semaphore of ``max_leases`` leases held by the scheduler. A lease belongs to the
    acquiring client's connection: it is freed when that connection closes (the process died)
    or when it was not refreshed for ``lease_timeout`` seconds. While a lease is held the
    client refreshes it in the background, every ``lease_timeout / 5`` seconds."""

    _prefix = "semaphore"

    def __init__(self, max_leases: int = 1, name: Optional[str] = None, client: Optional["Client"] = None, *,
                 lease_timeout: Timeout = DEFAULT_LEASE_TIMEOUT) -> None:
        if int(max_leases) < 1:
            raise ValueError(f"max_leases={max_leases!r} must be at least 1")
        super().__init__(name, client)
        self.max_leases = int(max_leases)
        lt = _seconds(lease_timeout)
        self.lease_timeout = DEFAULT_LEASE_TIMEOUT if lt is None or lt <= 0 else lt
        self._leases: collections.deque[str] = collections.deque()
        self._mu = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_semaphore, (type(self), self.max_leases, self.name, self.lease_timeout))

    def acquire(self, timeout: Timeout = None) -> bool:
        """Take a lease, waiting up to ``timeout`` seconds; False when none came in time."""
        return self._acquire(_seconds(timeout))

    def _acquire(self, t: Optional[float]) -> bool:
        c, lease = self.client, uuid.uuid4().hex
        r = _call(c, {"op": "semaphore_acquire", "name": self.name, "key": lease, "n": self.max_leases,
                      "lease_timeout": self.lease_timeout, **_wire_timeout(t)}, t)
        if not r.get("accepted"):
            return False
        with self._mu:
            self._leases.append(lease)
        _refresher(c).add(self.name, lease, self.lease_timeout)
        return True

    def release(self) -> bool:
        """Give back the oldest lease this object holds; RuntimeError when it holds none (or
        its lease expired)."""
        with self._mu:
            if not self._leases:
                raise RuntimeError("Released too often")
            lease = self._leases.popleft()
        c = self.client
        _refresher(c).drop(self.name, lease)
        if not c._request({"op": "semaphore_release", "name": self.name, "key": lease}).get("accepted"):
            raise RuntimeError(f"Released too often: the lease on {self.name!r} had expired (not refreshed "
                               f"within lease_timeout={self.lease_timeout}s) or was freed")
        return True

    def get_value(self) -> int:
        """The number of leases held now, by anyone."""
        return int(self.client._request({"op": "semaphore_value", "name": self.name}).get("n") or 0)

    def __enter__(self) -> "Semaphore":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _rebuild_semaphore(cls: type, max_leases: int, name: str, lease_timeout: float) -> Semaphore:
    if cls is Lock:
        return Lock(name, lease_timeout=lease_timeout)
    out: Semaphore = cls(max_leases, name, lease_timeout=lease_timeout)
    return out


class Lock(Semaphore):
    """A named lock held by the scheduler: a Semaphore of one lease (so it is freed when its
    holder's process dies, or ``lease_timeout`` after the holder stops refreshing it)."""

    _prefix = "lock"

    def __init__(self, name: Optional[str] = None, client: Optional["Client"] = None, *,
                 lease_timeout: Timeout = DEFAULT_LEASE_TIMEOUT) -> None:
        super().__init__(1, name, client, lease_timeout=lease_timeout)

    def acquire(self, blocking: bool = True, timeout: Timeout = None) -> bool:  # type: ignore[override]
        """Take the lock; False when ``blocking=False`` and it is taken, or ``timeout`` passed."""
        if not blocking:
            if timeout is not None:
                raise ValueError("can't specify a timeout for a non-blocking call")
            return self._acquire(0.0)
        return self._acquire(_seconds(timeout))

    def locked(self) -> bool:
        """Whether anyone holds the lock."""
        return self.get_value() == 1

    def __enter__(self) -> "Lock":
        self.acquire()
        return self


class _Refresher:
    """Refreshes one client's leases in the background until they are released or the client
    closes. In a task's process it stops when the worker that started the process died, so
    the leases of an orphaned task lapse."""

    def __init__(self, client: "Client") -> None:
        self._client = weakref.ref(client)
        self._mu = threading.Lock()
        self._leases: dict[str, dict[str, float]] = {}  # name → lease id → lease timeout
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._ppid = os.getppid() if os.environ.get("SHOAL_EXECUTOR_FD") else 0

    def add(self, name: str, lease: str, lease_timeout: float) -> None:
        with self._mu:
            self._leases.setdefault(name, {})[lease] = lease_timeout
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="shoal-lease-refresh", daemon=True)
                self._thread.start()
        self._wake.set()

    def drop(self, name: str, lease: str) -> None:
        with self._mu:
            held = self._leases.get(name)
            if held is not None:
                held.pop(lease, None)
                if not held:
                    del self._leases[name]

    def _interval(self) -> Optional[float]:
        with self._mu:
            ts = [t for held in self._leases.values() for t in held.values()]
        return max(min(ts) / 5, 0.01) if ts else None

    def _run(self) -> None:
        while True:
            interval = self._interval()
            c = self._client()
            if interval is None or c is None or c.status != "running":
                with self._mu:
                    self._thread = None
                return
            del c
            self._wake.wait(interval)
            self._wake.clear()
            if self._ppid and os.getppid() != self._ppid:
                return  # our worker died: let the leases lapse
            self._refresh()

    def _refresh(self) -> None:
        c = self._client()
        if c is None:
            return
        with self._mu:
            todo = [(name, list(held)) for name, held in self._leases.items()]
        for name, leases in todo:
            try:
                c._send({"op": "semaphore_refresh", "name": name, "keys": leases})
            except Exception:  # closed: the scheduler freed the leases already
                return


_refreshers: "weakref.WeakKeyDictionary[Client, _Refresher]" = weakref.WeakKeyDictionary()
_refreshers_mu = threading.Lock()


def _refresher(client: "Client") -> _Refresher:
    with _refreshers_mu:
        r = _refreshers.get(client)
        if r is None:
            r = _refreshers[client] = _Refresher(client)
        return r


# ---------------------------------------------------------------------------------------------
# datasets


class Datasets:
    """The published-dataset methods of :class:`shoal.Client` (a mixin): named values held by
    the scheduler for every client, as dask's ``publish_dataset`` family."""

    if TYPE_CHECKING:
        def _request(self, header: dict[str, Any], timeout: Optional[float] = None) -> dict[str, Any]: ...

    def publish_dataset(self, *args: Any, name: Optional[str] = None, override: bool = False, **kwargs: Any) -> None:
        """Publish values under names: ``publish_dataset(df, name="x")`` or
        ``publish_dataset(x=df, y=future)``. A published Future (or a collection holding
        Futures) keeps its results alive until unpublished. ``override=True`` replaces an
        existing name; otherwise publishing a taken name raises KeyError."""
        if name is not None:
            if not args:
                raise ValueError("If name is provided, expecting call signature like publish_dataset(df, name='ds')")
            kwargs[name] = args[0] if len(args) == 1 else args
        elif args:
            raise ValueError("If name is provided, expecting call signature like publish_dataset(df, name='ds')")
        for key, value in kwargs.items():
            h = {"op": "publish_dataset", "name": str(key), **_encode("publish_dataset", str(key), value)}
            if override:
                h["accepted"] = True
            if not self._request(h).get("accepted"):
                raise KeyError(f"Dataset {key} already exists")

    def unpublish_dataset(self, name: str) -> None:
        """Remove a published dataset (its futures are released unless held elsewhere)."""
        self._request({"op": "unpublish_dataset", "name": str(name)})

    def get_dataset(self, name: str, default: Any = _NO_DEFAULT) -> Any:
        """The dataset published under ``name`` (Futures in it belong to this client);
        ``default`` when there is none, else KeyError."""
        r = self._request({"op": "get_dataset", "name": str(name)})
        if not r.get("accepted"):
            if default is _NO_DEFAULT:
                raise KeyError(f"Dataset '{name}' not found")
            return default
        return _decode(self, r)[0]  # type: ignore[arg-type]

    def list_datasets(self) -> list[str]:
        """The names of the published datasets, sorted."""
        return [str(k) for k in self._request({"op": "list_datasets"}).get("keys") or ()]

    @property
    def datasets(self) -> "DatasetsMapping":
        """The published datasets as a mutable mapping: ``client.datasets["x"] = future``,
        ``del client.datasets["x"]``, iteration and ``len``."""
        return DatasetsMapping(self)


class DatasetsMapping(collections.abc.MutableMapping[str, Any]):
    """``Client.datasets``: the published datasets as a mapping (each access asks the
    scheduler)."""

    def __init__(self, client: Datasets) -> None:
        self._client = client

    def __getitem__(self, key: str) -> Any:
        return self._client.get_dataset(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self._client.publish_dataset(value, name=key)

    def __delitem__(self, key: str) -> None:
        if key not in self._client.list_datasets():
            raise KeyError(key)
        self._client.unpublish_dataset(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._client.list_datasets())

    def __len__(self) -> int:
        return len(self._client.list_datasets())

    def __contains__(self, key: object) -> bool:
        return key in self._client.list_datasets()
