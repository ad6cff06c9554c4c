"""The Shoal client: dask.distributed's ``Client`` API over the Shoal wire protocol.

The client is layered (docs/python.md, "How the client is built"):

* ``_conn``: the control connection to the scheduler — a transport (TCP, or an in-memory one in
  tests), typed messages, requests matched to their replies, transparent reconnection;
* ``_states``: the one owner of the client's key states (what each Future shows);
* ``_data``: connections to the workers' data ports, where results are fetched from
  (``get_data``) and scattered to (``put_data``); the scheduler only says where a key lives;
* ``_chunk``: cutting a graph into ``update_graph`` messages;
* this module: the API (``Client``), turning calls into graphs and requests;
* ``_async``: the asyncio client, coroutines on the caller's event loop over the same layers.
"""

from __future__ import annotations

import collections
import collections.abc
import concurrent.futures
import itertools
import logging
import os
import random
import ssl
import sys
import threading
import time
import uuid
import weakref
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Mapping, Optional, Sequence, Union, cast

from . import _chunk, _dask, _discovery, _keys, _shuffle, _wire
from . import _segments as _segments  # noqa: F401 - tests patch shoal.client._segments
from ._chunk import frontier as _frontier
from ._chunk import toposort as _toposort  # noqa: F401 - importable from here, as before
from ._conn import ControlConnection, GraphRejected, KeyStateMsg, Message, TcpTransport, Transport
from ._control import ClusterControl
from ._data import GET_DATA_BATCH as _GET_DATA_BATCH
from ._data import PUT_DATA_BATCH as _PUT_DATA_BATCH
from ._data import DataPool, encode_items
from ._data import is_loopback as _is_loopback
from ._refs import NOTHING, replace
from ._reports import Reports
from ._shared import Datasets
from ._states import KeyStates, relocate_delay
from ._states import raise_state as _raise_state
from .exceptions import CancelledError, CommClosedError, FutureLostError, ShoalError, TimeoutError, error_from_wire
from .futures import CANCELLED, FINISHED, Future, KeyState

if TYPE_CHECKING:
    from .cluster import LocalCluster

logger = logging.getLogger("shoal")

_UPDATE_BATCH_BYTES = _chunk.UPDATE_BATCH_BYTES  # (a module variable: tests make it small)
_FUNC_CACHE_SIZE = 1024
# An argument at least this large (its buffer size: numpy, pandas, Arrow, bytes) is scattered
# to a worker's data port and passed by reference, as dask's auto-scatter does: it never goes
# through the scheduler in a control message.
_SCATTER_ARG_BYTES = 1 << 20


def _encoded_graph(msg: dict[str, Any], tasks: _chunk.EncodedTasks) -> _wire.Encoded:
    """The update_graph ``msg`` (its ``tasks`` being ``tasks``) as the bytes msgpack would write
    for it with the task dicts in it: the other fields packed, ``tasks`` added as written."""
    head = _wire.packb({k: v for k, v in msg.items() if k != "tasks"})
    if not 0x80 <= head[0] < 0x8f:  # a fixmap of at most 14 fields, one more to come
        raise AssertionError(f"an update_graph header starts with {head[0]:#x}")
    return _wire.Encoded(msg, b"".join((bytes((head[0] + 1,)), head[1:], _TASKS_FIELD, tasks.wire)))


_TASKS_FIELD = _wire.packb("tasks")


def _split_batches(tasks: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``_chunk.split_batches`` at this module's ``_UPDATE_BATCH_BYTES`` (read at each call)."""
    return _chunk.split_batches(tasks, _UPDATE_BATCH_BYTES)


def _refuse(call: str, kwargs: Mapping[str, Any], fifo_timeout: Any = None, actors: Any = None,
            asynchronous: Any = None) -> None:
    """Refuse what a call cannot honour, by name, instead of ignoring it: unknown keywords,
    actors, a non-default ``fifo_timeout`` (Shoal runs equal priorities first in, first out,
    always) and ``asynchronous=True`` on the synchronous client (use ``AsyncClient``)."""
    if kwargs:
        raise TypeError(f"{call}() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
    if actors:
        raise NotImplementedError(f"{call}(actors=...): Shoal does not support actors (yet)")
    if fifo_timeout not in (None, "100 ms", "100ms", 0.1):
        raise NotImplementedError(f"{call}(fifo_timeout={fifo_timeout!r}): Shoal runs tasks of equal priority "
                                  "first in, first out; only the default is accepted")
    if asynchronous:
        raise TypeError(f"{call}(asynchronous=True) on a synchronous Client: use Client(asynchronous=True)")


def _loose(workers: Any, allow_other_workers: bool, actor: bool) -> Any:
    """The worker restriction a task gets. ``allow_other_workers=True`` makes ``workers`` a
    preference, which Shoal's scheduler does not use yet: the task may then run on any worker
    (it must never wait for ever on workers that are not there). Actors are refused."""
    if actor:
        raise NotImplementedError("actor=True: Shoal does not support actors (yet); run a task that "
                                  "holds the state, or use shared state from the scheduler")
    if allow_other_workers and workers is None:
        raise ValueError("Only use allow_other_workers= if using workers=")
    return None if allow_other_workers else workers


class _Events:
    """What the control connection tells the client (``_conn.Handler``), kept off the Client's
    namespace."""

    def __init__(self, client: "Client") -> None:
        self.client = client

    def on_message(self, msg: Message) -> None:
        if isinstance(msg, KeyStateMsg):
            self.client._keys.apply(msg)
        elif isinstance(msg, GraphRejected):
            self.client._on_graph_rejected(msg)
        else:
            logger.debug("shoal: ignoring %r from the scheduler", msg)

    def resume_keys(self) -> list[str]:
        return self.client._keys.keys()

    def on_reconnected(self) -> None:
        with self.client._lock:
            self.client._sent_funcs.clear()  # a scheduler without a journal forgot them: send again

    def on_resume_failed(self, exc: BaseException) -> None:
        self.client._keys.fail_pending(exc)

    def on_lost(self, exc: BaseException) -> None:
        err: BaseException = CancelledError("the client was closed") if self.client._closed.is_set() else exc
        self.client._keys.close(err)


class Client(ClusterControl, Datasets, Reports):
    """Connect to a Shoal scheduler; the API of ``dask.distributed.Client``.

    ``Client()`` with no address starts a :class:`~shoal.LocalCluster` owned by the client,
    passing it any further keywords (``Client(n_workers=2, threads_per_worker=1)``).
    ``Client("host:8786", token=...)`` connects to a running scheduler; ``Client(cluster)``
    to a LocalCluster (taking its token). ``timeout`` bounds connecting and every request.
    ``Client(..., asynchronous=True)`` returns an :class:`AsyncClient`. ``tls`` (an
    ``ssl.SSLContext``) connects to a cluster started with ``--tls-cert/--tls-key``: every
    connection, to the scheduler and to workers' data ports, is then TLS.

    When the connection to the scheduler breaks, the client reconnects for up to
    ``reconnect_timeout`` seconds (0: never) and resumes its session: futures stay pending
    meanwhile (``status`` is ``"connecting"``) and resolve once the scheduler (restarted on its
    journal, say) knows their keys again. ``transport`` replaces how connections are made
    (tests use an in-memory one; see ``shoal._conn.Transport``).
    """

    def __new__(cls, *args: Any, asynchronous: bool = False, **kwargs: Any) -> Any:
        if asynchronous and cls is Client:
            return AsyncClient(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, address: Union[str, "LocalCluster", None] = None, *,
                 token: Optional[str] = None, timeout: float = 30.0,
                 tls: Optional[ssl.SSLContext] = None,
                 asynchronous: bool = False, name: Optional[str] = None,
                 set_as_default: bool = True, fetch_timeout: float = 300.0,
                 scheduler_file: Optional[str] = None, reconnect_timeout: float = 60.0,
                 transport: Optional[Transport] = None, **cluster_kwargs: Any) -> None:
        self.timeout = float(timeout)
        self.asynchronous = False  # the blocking client (AsyncClient is the asyncio one), as dask asks
        if reconnect_timeout is None or float(reconnect_timeout) < 0:
            raise ValueError(f"reconnect_timeout={reconnect_timeout!r}: give seconds (0: do not reconnect)")
        self.reconnect_timeout = float(reconnect_timeout)
        self._scheduler_file = scheduler_file
        self._token_given = token is not None
        if scheduler_file is not None:
            if address is not None:
                raise ValueError("Client: give an address or scheduler_file=, not both")
            info = _discovery.read_scheduler_file(scheduler_file)
            address = str(info["address"])
            if token is None and info.get("token"):
                token = str(info["token"])
        self.fetch_timeout = float(fetch_timeout)
        self.name = name or f"client-{uuid.uuid4().hex[:8]}"
        self.cluster: Optional["LocalCluster"] = None
        self._own_cluster = False
        if address is None:
            address = os.environ.get("SHOAL_SCHEDULER_ADDRESS") or None
        if address is None:
            from .cluster import LocalCluster

            address = LocalCluster(**cluster_kwargs)  # Client(n_workers=2, threads_per_worker=1)
            self._own_cluster = True
        elif cluster_kwargs:
            raise TypeError(f"Client() got keyword argument(s) {', '.join(sorted(cluster_kwargs))}: these configure "
                            "the LocalCluster a Client() without an address starts, not a connection")
        if not isinstance(address, str):
            self.cluster = address
            token = token if token is not None else address.token
            address = address.scheduler_address
        if token is None:
            token = os.environ.get("SHOAL_TOKEN")
        if token is None:  # a LocalCluster of this user in another process: its discovery file
            found = _discovery.lookup(address)
            token = str(found.get("token") or "") if found else ""
        self.scheduler_address = address
        self._token = token or ""
        self._tls = tls
        self._transport: Transport = transport if transport is not None else TcpTransport(tls)

        self._keys = KeyStates()
        self._lock = self._keys.lock
        self._func_cache: collections.OrderedDict[int, tuple[Any, str, bytes]] = collections.OrderedDict()
        self._sent_funcs: set[str] = set()
        self._graph_ids = itertools.count(1)
        self._graphs: collections.OrderedDict[int, tuple[list[str], list[str]]] = collections.OrderedDict()
        self._data = DataPool(self._transport, lambda: self._token, self.timeout, self.fetch_timeout)
        self._closed = threading.Event()
        self._callbacks = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shoal-callback")
        self._exec_hash: Optional[str] = None
        self._dask_config: Any = None
        self._comm = ControlConnection(self._target, self._transport, _Events(self), timeout=self.timeout,
                                       reconnect_timeout=self.reconnect_timeout)
        try:
            welcome = self._comm.start()
        except BaseException:
            if self._own_cluster and self.cluster is not None:
                self.cluster.close()
            raise
        self.server_version = welcome.version
        self._dashboard = welcome.dashboard
        self._releaser = threading.Thread(target=self._release_loop, name="shoal-client-release", daemon=True)
        self._releaser.start()
        _clients.add(self)
        if set_as_default:
            _defaults.append(weakref.ref(self))
            self._set_dask_default()

    # ---------------------------------------------------------------------------------------
    # connection

    def _target(self) -> tuple[str, str]:
        """Where to connect, and with which token: a client made from a scheduler file reads it
        again before each reconnect (a restarted scheduler may have moved)."""
        if self._scheduler_file is not None and self._comm.state.generation > 0:
            try:
                info = _discovery.read_scheduler_file(self._scheduler_file)
            except (OSError, ValueError, ShoalError) as exc:
                logger.info("shoal: could not read the scheduler file %s again: %s", self._scheduler_file, exc)
            else:
                address = str(info["address"])
                if address != self.scheduler_address:
                    logger.info("shoal: the scheduler file %s now names %s (was %s)", self._scheduler_file,
                                address, self.scheduler_address)
                self.scheduler_address = address
                if not self._token_given and info.get("token"):
                    self._token = str(info["token"])
        return self.scheduler_address, self._token

    @property
    def id(self) -> int:
        """This client's id at the scheduler (kept across reconnects when the scheduler knew it)."""
        return self._comm.client_id

    @property
    def _states(self) -> dict[str, KeyState]:
        return self._keys.states

    @property
    def _no_segments(self) -> dict[str, bool]:
        return self._data.no_segments

    @classmethod
    def current(cls, allow_global: bool = True) -> "Client":
        """The client in use: the newest default Client (``ValueError`` when there is none)."""
        return default_client()

    def _set_dask_default(self) -> None:
        try:
            import dask
        except ImportError:
            return
        _shuffle.install()
        _hook_dask_distributed()
        self._dask_config = dask.config.set(
            dask_defaults(self.get, self.scheduler_address,
                          dask.config.get("dataframe.shuffle.method", None),
                          _shuffle.available()))

    @property
    def status(self) -> str:
        """``running``, ``connecting`` (the connection to the scheduler broke and the client is
        reconnecting; futures stay pending), ``resuming`` (connected again, waiting for the
        scheduler's answer to its ``resume``; what is sent meanwhile goes after it) or
        ``closed``."""
        if self._closed.is_set():
            return "closed"
        return self._comm.status

    @property
    def dashboard_link(self) -> str:
        """The URL of the scheduler's dashboard ("" when it has none)."""
        return self._dashboard

    def _send(self, header: dict[str, Any]) -> None:
        if self._closed.is_set():
            raise CommClosedError("the client is closed")
        self._comm.send(header)

    def _on_graph_rejected(self, msg: GraphRejected) -> None:
        with self._lock:
            keys, funcs = self._graphs.pop(msg.id, (msg.keys, []))
            self._sent_funcs.difference_update(funcs)
        self._keys.fail(keys, error_from_wire(msg.error, keys=msg.keys or keys))

    def _request(self, header: dict[str, Any], timeout: Optional[float] = None) -> dict[str, Any]:
        if self._closed.is_set():
            raise CommClosedError("the client is closed")
        return self._comm.request(header, timeout)

    # ---------------------------------------------------------------------------------------
    # reference counting

    def _acquire(self, key: str) -> KeyState:
        return self._keys.acquire(key)

    def _release_later(self, key: str) -> None:
        # called from Future.__del__: anything here must be safe in any thread, lock-free
        self._keys.release_later(key)

    def _release_loop(self) -> None:
        while not self._closed.wait(0.02):
            self._flush_releases()

    def _flush_releases(self) -> None:
        with self._lock:  # one flush at a time: releases reach the scheduler in order
            gone = self._keys.take_releases()
            if gone and not self._closed.is_set():
                try:
                    self._comm.send({"op": "release_keys", "keys": gone})
                except ShoalError:
                    pass

    # ---------------------------------------------------------------------------------------
    # graphs

    def _func(self, fn: Any) -> tuple[str, bytes]:
        """(hash, pickled) for a callable, pickled once per client."""
        with self._lock:
            hit = self._func_cache.get(id(fn))
            if hit is not None and hit[0] is fn:
                self._func_cache.move_to_end(id(fn))
                return hit[1], hit[2]
        data = _keys.dumps_callable(fn)
        digest = _keys.func_hash(data)
        with self._lock:
            self._func_cache[id(fn)] = (fn, digest, data)
            if len(self._func_cache) > _FUNC_CACHE_SIZE:
                self._func_cache.popitem(last=False)
        return digest, data

    def _exec_func(self) -> tuple[str, bytes]:
        return self._func(_dask.execute_node)

    def _update_graph(self, tasks: _chunk.Tasks, funcs: Mapping[str, bytes],
                      wanted: Sequence[str], *, one_message: bool = False) -> list[Future]:
        """Send tasks (split into several messages when big) and return futures for wanted.
        ``one_message``: the caller cut ``tasks`` to fit one message (a dask graph's chunks),
        so they are not measured again (a Python step per task: a tenth of a million-task
        graph's submission); only such a chunk comes encoded already (EncodedTasks)."""
        with self._lock:
            self._keys.renew(wanted)  # a failed key gets a fresh attempt; old futures keep the error
            futures = [Future(k, self) for k in wanted]
            batches: Sequence[_chunk.Tasks]
            if one_message or isinstance(tasks, _chunk.EncodedTasks):
                batches = [tasks]
            else:
                batches = _split_batches(tasks)
            held: list[str] = []
            final = set(wanted)
            for i, batch in enumerate(batches):
                last = i == len(batches) - 1
                new_funcs: dict[str, bytes] = {}
                unsent = [h for h in funcs if h not in self._sent_funcs]
                if unsent:  # (a graph's later chunks use functions sent already: no pass)
                    used = _chunk.task_funcs(batch)
                    new_funcs = {h: funcs[h] for h in unsent if h in used}
                keys = list(_chunk.task_keys(batch))
                if last:
                    want = list(wanted)
                else:
                    # hold what later batches need and the wanted keys this batch defines:
                    # the scheduler drops tasks that lead to nothing anyone wants
                    # (several batches: _split_batches cut them, as lists of task dicts)
                    later = cast(list[list[dict[str, Any]]], batches[i + 1:])
                    assert isinstance(batch, list)
                    here = set(keys)
                    want = list(dict.fromkeys(_frontier(batch, later) + [k for k in wanted if k in here]))
                gid = next(self._graph_ids)
                self._graphs[gid] = (keys if not last else keys + list(wanted), list(new_funcs))
                while len(self._graphs) > 10000:
                    self._graphs.popitem(last=False)
                msg: dict[str, Any] = {"op": "update_graph", "id": gid, "tasks": batch, "wanted": want}
                if new_funcs:
                    msg["funcs"] = new_funcs
                if isinstance(batch, _chunk.EncodedTasks):
                    msg = _encoded_graph(msg, batch)
                self._send(msg)
                self._sent_funcs.update(new_funcs)
                if not last:
                    # hold temporarily what the final wants do not cover (the scheduler keeps
                    # a client's wants as a set, so releasing a wanted key would drop it)
                    held.extend(k for k in want if k not in final)
            if held:
                self._send({"op": "release_keys", "keys": held})
            return futures

    def _live(self, key: str) -> bool:
        """Whether this client already holds a pending or finished future for key."""
        return self._keys.live(key)

    def _scatter_large(self, args: tuple[Any, ...], kwargs: dict[str, Any],
                       hold: list[Future]) -> tuple[tuple[Any, ...], dict[str, Any], bool]:
        """Scatter the large arguments (top level, and kwargs' values) and put Futures in their
        place; ``hold`` keeps those futures until the task is submitted. Reports whether any was."""
        def big(v: Any) -> bool:
            if isinstance(v, (bytes, bytearray, memoryview)):
                return len(v) >= _SCATTER_ARG_BYTES
            if type(v).__module__.startswith("pandas") and hasattr(v, "memory_usage"):
                try:
                    return int(v.memory_usage(index=True, deep=False).sum()) >= _SCATTER_ARG_BYTES
                except Exception:
                    return False
            n = getattr(v, "nbytes", None)
            if callable(n) and not isinstance(v, type):  # pandas' nbytes is a property; Arrow's too
                return False
            return isinstance(n, int) and n >= _SCATTER_ARG_BYTES and not isinstance(v, (type, Future))

        if not any(big(a) for a in args) and not any(big(v) for v in kwargs.values()):
            return args, kwargs, False
        workers = [w for w in self._workers()]
        if not workers:
            return args, kwargs, False  # no worker yet: the argument goes inline, as before

        def swap(v: Any) -> Any:
            if not big(v):
                return v
            f = self.scatter(v, hash=False)
            hold.append(f)
            return f

        return tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()}, True

    def _task(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, key: Optional[str],
              pure: bool, priority: int, retries: int, resources: Optional[Mapping[str, float]],
              workers: Any, fhash: str, hold: Optional[list[Future]] = None,
              ann: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        if hold is not None:
            args, kwargs, scattered = self._scatter_large(args, kwargs, hold)
            pure = pure and not scattered  # a scattered argument's key is random, not its hash
        deps: list[str] = []
        args2 = _unpack_futures(args, deps, self)
        kwargs2 = _unpack_futures(kwargs, deps, self) if kwargs else {}
        payload = _keys.dumps_payload((args2, kwargs2))
        if key is None:
            name = _keys.funcname(func)
            key = _keys.pure_key(name, fhash, payload) if pure else _keys.impure_key(name)
        task: dict[str, Any] = {"key": key, "kind": "py", "func": fhash, "payload": payload}
        if deps:
            task["deps"] = list(dict.fromkeys(deps))
        if ann:
            task.update(ann)
        _annotate(task, priority, retries, resources, workers)
        return task

    def submit(self, func: Callable[..., Any], *args: Any, key: Optional[str] = None,
               workers: Any = None, resources: Optional[Mapping[str, float]] = None,
               retries: int = 0, priority: int = 0, fifo_timeout: Any = "100 ms", pure: bool = True,
               allow_other_workers: bool = False, actor: bool = False, actors: bool = False,
               **kwargs: Any) -> Future:
        """Run ``func(*args, **kwargs)`` on the cluster and return a Future to its result.

        Futures among the arguments (also nested in lists, tuples, sets and dicts) are replaced
        by their values on the worker. A ``pure`` call gets a key hashed from the function and
        arguments, so submitting the same call twice reuses the result; ``pure=False`` gives a
        fresh key. ``retries`` re-runs a failing task; ``priority`` (larger first),
        ``resources`` ({"GPU": 1}) and ``workers`` (names or addresses) are passed on to the
        scheduler.
        """
        if not callable(func):
            raise TypeError("First input to submit must be a callable function")
        _refuse("submit", {}, fifo_timeout=fifo_timeout)
        workers = _loose(workers, allow_other_workers, actor or actors)
        fhash, fdata = self._func(func)
        hold: list[Future] = []  # scattered large arguments, kept until the task is sent
        task = self._task(func, args, kwargs, key=key, pure=pure, priority=priority,
                          retries=retries, resources=resources, workers=workers, fhash=fhash, hold=hold,
                          ann=_global_annotations())
        with self._lock:
            if self._live(task["key"]):
                return Future(task["key"], self)
            return self._update_graph([task], {fhash: fdata}, [task["key"]])[0]

    def submit_go(self, name: str, *args: Any, key: Optional[str] = None, pure: bool = True,
                  workers: Any = None, resources: Optional[Mapping[str, float]] = None,
                  retries: int = 0, priority: int = 0) -> Future:
        """Run the Go function registered as ``name`` in the workers (a ``go`` task).

        Arguments are msgpack literals (None, bool, int, float, str, bytes, lists, dicts) or
        Futures (references: Arrow results arrive as Arrow record batches, the others as
        their msgpack values). Example: ``client.submit_go("row_count", table_future)``.
        """
        wire_args: list[dict[str, Any]] = []
        deps: list[str] = []
        for a in args:
            if isinstance(a, Future):
                wire_args.append({"r": a.key})
                deps.append(a.key)
            else:
                wire_args.append({"v": a})
        if key is None:
            body = _wire.packb([name, wire_args])
            key = _keys.pure_key(name, "go", body) if pure else _keys.impure_key(name)
        task: dict[str, Any] = {"key": key, "kind": "go", "func": name, "args": wire_args}
        if deps:
            task["deps"] = list(dict.fromkeys(deps))
        _annotate(task, priority, retries, resources, workers)
        with self._lock:
            if self._live(key):
                return Future(key, self)
            return self._update_graph([task], {}, [key])[0]

    def map(self, func: Callable[..., Any], *iterables: Iterable[Any],
            key: Union[str, Sequence[str], None] = None, workers: Any = None,
            retries: int = 0, resources: Optional[Mapping[str, float]] = None,
            priority: int = 0, fifo_timeout: Any = "100 ms", pure: bool = True,
            batch_size: Optional[int] = None, allow_other_workers: bool = False, actor: bool = False,
            actors: bool = False, **kwargs: Any) -> list[Future]:
        """``submit(func, *items)`` for each item of the zipped iterables; one message for all.

        ``key`` is a list of keys, or a string used as the key prefix.
        """
        if not callable(func):
            raise TypeError("First input to map must be a callable function")
        _refuse("map", {}, fifo_timeout=fifo_timeout)
        workers = _loose(workers, allow_other_workers, actor or actors)
        columns = [list(it) for it in iterables]
        n = min((len(c) for c in columns), default=0)
        if isinstance(key, (list, tuple)) and len(key) < n:
            raise ValueError(f"map: {len(key)} keys given for {n} tasks")
        fhash, fdata = self._func(func)
        tasks: list[dict[str, Any]] = []
        hold: list[Future] = []  # scattered large arguments, kept until the tasks are sent
        ann = _global_annotations()
        for i in range(n):
            args = tuple(c[i] for c in columns)
            k = key[i] if isinstance(key, (list, tuple)) else None
            t = self._task(func, args, kwargs, key=k, pure=pure, priority=priority,
                           retries=retries, resources=resources, workers=workers, fhash=fhash, hold=hold,
                           ann=ann)
            if k is None and isinstance(key, str):
                t["key"] = f"{key}-{t['key'].rsplit('-', 1)[1]}"
            tasks.append(t)
        with self._lock:
            new: dict[str, dict[str, Any]] = {}
            for t in tasks:
                if not self._live(t["key"]) and t["key"] not in new:
                    new[t["key"]] = t
            if new:
                self._update_graph(list(new.values()), {fhash: fdata}, list(new))
            return [Future(t["key"], self) for t in tasks]

    # ---------------------------------------------------------------------------------------
    # results

    def _fetch_one(self, future: Future) -> Any:
        return self._gather_values([future])[future.key]

    def gather(self, futures: Any, errors: str = "raise", direct: Any = None,
               asynchronous: Any = None) -> Any:
        """Wait for futures and return their results, in the same (nested) structure.

        Lists, tuples, sets and dicts of futures are traversed; other values pass through.
        ``errors="skip"`` drops failed futures from lists instead of raising.
        """
        if errors not in ("raise", "skip"):
            raise ValueError("errors must be 'raise' or 'skip'")
        if isinstance(futures, collections.abc.Iterator):  # iter(...), a generator: values, lazily as dask
            return iter(self.gather(list(futures), errors=errors, direct=direct, asynchronous=asynchronous))
        _refuse("gather", {}, asynchronous=asynchronous)
        flat = _flatten_futures(futures)
        for f in flat:
            f._state.event.wait()
        bad = {f.key for f in flat if f._state.status != FINISHED}
        if bad and errors == "raise":
            for f in flat:
                if f.key in bad:
                    _raise_state(f._state)
        values = self._gather_values([f for f in flat if f.key not in bad])
        return _repack(futures, values, bad)

    def _gather_values(self, futures: Sequence[Future]) -> dict[str, Any]:
        """Fetch the results of finished futures from the workers' data ports."""
        states = {f.key: f._state for f in futures}
        for st in states.values():
            st.event.wait()
            if st.status != FINISHED:
                _raise_state(st)
        out: dict[str, Any] = {}
        todo = dict(states)
        deadline = time.monotonic() + self.fetch_timeout
        attempt = 0
        while todo:
            by_worker: dict[str, list[str]] = {}
            for k, st in todo.items():
                by_worker.setdefault(st.worker, []).append(k)
            failed: list[str] = []
            for worker, keys in by_worker.items():
                for i in range(0, len(keys), _GET_DATA_BATCH):
                    chunk = keys[i:i + _GET_DATA_BATCH]
                    got = self._data.get_data(worker, chunk, self) if worker else {}
                    out.update(got)
                    failed.extend(k for k in chunk if k not in got)
            todo = {k: states[k] for k in failed}
            if not todo:
                break
            attempt += 1
            if time.monotonic() > deadline:
                raise FutureLostError(f"could not fetch {sorted(todo)[:5]} from any worker within"
                                      f" {self.fetch_timeout}s")
            self._relocate(todo, attempt)
        return out

    def _relocate(self, todo: Mapping[str, KeyState], attempt: int) -> None:
        """Find new homes for keys whose worker did not have them.

        Asks the scheduler (``who_has``); a key that no worker holds any more is being
        recomputed, so wait for its next ``key_state`` (polling ``who_has`` meanwhile, less
        and less often: 50 ms, doubling, at most every 2 s).
        """
        time.sleep(min(0.05 * attempt, 0.5))
        failed_on = {k: st.worker for k, st in todo.items()}
        deadline = time.monotonic() + self.fetch_timeout
        pending = dict(todo)
        polls = 0
        while pending:
            try:
                who = self._request({"op": "who_has", "keys": list(pending)}).get("who_has") or {}
            except (TimeoutError, CommClosedError):
                who = {}
            for k in list(pending):
                st = pending[k]
                addrs = [a for a in who.get(k) or [] if a and a != failed_on[k]]
                if st.worker != failed_on[k] and st.status == FINISHED:
                    del pending[k]  # a newer key_state moved it
                elif addrs and st.move(random.choice(addrs), failed_on[k]):
                    del pending[k]
                elif addrs:
                    del pending[k]  # moved by a key_state meanwhile, or pending again
                elif st.status != FINISHED and st.done():
                    _raise_state(st)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise FutureLostError(f"no worker holds {sorted(pending)[:5]}; waited"
                                      f" {self.fetch_timeout}s for them to be recomputed")
            # a key_state that moves a key ends the wait early; a key still finished (the
            # scheduler believes in the copy that was not there) has its event set: sleep
            delay = relocate_delay(polls)
            polls += 1
            first = next(iter(pending.values()))
            if first.event.is_set():
                time.sleep(delay)
            else:
                first.event.wait(delay)
            for k, st in pending.items():
                if st.status == FINISHED and st.worker and st.worker != failed_on[k]:
                    failed_on[k] = ""  # moved: accept on the next round

    def _data_request(self, worker: str, header: dict[str, Any], frames: Sequence[_wire.Buffer] = (),
                      expect: str = "data") -> tuple[dict[str, Any], list[bytearray]]:
        """One request on the pooled data connection to ``worker`` (see ``_data.DataPool``)."""
        return self._data.request(worker, header, frames, expect=expect)

    def _get_data(self, worker: str, keys: list[str]) -> dict[str, Any]:
        """Values of ``keys`` held by ``worker`` (keys it does not have are left out)."""
        return self._data.get_data(worker, keys, self)

    # ---------------------------------------------------------------------------------------
    # scatter

    def _workers(self) -> list[dict[str, Any]]:
        info = self._request({"op": "info"})
        return list(info.get("workers") or [])

    def scatter(self, data: Any, workers: Any = None, broadcast: bool = False,
                direct: Any = None, hash: bool = True, timeout: Optional[float] = None) -> Any:
        """Send local data to workers and return Futures to it.

        A list/tuple/set gives a list of futures, a dict a dict of futures (its keys become
        the keys), anything else one Future. ``broadcast=True`` copies every value to every
        (selected) worker. ``timeout`` (seconds) bounds the call: asking the scheduler for
        workers waits at most that long, and ``TimeoutError`` is raised when it has passed
        before the next transfer starts (a transfer under way is bounded by ``fetch_timeout``).
        ``direct`` is accepted for dask's sake: data always goes straight to the workers.
        """
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        info = self._request({"op": "info"}, timeout=timeout)
        items, placement = self._scatter_plan(data, list(info.get("workers") or []), workers, broadcast, hash)
        for addr, its in placement.items():
            for j in range(0, len(its), _PUT_DATA_BATCH):
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"scatter did not finish within {timeout}s")
                self._put(addr, its[j:j + _PUT_DATA_BATCH])
        return self._scattered(data, items, placement)

    def _scatter_plan(self, data: Any, ws: list[dict[str, Any]], workers: Any, broadcast: bool,
                      hash: bool) -> tuple[list[tuple[str, Any]], dict[str, list[tuple[str, Any]]]]:
        """The (key, value) items of ``data`` and which worker gets which."""
        if isinstance(data, dict):
            items = [(str(k), v) for k, v in data.items()]
        elif isinstance(data, (list, tuple, set, frozenset)) or hasattr(data, "__next__"):
            items = [(self._scatter_key(v, hash), v) for v in data]
        else:
            items = [(self._scatter_key(data, hash), data)]
        if workers is not None:
            wanted = {workers} if isinstance(workers, str) else set(workers)
            ws = [w for w in ws if w.get("name") in wanted or w.get("address") in wanted]
        if not ws:
            raise ShoalError("scatter: no worker is available" + (f" among {workers}" if workers else ""))
        ws.sort(key=lambda w: (w.get("memory") or 0, w.get("address")))
        placement: dict[str, list[tuple[str, Any]]] = {}
        for i, item in enumerate(items):
            targets = ws if broadcast else [ws[i % len(ws)]]
            for w in targets:
                placement.setdefault(str(w["address"]), []).append(item)
        return items, placement

    def _scattered(self, data: Any, items: list[tuple[str, Any]],
                   placement: dict[str, list[tuple[str, Any]]]) -> Any:
        """The futures of scattered items, shaped like ``data``."""
        futures: dict[str, Future] = {}
        with self._lock:
            for key, _ in items:
                f = Future(key, self)
                if not f._state.done():
                    addr = next(a for a, its in placement.items() if any(k == key for k, _ in its))
                    f._state.finish(addr)
                futures[key] = f
        if isinstance(data, dict):
            return {k: futures[str(k)] for k in data}
        if isinstance(data, (list, tuple, set, frozenset)) or hasattr(data, "__next__"):
            return [futures[k] for k, _ in items]
        return futures[items[0][0]]

    @staticmethod
    def _scatter_key(value: Any, hashed: bool) -> str:
        name = type(value).__name__
        return f"{name}-{_keys.token_for(value)}" if hashed else f"{name}-{uuid.uuid4().hex}"

    def _put(self, worker: str, items: Sequence[tuple[str, Any]]) -> None:
        headers, encoded = encode_items(items)
        self._data.put(worker, headers, encoded)
        with self._lock:
            self._send({"op": "scatter", "items": headers, "worker": worker})

    # ---------------------------------------------------------------------------------------
    # dask collections and graphs

    def _graph_futures(self, dsk: Any, keys: Sequence[Hashable], *, priority: int = 0,
                       retries: int = 0, resources: Optional[Mapping[str, float]] = None,
                       workers: Any = None) -> dict[Hashable, Future]:
        with _dask.paused_gc():
            return self._graph_futures_gc_paused(dsk, keys, priority=priority, retries=retries,
                                                 resources=resources, workers=workers)

    def _graph_futures_gc_paused(self, dsk: Any, keys: Sequence[Hashable], *, priority: int,
                                 retries: int, resources: Optional[Mapping[str, float]],
                                 workers: Any) -> dict[Hashable, Future]:
        import dask

        global_ann = dict(dask.get_annotations())  # dask.annotate(...) around this call
        _dask.check_annotations(global_ann)
        per_key = _dask.annotations_by_key(dsk, global_ann)
        graph = _dask.normalize_graph(dsk, fuse=keys)
        fhash, fdata = self._exec_func()
        ann = _dask.wire_annotations(global_ann)
        _annotate(ann, priority, retries or 0, resources, workers)  # the call's own options win
        wanted = list(dict.fromkeys(_keys.wire_key(k) for k in keys))
        # Send the graph in chunks as it is pickled, so that the cluster starts on the first
        # tasks while the client pickles the rest. Until the last chunk is sent, futures hold
        # the keys of earlier chunks that later ones need, and the wanted keys a chunk defines
        # (the scheduler forgets tasks that lead to nothing wanted).
        want_set = set(wanted)
        held: list[Future] = []
        futures: list[Future] = []
        # (a chunk must fit in one update_graph message: _update_graph's own splitting
        # would release keys these futures still hold)
        funcs = {fhash: fdata}  # plus the functions of direct calls, as chunks name them
        for tasks, frontier, last in _dask.task_chunks(graph, fhash, annotations=ann, per_key=per_key,
                                                       max_bytes=_UPDATE_BATCH_BYTES // 2,
                                                       funcs=funcs, func_of=self._func):
            if last:
                futures = self._update_graph(tasks, funcs, wanted, one_message=True)
            else:
                hold = frontier + sorted(want_set.intersection(_chunk.task_keys(tasks)))
                held.extend(self._update_graph(tasks, funcs, list(dict.fromkeys(hold)), one_message=True))
        del held
        by_wire = {f.key: f for f in futures}
        return {k: by_wire[_keys.wire_key(k)] for k in keys}

    def get(self, dsk: Any, keys: Any, workers: Any = None, allow_other_workers: Any = None,
            resources: Optional[Mapping[str, float]] = None, sync: bool = True,
            asynchronous: Any = None, direct: Any = None, retries: Optional[int] = None,
            priority: int = 0, fifo_timeout: Any = None, actors: Any = None, **kwargs: Any) -> Any:
        """Compute a dask graph on the cluster: ``dask.compute(x, scheduler=client.get)``.

        ``dsk`` is a dask graph (new task-spec nodes or legacy tuples) or anything with
        ``__dask_graph__``; ``keys`` a key or a nested list of keys. Returns the values shaped
        like ``keys``. With ``sync=False`` returns futures instead.
        """
        _refuse("get", kwargs, fifo_timeout=fifo_timeout, actors=actors, asynchronous=asynchronous)
        workers = _loose(workers, bool(allow_other_workers), False)
        flat = list(_dask.flatten_keys(keys))
        futures = self._graph_futures(dsk, flat, priority=priority, retries=retries or 0,
                                      resources=resources, workers=workers)
        if not sync:
            return _dask.repack(keys, futures)
        values = self.gather([futures[k] for k in flat])
        return _dask.repack(keys, dict(zip(flat, values)))

    def compute(self, collections: Any, sync: bool = False, optimize_graph: bool = True,
                workers: Any = None, allow_other_workers: bool = False,
                resources: Optional[Mapping[str, float]] = None, retries: int = 0,
                priority: int = 0, fifo_timeout: Any = None, actors: Any = None,
                traverse: bool = True, **kwargs: Any) -> Any:
        """Start computing dask collections; returns a Future per collection (values if sync)."""
        from dask.base import is_dask_collection
        from dask.delayed import delayed

        _refuse("compute", kwargs, fifo_timeout=fifo_timeout, actors=actors)
        workers = _loose(workers, allow_other_workers, False)
        singleton = not isinstance(collections, (list, tuple, set, frozenset))
        colls = [collections] if singleton else list(collections)
        if traverse:
            colls = [delayed(c) if isinstance(c, (list, set, tuple, dict)) else c for c in colls]
        variables = [c for c in colls if is_dask_collection(c)]
        futures_by_name: dict[Hashable, Future] = {}
        names: list[Hashable] = []
        if variables:
            expr, keys = _dask.collections_to_graph(variables, optimize_graph, finalize=True)
            names = list(_dask.flatten_keys(keys))
            futures_by_name = self._graph_futures(expr, names, priority=priority, retries=retries,
                                                  resources=resources, workers=workers)
        out: list[Any] = []
        i = 0
        for c in colls:
            if is_dask_collection(c):
                out.append(futures_by_name[names[i]])
                i += 1
            else:
                out.append(c)
        if sync:
            out = self.gather(out)
        return out[0] if singleton else out

    def persist(self, collections: Any, optimize_graph: bool = True, workers: Any = None,
                allow_other_workers: Any = None, resources: Optional[Mapping[str, float]] = None,
                retries: Optional[int] = None, priority: int = 0, fifo_timeout: Any = None,
                actors: Any = None, **kwargs: Any) -> Any:
        """Start computing dask collections and return equivalent collections backed by futures."""
        _refuse("persist", kwargs, fifo_timeout=fifo_timeout, actors=actors)
        workers = _loose(workers, bool(allow_other_workers), False)
        singleton = not isinstance(collections, (list, tuple, set, frozenset))
        colls = [collections] if singleton else list(collections)
        expr, keys = _dask.collections_to_graph(colls, optimize_graph, finalize=False)
        flat = list(_dask.flatten_keys(keys))
        futures = self._graph_futures(expr, flat, priority=priority, retries=retries or 0,
                                      resources=resources, workers=workers)
        result = []
        for c, ks in zip(colls, keys):
            rebuild, args = c.__dask_postpersist__()
            result.append(rebuild({k: futures[k] for k in _dask.flatten_keys(ks)}, *args))
        return result[0] if singleton else result

    # ---------------------------------------------------------------------------------------
    # control

    def cancel(self, futures: Any, asynchronous: Any = None, force: bool = False,
               reason: Optional[str] = None, msg: Optional[str] = None) -> None:
        """Cancel futures (and the tasks waiting on them)."""
        flat = _flatten_futures(futures)
        keys = list(dict.fromkeys(f.key for f in flat))
        if not keys:
            return
        with self._lock:
            self._send({"op": "cancel_keys", "keys": keys})
        for f in flat:
            if f._state.status != CANCELLED:
                f._state.fail(CANCELLED, CancelledError(msg or reason or f"{f.key} was cancelled",
                                                        code="cancelled"))

    def who_has(self, futures: Any = None) -> dict[str, list[str]]:
        """Where each key's data lives: {key: [worker data addresses]}."""
        flat = _flatten_futures(futures)
        keys = [f.key for f in flat] if futures is not None else self._keys.keys()
        reply = self._request({"op": "who_has", "keys": keys})
        return {str(k): list(v or []) for k, v in (reply.get("who_has") or {}).items()}

    def scheduler_info(self, n_workers: int = -1) -> dict[str, Any]:
        """Cluster information shaped like dask's: {"address", "workers": {addr: {...}}, ...}.
        ``n_workers`` limits how many workers are listed (-1, the default here: all; dask's
        default is 5)."""
        return self._info_from(self._request({"op": "info"}), n_workers)

    def _info_from(self, reply: dict[str, Any], n_workers: int = -1) -> dict[str, Any]:
        """scheduler_info's answer from an ``info_reply``."""
        workers: dict[str, Any] = {}
        listed = reply.get("workers") or []
        if n_workers >= 0:
            listed = listed[:n_workers]
        for w in listed:
            addr = str(w.get("address"))
            d = dict(w)
            d.setdefault("type", "Worker")
            d["host"] = addr.rsplit(":", 1)[0]
            d["id"] = w.get("name")
            d.setdefault("metrics", {"memory": w.get("memory"), "spilled": w.get("spilled"),
                                     "executing": w.get("executing"), "ready": w.get("ready"),
                                     "cpu": w.get("cpu")})
            workers[addr] = d
        dash = str(reply.get("dashboard") or self._dashboard or "")
        if dash:
            self._dashboard = dash
        return {"type": "Scheduler", "id": self.id,
                "address": str(reply.get("scheduler") or self.scheduler_address),
                "services": {"dashboard": dash}, "dashboard": dash, "workers": workers}

    def nthreads(self, workers: Any = None) -> dict[str, int]:
        """{worker address: threads} (``workers``: only those addresses)."""
        wanted = None if workers is None else ({workers} if isinstance(workers, str) else set(workers))
        return {a: int(w.get("nthreads") or 0) for a, w in self.scheduler_info()["workers"].items()
                if wanted is None or a in wanted}

    ncores = nthreads

    def has_what(self, workers: Any = None) -> dict[str, list[str]]:
        """The keys of this client's futures each worker holds: {worker address: [keys]}
        (every worker appears; ``workers`` limits it to those addresses)."""
        out: dict[str, list[str]] = {a: [] for a in self.scheduler_info()["workers"]}
        for key, holders in self.who_has().items():
            for a in holders:
                out.setdefault(a, []).append(key)
        if workers is not None:
            wanted = {workers} if isinstance(workers, str) else set(workers)
            out = {a: ks for a, ks in out.items() if a in wanted}
        return out

    def run(self, function: Callable[..., Any], *args: Any, workers: Any = None, wait: bool = True,
            nanny: bool = False, on_error: str = "raise", **kwargs: Any) -> Optional[dict[str, Any]]:
        """Run ``function(*args, **kwargs)`` once on every worker (or those in ``workers``) and
        return {worker address: result}. It runs as a task in the worker's Python executor (a
        Shoal worker is a Go process), after the tasks already queued there. ``on_error``:
        "raise" (the first error), "return" (the exception as that worker's result) or "ignore"."""
        if nanny:
            raise NotImplementedError("run(nanny=True): Shoal workers have no nanny process")
        if on_error not in ("raise", "return", "ignore"):
            raise ValueError(f"on_error={on_error!r}: use 'raise', 'return' or 'ignore'")
        addrs = list(self.scheduler_info()["workers"]) if workers is None else (
            [workers] if isinstance(workers, str) else list(workers))
        futures = {a: self.submit(function, *args, workers=[a], pure=False, **kwargs) for a in addrs}
        if not wait:
            return None
        out: dict[str, Any] = {}
        for a, f in futures.items():
            try:
                out[a] = f.result()
            except Exception as exc:
                if on_error == "raise":
                    raise
                if on_error == "return":
                    out[a] = exc
        return out

    def get_versions(self, check: bool = False, packages: Sequence[str] = ()) -> dict[str, Any]:
        """The versions of Python and the key packages on the client and every worker's
        executor, and the scheduler's Shoal version, shaped like dask's. With ``check``, a
        package whose version differs anywhere (Shoal's including the scheduler's) raises
        ValueError naming it and where."""
        names = (*_VERSIONED, *packages)
        client = _versions(names)
        workers = self.run(_versions, names) or {}
        out = {"scheduler": {"packages": {"shoal": self.server_version}}, "workers": workers, "client": client}
        if check:
            bad = []
            for name in ["python", *names]:
                seen = {"client": _pkg(client, name)}
                seen.update({w: _pkg(v, name) for w, v in workers.items()})
                if name == "shoal":
                    seen["scheduler"] = self.server_version
                if len(set(seen.values())) > 1:
                    bad.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in seen.items()))
            if bad:
                raise ValueError("Mismatched versions found\n" + "\n".join(bad))
        return out

    def run_on_scheduler(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Not available: Shoal's scheduler is a Go process and runs no Python."""
        raise NotImplementedError("run_on_scheduler: Shoal's scheduler is written in Go and runs no Python; "
                                  "use client.scheduler_info() for its state")

    def wait_for_workers(self, n_workers: int = 0, timeout: Optional[float] = None) -> None:
        """Block until at least ``n_workers`` workers have joined; ``TimeoutError`` after
        ``timeout`` seconds (None: wait as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while len(self.scheduler_info()["workers"]) < n_workers:
            if deadline is not None and time.monotonic() >= deadline:
                have = len(self.scheduler_info()["workers"])
                raise TimeoutError(f"only {have} of {n_workers} workers joined within {timeout} s")
            time.sleep(delay)
            delay = min(2 * delay, 0.05)

    def _run_callback(self, fn: Callable[[Future], Any], future: Future) -> None:
        def call() -> None:
            try:
                fn(future)
            except Exception:
                logger.exception("shoal: done callback %r failed", fn)

        try:
            self._callbacks.submit(call)
        except RuntimeError:  # executor shut down
            call()

    def close(self, timeout: Optional[float] = None) -> None:
        """Release everything this client holds, close its connections (and its own cluster:
        ``timeout`` is how long its processes get to stop before they are killed, default 10 s)."""
        if self._closed.is_set():
            return
        try:
            self._flush_releases()
        except Exception:
            pass
        self._closed.set()
        if self._dask_config is not None:
            try:
                self._dask_config.__exit__(None, None, None)
            except Exception:
                pass
            self._dask_config = None
        self._comm.close()
        self._data.close()
        self._callbacks.shutdown(wait=False)
        self._keys.close(CancelledError("the client was closed"))
        _clients.discard(self)
        if self._own_cluster and self.cluster is not None:
            self.cluster.close(10.0 if timeout is None else float(timeout))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if hasattr(self, "_comm") and not self._closed.is_set():
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<Client: scheduler={self.scheduler_address!r} status={self.status}>"

    def _repr_html_(self) -> str:
        rows = [("Scheduler", self.scheduler_address), ("Status", self.status)]
        if self.status == "running":
            try:
                ws = self.scheduler_info()["workers"]
                threads = sum(int(w.get("nthreads") or 0) for w in ws.values())
                memory = sum(int(w.get("memory_limit") or 0) for w in ws.values())
                rows += [("Workers", str(len(ws))), ("Threads", str(threads)), ("Memory", _human_bytes(memory))]
            except ShoalError:
                pass
        from .cluster import html_summary

        return html_summary("Shoal Client", rows, self.dashboard_link)


# -------------------------------------------------------------------------------------------
# helpers


# the packages get_versions reports (and checks) besides Python itself
_VERSIONED = ("shoal", "msgpack", "cloudpickle", "pyarrow", "numpy", "pandas", "dask")


def _versions(names: Sequence[str]) -> dict[str, Any]:
    """This process's Python and package versions (None for a package not installed)."""
    import importlib.metadata
    import platform

    pkgs: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in names:
        try:
            pkgs[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pkgs[name] = None
    return {"host": {"python": sys.version, "OS": platform.system(), "machine": platform.machine()},
            "packages": pkgs}


def _pkg(v: Any, name: str) -> Any:
    return (v.get("packages") or {}).get(name) if isinstance(v, dict) else None


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"

_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()
_defaults: "list[weakref.ref[Client]]" = []  # clients made with set_as_default, oldest first


def fire_and_forget(obj: Any) -> None:
    """Run these futures' tasks to the end even when nothing holds them any more (the client
    released them, or closed): the scheduler keeps wanting each key until it is computed or
    fails, then lets it go. ``obj``: futures, containers of them, or persisted collections."""
    from .futures import futures_of

    by_client: dict[int, tuple[Client, list[str]]] = {}
    for f in futures_of(obj):
        by_client.setdefault(id(f.client), (f.client, []))[1].append(f.key)
    for client, keys in by_client.values():
        with client._lock:
            client._send({"op": "fire_and_forget", "keys": keys})


def default_client() -> Client:
    """The client to use when none is given (shared-state objects, ``get_dataset``): the
    newest open Client made with ``set_as_default=True``, else any open one."""
    _defaults[:] = [r for r in _defaults if (c := r()) is not None and c.status != "closed"]
    if _defaults:
        c = _defaults[-1]()
        if c is not None:
            return c
    for c in list(_clients):
        if c.status != "closed":
            return c
    raise ValueError("No clients found: start a client and point it to the scheduler, e.g."
                     " Client('scheduler-address:8786')")


class _DaskClientLookup:
    """What dask.base asks for ``compute(scheduler="distributed")``: ``current(allow_global)``
    names the client; a Shoal client first, else dask.distributed's own when it is installed."""

    @staticmethod
    def current(allow_global: bool = True) -> Any:
        try:
            return default_client()
        except ValueError:
            try:
                from distributed import Client as DistributedClient
            except ImportError:
                raise ValueError("No clients found") from None
            return DistributedClient.current(allow_global=allow_global)  # type: ignore[no-untyped-call]


def _distributed_get_client() -> Any:
    try:
        return default_client()
    except ValueError:
        from distributed import get_client

        return get_client()


def _hook_dask_distributed() -> None:
    """Make ``x.compute(scheduler="distributed")`` (and ``"dask.distributed"``) use the Shoal
    client, as it uses dask.distributed's default client: dask.base looks the client up through
    two module globals it fills lazily, which this fills with lookups that try Shoal's default
    client first and fall back to dask.distributed's."""
    try:
        import dask.base as db

        if db._get_distributed_client is _distributed_get_client:
            return
        db._DistributedClient = _DaskClientLookup
        db._get_distributed_client = _distributed_get_client
        db._DISTRIBUTED_AVAILABLE = True
    except (ImportError, AttributeError) as exc:  # another dask: scheduler="distributed" is dask's business
        logger.debug("shoal: cannot make scheduler='distributed' use Shoal: %s", exc)


def dask_defaults(get: Callable[..., Any], address: str, shuffle_method: Any,
                  shoal_shuffle: bool = False) -> dict[str, Any]:
    """The dask configuration a default Client installs: itself as the scheduler and, unless
    the user chose a shuffle method, one for dask.dataframe. On one machine (the scheduler on a
    loopback address) that is the ``"shoal"`` shuffle when ``shoal_shuffle`` says it can be
    used (see shoal._shuffle); when the cluster may span hosts, dask.dataframe's task-based
    shuffle. dask's own default without dask.distributed, the "disk" shuffle, keeps partd
    files in one machine's temporary directory and is the fallback on one machine."""
    cfg: dict[str, Any] = {"scheduler": get}
    if shuffle_method is None:
        if not _is_loopback(address):
            cfg["dataframe.shuffle.method"] = "tasks"
        elif shoal_shuffle:
            cfg["dataframe.shuffle.method"] = _shuffle.METHOD
    return cfg


def _flatten_futures(obj: Any) -> list[Future]:
    """The Futures in a nested structure of lists, tuples, sets and dicts, in order."""
    from .futures import _collect

    out: list[Future] = []
    _collect(obj, out)
    return out


def _unpack_futures(obj: Any, deps: list[str], client: Client) -> Any:
    """Replace Futures in ``obj`` by Refs (collecting their keys in ``deps``)."""
    from ._refs import Ref

    def swap(x: Any) -> Any:
        if isinstance(x, Future):
            if x.client is not client:
                raise ValueError(f"{x!r} belongs to another client")
            deps.append(x.key)
            return Ref(x.key)
        return NOTHING

    return replace(obj, swap)


def _repack(obj: Any, values: Mapping[str, Any], bad: set[str]) -> Any:
    typ = type(obj)
    if isinstance(obj, Future):
        return values[obj.key]
    if typ is list:
        return [_repack(x, values, bad) for x in obj
                if not (isinstance(x, Future) and x.key in bad)]
    if typ in (tuple, set, frozenset):
        return typ(_repack(x, values, bad) for x in obj)
    if typ is dict:
        return {k: _repack(v, values, bad) for k, v in obj.items()}
    return obj


def _global_annotations() -> dict[str, Any]:
    """Task fields from a ``dask.annotate(...)`` block around a submit or map, as in dask."""
    dask = sys.modules.get("dask")
    if dask is None:
        return {}
    ann = dict(dask.get_annotations())
    if not ann:
        return {}
    _dask.check_annotations(ann)
    if any(callable(v) for v in ann.values()):
        raise ValueError("dask.annotate with a function of the key applies to dask graphs; for submit and map, "
                         "give the value")
    return _dask.wire_annotations(ann)


def _annotate(task: dict[str, Any], priority: int, retries: int,
              resources: Optional[Mapping[str, float]], workers: Any) -> None:
    if priority:
        task["priority"] = int(priority)
    if retries:
        task["retries"] = int(retries)
    if resources:
        task["resources"] = {str(k): float(v) for k, v in resources.items()}
    if workers:
        task["workers"] = [workers] if isinstance(workers, str) else [str(w) for w in workers]


# -------------------------------------------------------------------------------------------
# asyncio (shoal._async)

from ._async import AsyncClient, install_threaded  # noqa: E402 - it builds on Client

# cluster control, shared state and information, as coroutines (each runs the blocking call in a
# thread: the mixins implement them once, blocking)
install_threaded(("restart", "restart_workers", "retire_workers", "replicate", "rebalance", "processing",
                  "get_worker_logs", "get_scheduler_logs", "upload_file", "register_plugin",
                  "unregister_worker_plugin", "register_worker_callbacks", "story", "get_versions"))


__all__ = ["Client", "AsyncClient"]
