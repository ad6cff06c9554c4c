"""asyncio: the client's calls as coroutines on the caller's event loop.

Waiting is native: a key state wakes the loop through ``call_soon_threadsafe``
(``futures.wait_async``), a request to the scheduler is the control connection's reply future
wrapped for the loop (``asyncio.wrap_future``), and results travel over asyncio data
connections (``_data.AsyncDataPool``, one per client and loop). No call starts a thread. The
client's own background threads (the reader of the scheduler connection, the releaser) are
per client, as in the blocking client.

:class:`AsyncClient` (also ``Client(..., asynchronous=True)``) is the asyncio face of one
blocking :class:`~shoal.Client` core (``client.sync``): the same futures, key states and
connection. The functions here also serve ``await future`` for any client's futures.
"""

from __future__ import annotations

import asyncio
import collections.abc
import functools
import os
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from ._data import GET_DATA_BATCH, PUT_DATA_BATCH, AsyncDataPool, encode_items
from ._states import raise_state, relocate_delay
from .exceptions import CommClosedError, FutureLostError, TimeoutError
from .futures import FINISHED, Future, KeyState, _collect, wait_async

if TYPE_CHECKING:
    from .client import Client
    from .cluster import LocalCluster

_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, tuple[weakref.ref[Client], AsyncDataPool]]]" = \
    weakref.WeakKeyDictionary()


def data_pool(client: "Client") -> AsyncDataPool:
    """``client``'s data connections on the running loop (made on first use)."""
    loop = asyncio.get_running_loop()
    by_client = _pools.setdefault(loop, {})
    entry = by_client.get(id(client))
    if entry is None or entry[0]() is not client:
        ref = weakref.ref(client)  # the pool must not keep its client alive

        def token() -> str:
            c = ref()
            return c._token if c is not None else ""

        entry = (ref, AsyncDataPool(client._transport, token, client.timeout, client.fetch_timeout))
        by_client[id(client)] = entry
    return entry[1]


def close_pools(client: "Client") -> None:
    for by_client in list(_pools.values()):
        entry = by_client.pop(id(client), None)
        if entry is not None:
            entry[1].close()


async def request(client: "Client", header: dict[str, Any], timeout: Optional[float] = None) -> dict[str, Any]:
    """A request to the scheduler, awaited on the loop."""
    if client._closed.is_set():
        raise CommClosedError("the client is closed")
    fut = client._comm.request_future(header)
    t = client.timeout if timeout is None else timeout
    try:
        return await asyncio.wait_for(asyncio.wrap_future(fut), t)
    except asyncio.TimeoutError:
        fut.cancel()
        raise TimeoutError(f"the scheduler did not answer {header['op']!r} within {t}s") from None


async def gather_values(client: "Client", futures: Sequence[Future]) -> dict[str, Any]:
    """``Client._gather_values`` on the loop: the results of futures, from the workers."""
    states = {f.key: f._state for f in futures}
    for st in states.values():
        await wait_async(st)
        if st.status != FINISHED:
            raise_state(st)
    pool = data_pool(client)
    out: dict[str, Any] = {}
    todo = dict(states)
    deadline = time.monotonic() + client.fetch_timeout
    attempt = 0
    while todo:
        by_worker: dict[str, list[str]] = {}
        for k, st in todo.items():
            by_worker.setdefault(st.worker, []).append(k)
        chunks = [(w, keys[i:i + GET_DATA_BATCH]) for w, keys in by_worker.items()
                  for i in range(0, len(keys), GET_DATA_BATCH)]
        got_all = await asyncio.gather(*(pool.get_data(w, chunk, client) if w else _nothing()
                                         for w, chunk in chunks))
        failed: list[str] = []
        for (_, chunk), got in zip(chunks, got_all):
            out.update(got)
            failed.extend(k for k in chunk if k not in got)
        todo = {k: states[k] for k in failed}
        if not todo:
            break
        attempt += 1
        if time.monotonic() > deadline:
            raise FutureLostError(f"could not fetch {sorted(todo)[:5]} from any worker within"
                                  f" {client.fetch_timeout}s")
        await relocate(client, todo, attempt)
    return out


async def _nothing() -> dict[str, Any]:
    return {}


async def relocate(client: "Client", todo: Mapping[str, KeyState], attempt: int) -> None:
    """``Client._relocate`` on the loop."""
    import random

    await asyncio.sleep(min(0.05 * attempt, 0.5))
    failed_on = {k: st.worker for k, st in todo.items()}
    deadline = time.monotonic() + client.fetch_timeout
    pending = dict(todo)
    polls = 0
    while pending:
        try:
            who = (await request(client, {"op": "who_has", "keys": list(pending)})).get("who_has") or {}
        except (TimeoutError, CommClosedError):
            who = {}
        for k in list(pending):
            st = pending[k]
            addrs = [a for a in who.get(k) or [] if a and a != failed_on[k]]
            if st.worker != failed_on[k] and st.status == FINISHED:
                del pending[k]
            elif addrs:
                st.move(random.choice(addrs), failed_on[k])
                del pending[k]
            elif st.status != FINISHED and st.done():
                raise_state(st)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise FutureLostError(f"no worker holds {sorted(pending)[:5]}; waited"
                                  f" {client.fetch_timeout}s for them to be recomputed")
        delay = relocate_delay(polls)  # (as Client._relocate)
        polls += 1
        first = next(iter(pending.values()))
        if first.done():
            await asyncio.sleep(delay)
        else:
            try:
                await asyncio.wait_for(wait_async(first), delay)
            except asyncio.TimeoutError:
                pass
        for k, st in pending.items():
            if st.status == FINISHED and st.worker and st.worker != failed_on[k]:
                failed_on[k] = ""


async def result(future: Future) -> Any:
    """``await future``: its result (or its exception raised)."""
    st = future._state
    await wait_async(st)
    if st.status != FINISHED:
        raise_state(st)
    return (await gather_values(future.client, [future]))[future.key]


async def gather(client: "Client", futures: Any, errors: str = "raise") -> Any:
    if errors not in ("raise", "skip"):
        raise ValueError("errors must be 'raise' or 'skip'")
    if isinstance(futures, collections.abc.Iterator):
        futures = list(futures)
    from .client import _repack

    flat: list[Future] = []
    _collect(futures, flat)
    for f in flat:
        await wait_async(f._state)
    bad = {f.key for f in flat if f._state.status != FINISHED}
    if bad and errors == "raise":
        for f in flat:
            if f.key in bad:
                raise_state(f._state)
    values = await gather_values(client, [f for f in flat if f.key not in bad])
    return _repack(futures, values, bad)


async def scatter(client: "Client", data: Any, workers: Any = None, broadcast: bool = False,
                  hash: bool = True) -> Any:
    info = await request(client, {"op": "info"})
    items, placement = client._scatter_plan(data, list(info.get("workers") or []), workers, broadcast, hash)
    pool = data_pool(client)

    async def put(addr: str, its: list[tuple[str, Any]]) -> None:
        for j in range(0, len(its), PUT_DATA_BATCH):
            headers, encoded = encode_items(its[j:j + PUT_DATA_BATCH])
            await pool.put(addr, headers, encoded)
            client._send({"op": "scatter", "items": headers, "worker": addr})

    await asyncio.gather(*(put(addr, its) for addr, its in placement.items()))
    return client._scattered(data, items, placement)


class AsyncClient:
    """The asyncio flavour of :class:`~shoal.Client` (also ``Client(..., asynchronous=True)``).

    ``submit``/``map``/``compute``/``persist``/``cancel`` return at once; awaiting a Future gives
    its result. ``gather``, ``scatter``, ``get``, ``scheduler_info``, ``who_has``, ``has_what``,
    ``nthreads``, ``wait_for_workers``, ``run`` and ``close`` are coroutines running on the
    caller's event loop without threads. Starting (connecting; an owned LocalCluster) and the
    cluster-control and shared-state calls (``restart``, ``upload_file``, ``publish_dataset``,
    …) run their blocking steps in a thread each. Use ``async with AsyncClient(addr) as client``
    or ``client = await AsyncClient(addr)``.
    """

    def __init__(self, address: Union[str, "LocalCluster", None] = None, *,
                 token: Optional[str] = None, timeout: float = 30.0,
                 name: Optional[str] = None, **kwargs: Any) -> None:
        kwargs.pop("asynchronous", None)
        self._args: dict[str, Any] = dict(address=address, token=token, timeout=timeout, name=name,
                                          set_as_default=False, **kwargs)
        self._sync: Optional["Client"] = None
        self._cluster: Optional["LocalCluster"] = None  # one this client started (address None)
        self.asynchronous = True

    async def _start(self) -> "AsyncClient":
        if self._sync is not None:
            return self
        from .client import Client
        from .cluster import LocalCluster

        args = dict(self._args)
        address = args.get("address")
        if address is None and args.get("scheduler_file") is None and not os.environ.get("SHOAL_SCHEDULER_ADDRESS"):
            cluster_kw = {k: args.pop(k) for k in list(args) if k not in _CLIENT_KEYWORDS}
            self._cluster = await LocalCluster(asynchronous=True, **cluster_kw)
            args["address"] = address = self._cluster
        if isinstance(address, LocalCluster) and getattr(address, "proc", None) is None:
            await address  # LocalCluster(asynchronous=True) not awaited yet
        try:
            self._sync = await asyncio.to_thread(lambda: Client(**args))
        except BaseException:
            if self._cluster is not None:
                await self._cluster.close_async()
            raise
        self._sync.asynchronous = True  # its futures' wait() is awaitable
        return self

    def __await__(self) -> Any:
        return self._start().__await__()

    async def __aenter__(self) -> "AsyncClient":
        return await self._start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def sync(self) -> "Client":
        """The underlying blocking client."""
        if self._sync is None:
            raise RuntimeError("AsyncClient is not started: use `await AsyncClient(...)` or `async with`")
        return self._sync

    @property
    def status(self) -> str:
        return "newly-created" if self._sync is None else self._sync.status

    @property
    def dashboard_link(self) -> str:
        return self.sync.dashboard_link

    @property
    def scheduler_address(self) -> str:
        return self.sync.scheduler_address

    @property
    def id(self) -> int:
        return self.sync.id

    # -- calls that return at once ----------------------------------------------------------

    def submit(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        return self.sync.submit(func, *args, **kwargs)

    def submit_go(self, name: str, *args: Any, **kwargs: Any) -> Future:
        return self.sync.submit_go(name, *args, **kwargs)

    def map(self, func: Callable[..., Any], *iterables: Iterable[Any], **kwargs: Any) -> list[Future]:
        return self.sync.map(func, *iterables, **kwargs)

    def compute(self, collections: Any, **kwargs: Any) -> Any:
        if kwargs.pop("sync", False):
            raise TypeError("AsyncClient.compute(sync=True): await client.gather(client.compute(x)) instead")
        return self.sync.compute(collections, **kwargs)

    def persist(self, collections: Any, **kwargs: Any) -> Any:
        return self.sync.persist(collections, **kwargs)

    def cancel(self, futures: Any, **kwargs: Any) -> None:
        self.sync.cancel(futures, **kwargs)

    # -- coroutines on the loop -------------------------------------------------------------

    async def gather(self, futures: Any, errors: str = "raise") -> Any:
        return await gather(self.sync, futures, errors)

    async def scatter(self, data: Any, **kwargs: Any) -> Any:
        """``Client.scatter`` as a coroutine, with its options (an unknown one raises
        ``TypeError``); ``timeout`` bounds the whole call (``TimeoutError``)."""
        import inspect

        from .client import Client

        opts = inspect.signature(Client.scatter).bind(self.sync, data, **kwargs).arguments
        work = scatter(self.sync, data, opts.get("workers"), bool(opts.get("broadcast", False)),
                       bool(opts.get("hash", True)))
        timeout = opts.get("timeout")
        if timeout is None:
            return await work
        try:
            return await asyncio.wait_for(work, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"scatter did not finish within {timeout}s") from None

    async def get(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        """``Client.get`` as a coroutine: the graph is sent, then its values gathered on the loop
        (``sync=False``: the futures, at once)."""
        futures = self.sync.get(dsk, keys, sync=False, **{k: v for k, v in kwargs.items() if k != "sync"})
        if kwargs.get("sync", True) is False:
            return futures
        return await gather(self.sync, futures)

    async def scheduler_info(self, n_workers: int = -1) -> dict[str, Any]:
        return self.sync._info_from(await request(self.sync, {"op": "info"}), n_workers)

    async def who_has(self, futures: Any = None) -> dict[str, list[str]]:
        flat: list[Future] = []
        _collect(futures, flat)
        keys = [f.key for f in flat] if futures is not None else self.sync._keys.keys()
        reply = await request(self.sync, {"op": "who_has", "keys": keys})
        return {str(k): list(v or []) for k, v in (reply.get("who_has") or {}).items()}

    async def nthreads(self, workers: Any = None) -> dict[str, int]:
        wanted = None if workers is None else ({workers} if isinstance(workers, str) else set(workers))
        info = await self.scheduler_info()
        return {a: int(w.get("nthreads") or 0) for a, w in info["workers"].items()
                if wanted is None or a in wanted}

    ncores = nthreads

    async def has_what(self, workers: Any = None) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {a: [] for a in (await self.scheduler_info())["workers"]}
        for key, holders in (await self.who_has()).items():
            for a in holders:
                out.setdefault(a, []).append(key)
        if workers is not None:
            wanted = {workers} if isinstance(workers, str) else set(workers)
            out = {a: ks for a, ks in out.items() if a in wanted}
        return out

    async def wait_for_workers(self, n_workers: int = 0, timeout: Optional[float] = None) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = 0.01
        while len((await self.scheduler_info())["workers"]) < n_workers:
            if deadline is not None and loop.time() >= deadline:
                have = len((await self.scheduler_info())["workers"])
                raise TimeoutError(f"only {have} of {n_workers} workers joined within {timeout} s")
            await asyncio.sleep(delay)
            delay = min(2 * delay, 0.05)

    async def run(self, function: Callable[..., Any], *args: Any, workers: Any = None, wait: bool = True,
                  nanny: bool = False, on_error: str = "raise", **kwargs: Any) -> Optional[dict[str, Any]]:
        """``Client.run`` as a coroutine."""
        if nanny:
            raise NotImplementedError("run(nanny=True): Shoal workers have no nanny process")
        if on_error not in ("raise", "return", "ignore"):
            raise ValueError(f"on_error={on_error!r}: use 'raise', 'return' or 'ignore'")
        addrs = list((await self.scheduler_info())["workers"]) if workers is None else (
            [workers] if isinstance(workers, str) else list(workers))
        futures = {a: self.sync.submit(function, *args, workers=[a], pure=False, **kwargs) for a in addrs}
        if not wait:
            return None
        out: dict[str, Any] = {}
        for a, f in futures.items():
            try:
                out[a] = await f
            except Exception as exc:
                if on_error == "raise":
                    raise
                if on_error == "return":
                    out[a] = exc
        return out

    async def close(self) -> None:
        """Close the client (and the cluster it started): connections close on the loop, an owned
        cluster's processes are stopped without blocking it."""
        sync = self._sync
        if sync is not None:
            close_pools(sync)
            owned = sync.cluster if sync._own_cluster else None
            sync._own_cluster = False
            sync.close()
            if owned is not None:
                await owned.close_async()
        if self._cluster is not None:
            cluster, self._cluster = self._cluster, None
            await cluster.close_async()

    def __repr__(self) -> str:
        return f"<AsyncClient: {self._sync!r}>"


# Client's own keywords; AsyncClient() without an address gives the others to its LocalCluster
_CLIENT_KEYWORDS = frozenset({"address", "token", "timeout", "name", "set_as_default", "tls", "fetch_timeout",
                              "scheduler_file", "reconnect_timeout", "transport"})


def threaded(name: str) -> Any:
    """An AsyncClient coroutine running the blocking Client method ``name`` in a thread (the
    cluster-control and shared-state calls, which the mixins implement once, blocking)."""
    from .client import Client

    method = getattr(Client, name)

    @functools.wraps(method)  # its signature too: the options are the blocking call's, checked there
    async def call(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(lambda: getattr(self.sync, name)(*args, **kwargs))

    call.__doc__ = f"The coroutine of :meth:`Client.{name}` (run in a thread).\n\n{method.__doc__ or ''}"
    return call


def install_threaded(names: Iterable[str]) -> None:
    for name in names:
        setattr(AsyncClient, name, threaded(name))
