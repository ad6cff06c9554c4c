"""Futures: handles to results on the cluster, and the helpers that wait on many of them."""

from __future__ import annotations

import asyncio
import contextvars
import html
import logging
import os
import queue
import threading
import urllib.parse
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterable, Iterator, NamedTuple, Optional

from ._progress import ProgressWidget as ProgressWidget  # re-exported: progress lives with futures
from ._progress import progress as progress
from ._refs import Ref
from .exceptions import CancelledError, TimeoutError

if TYPE_CHECKING:
    from .client import Client

logger = logging.getLogger("shoal")

PENDING = "pending"
FINISHED = "finished"
ERROR = "error"
CANCELLED = "cancelled"
LOST = "lost"

Listener = Callable[["KeyState"], None]


def _future_base() -> type:
    """dask's TaskRef when dask is installed: dask then takes a Future inside a collection
    (``delayed(f)(future)``, ``dd.from_delayed(futures)``) as a reference to its key, as it does
    distributed's futures, which derive from it too. Executors skip it (importing dask costs
    them 80 ms at every start); a Future made inside a task is a plain one."""
    if os.environ.get("SHOAL_EXECUTOR_FD") is not None:
        return object
    try:
        from dask._task_spec import TaskRef
    except ImportError:
        return object
    base: type = TaskRef
    return base


_FutureBase: Any = _future_base()


class KeyState:
    """What the client knows about one key; shared by every Future of that key."""

    __slots__ = ("key", "status", "event", "worker", "encoding", "nbytes", "exception",
                 "traceback", "listeners", "lock", "_tb")

    def __init__(self, key: str) -> None:
        self.key = key
        self.status = PENDING
        self.event = threading.Event()
        self.worker: str = ""
        self.encoding: str = ""
        self.nbytes: int = 0
        self.exception: Optional[BaseException] = None
        self.traceback: Optional[str] = None  # the remote traceback as the worker formatted it
        self.listeners: list[Listener] = []
        self.lock = threading.Lock()
        self._tb: Optional[TracebackType] = None

    def done(self) -> bool:
        return self.event.is_set()

    def finish(self, worker: str, encoding: str = "", nbytes: int = 0) -> None:
        with self.lock:
            self.worker, self.encoding, self.nbytes = worker, encoding, nbytes
        self._set(FINISHED)

    def move(self, worker: str, old: str) -> bool:
        """The value is also (or now only) on ``worker``: fetch it there from now on, unless a
        newer ``key_state`` moved it meanwhile (the worker is no longer ``old``)."""
        with self.lock:
            if self.status != FINISHED or self.worker != old:
                return False
            self.worker = worker
            return True

    def fail(self, status: str, exc: BaseException, tb: Optional[str] = None) -> None:
        self.exception = exc
        self.traceback = tb
        self._tb = None
        self._set(status)

    def remote_traceback(self) -> Optional[TracebackType]:
        """The remote traceback as a traceback object (built once, when first asked for), whose
        frames are the worker's: file, line and function of each. None without one."""
        if self._tb is None and self.traceback:
            self._tb = traceback_from_text(self.traceback)
        return self._tb

    def raise_exception(self) -> None:
        """Raise the key's exception with the remote traceback as its ``__traceback__`` (set
        afresh, so raising it again does not pile up the local frames of earlier raises)."""
        exc = self.exception
        assert exc is not None
        raise exc.with_traceback(self.remote_traceback())

    def reset(self) -> None:
        """Back to pending (the result was lost and is being recomputed)."""
        with self.lock:
            self.status = PENDING
            self.worker = ""
            self.event.clear()

    def _set(self, status: str) -> None:
        with self.lock:
            self.status = status
            self.event.set()
            listeners, self.listeners = self.listeners, []
        for fn in listeners:
            try:
                fn(self)
            except Exception:  # a listener must never break the reader
                logger.exception("shoal: future listener failed")

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(state)`` once the key is done (now, if it already is)."""
        with self.lock:
            if not self.event.is_set():
                self.listeners.append(fn)
                return
        fn(self)


class Future(_FutureBase):  # type: ignore[misc]
    """A handle to a remote result, named by ``key``; the API of ``distributed.Future``.

    Futures are created by :class:`~shoal.Client` (``submit``, ``map``, ``scatter``,
    ``compute``). While any Future of a key exists, the cluster keeps the result; when the last
    one is garbage-collected the client releases it. A Future passed as an argument to
    ``submit`` (also inside lists, tuples and dicts) is replaced by its value on the worker.
    """

    __dask_future__ = True  # dask treats it as a reference to an existing key

    def __init__(self, key: str, client: "Client", state: Optional[KeyState] = None) -> None:
        self.key = key
        self.client = client
        self._state = state if state is not None else client._acquire(key)
        self._released = False

    # -- state ------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """``pending``, ``finished``, ``error``, ``cancelled`` or ``lost``."""
        return self._state.status

    def done(self) -> bool:
        """Whether the key reached a final state (finished, error, cancelled, lost)."""
        return self._state.done()

    def cancelled(self) -> bool:
        return self._state.status == CANCELLED

    def _wait(self, timeout: Optional[float]) -> None:
        if not self._state.event.wait(timeout):
            raise TimeoutError(f"future {self.key!r} did not finish within {timeout}s")

    def result(self, timeout: Optional[float] = None) -> Any:
        """Wait for the result and return it; re-raise the task's exception if it failed.

        The exception's ``__traceback__`` then goes on into the worker's frames, as in dask, and
        its ``__cause__`` is a :class:`~shoal.RemoteTraceback` with the worker's text.
        """
        self._wait(timeout)
        st = self._state
        if st.status != FINISHED and st.exception is not None:
            st.raise_exception()
        return self.client._fetch_one(self)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        """The task's exception once done (None if it succeeded), its ``__traceback__`` the
        remote one."""
        self._wait(timeout)
        exc = self._state.exception
        if exc is not None:
            exc.__traceback__ = self._state.remote_traceback()
        return exc

    def traceback(self, timeout: Optional[float] = None) -> Optional[TracebackType]:
        """The remote traceback of a failed task as a traceback object, as in dask (None if it
        succeeded, or failed without one, e.g. cancelled): ``traceback.format_tb(tb)`` lists the
        worker's frames. The worker's formatted text is in ``str(exc.__cause__)``."""
        self._wait(timeout)
        return self._state.remote_traceback()

    def cancel(self, **kwargs: Any) -> None:
        """Cancel the key (and the tasks waiting on it)."""
        self.client.cancel([self], **kwargs)

    def add_done_callback(self, fn: Callable[["Future"], Any]) -> None:
        """Call ``fn(future)`` in a client thread once the future is done."""
        def hook(_: KeyState) -> None:
            self.client._run_callback(fn, self)

        self._state.add_listener(hook)

    def release(self) -> None:
        """Drop this handle now instead of waiting for garbage collection."""
        if not self._released:
            self._released = True
            self.client._release_later(self.key)

    # -- async ------------------------------------------------------------------------------
    def __await__(self) -> Generator[Any, None, Any]:
        return self._async_result().__await__()

    async def _async_result(self) -> Any:
        from ._async import result

        return await result(self)  # on the running loop: no thread

    # -- plumbing ---------------------------------------------------------------------------
    def __del__(self) -> None:
        try:
            if not self._released:
                self._released = True
                self.client._release_later(self.key)
        except Exception:
            pass

    def __reduce__(self) -> tuple[Any, ...]:
        # in a task's result: a Future for whoever reads it (the scheduler keeps the key while
        # the result lives); anywhere else (a graph, a payload): a reference to the key, which
        # the task's dependencies resolve
        from . import _worker

        if _worker.exported(self):
            return (_rebuild_future, (self.key,))
        return (Ref, (self.key,))

    def __dask_tokenize__(self) -> str:
        return self.key

    def __repr__(self) -> str:
        return f"<Future: {self.status}, key: {self.key}>"

    def _repr_html_(self) -> str:
        from ._progress import group_of

        grey = "style='color: var(--jp-ui-font-color2, gray)'"
        status = self.status
        colour = {FINISHED: "var(--jp-success-color0, green)", PENDING: "var(--jp-ui-font-color0, black)"}.get(
            status, "var(--jp-error-color0, red)")
        parts = [f"<strong>Future: {html.escape(group_of(self.key))}</strong>",
                 f"<span {grey}>status:</span> <span style='color: {colour}'>{html.escape(status)}</span>,"]
        exc = self._state.exception
        if status != FINISHED and exc is not None:
            parts.append(f"<span {grey}>type:</span> {html.escape(type(exc).__name__)},")
        parts.append(f"<span {grey}>key:</span> {html.escape(self.key)}")
        link = getattr(self.client, "dashboard_link", "")
        if link:
            url = urllib.parse.urlsplit(link)._replace(fragment="/task/" + urllib.parse.quote(self.key, safe=""))
            parts.append(f"<a href='{html.escape(url.geturl(), quote=True)}' target='_blank'>(dashboard)</a>")
        return " ".join(parts)


# the client decoding a value it fetched: Futures unpickled from that value belong to it
reading_client: "contextvars.ContextVar[Any]" = contextvars.ContextVar("shoal_reading_client", default=None)


def _rebuild_future(key: str) -> Any:
    """A Future unpickled (from a task's result, say): a Future of the client reading the value
    (else this process's default client; in a task, the executor's own), which tells the
    scheduler it wants the key; a plain reference when this process has no client."""
    import os

    from .client import default_client

    try:
        if reading_client.get() is not None:
            client = reading_client.get()
        elif os.environ.get("SHOAL_EXECUTOR_FD"):
            from ._worker import get_client

            client = get_client()
        else:
            client = default_client()
    except (ValueError, OSError):
        return Ref(key)
    f = Future(key, client)
    with client._lock:
        client._send({"op": "wanted", "keys": [key]})
    return f


async def _wait_async(futures: list[Future], timeout: Optional[float],
                      return_when: str) -> DoneAndNotDoneFutures:
    """``await wait(fs)`` for futures of an asynchronous client: on the caller's event loop
    (``wait`` checked ``return_when``)."""
    pending = {asyncio.ensure_future(wait_async(f._state)): f for f in futures}
    mode = {ALL_COMPLETED: asyncio.ALL_COMPLETED, FIRST_COMPLETED: asyncio.FIRST_COMPLETED,
            FIRST_EXCEPTION: asyncio.FIRST_COMPLETED}[return_when]
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    try:
        while pending:
            left = None if deadline is None else max(deadline - loop.time(), 0)
            _, still = await asyncio.wait(list(pending), timeout=left, return_when=mode)
            if deadline is not None and loop.time() >= deadline and still:
                raise TimeoutError(f"wait: {len(still)} of {len(futures)} futures not done within {timeout}s")
            if return_when == FIRST_COMPLETED:
                break
            if return_when == FIRST_EXCEPTION and any(f.status in (ERROR, LOST, CANCELLED) for f in futures):
                break
            pending = {t: pending[t] for t in still}
    finally:
        for t in pending:
            t.cancel()
    done = {f for f in futures if f.done()}
    return DoneAndNotDoneFutures(done, {f for f in futures if f not in done})


async def wait_async(state: KeyState) -> None:
    """Wait for a key state without blocking the event loop."""
    if state.done():
        return
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not fut.done():
            fut.set_result(None)

    def hook(_: KeyState) -> None:
        loop.call_soon_threadsafe(settle)

    state.add_listener(hook)
    await fut


# ---------------------------------------------------------------------------------------------
# helpers over many futures

class DoneAndNotDoneFutures(NamedTuple):
    done: set[Future]
    not_done: set[Future]


ALL_COMPLETED = "ALL_COMPLETED"
FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"


def wait(fs: Iterable[Future] | Future, timeout: Optional[float] = None,
         return_when: str = ALL_COMPLETED) -> DoneAndNotDoneFutures:
    """Wait until all (or the first, or the first failed) of ``fs`` are done.

    Returns ``(done, not_done)`` sets. Raises :class:`~shoal.TimeoutError` when ``timeout``
    expires before the condition is met (as ``distributed.wait`` does).
    """
    futures = futures_of(fs)  # futures, containers of them, persisted collections
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
        raise ValueError(f"return_when must be ALL_COMPLETED, FIRST_COMPLETED or FIRST_EXCEPTION,"
                         f" not {return_when!r}")
    if futures and getattr(futures[0].client, "asynchronous", False):
        return _wait_async(futures, timeout, return_when)  # type: ignore[return-value]
    cond = threading.Condition()
    counter = {"done": 0, "error": 0}

    def hook(state: KeyState) -> None:
        with cond:
            counter["done"] += 1
            if state.status != FINISHED:
                counter["error"] += 1
            cond.notify_all()

    states = {id(f._state): f._state for f in futures}
    for st in states.values():
        st.add_listener(hook)
    total = len(states)

    def satisfied() -> bool:
        if counter["done"] >= total:
            return True
        if return_when == FIRST_COMPLETED:
            return counter["done"] >= 1
        if return_when == FIRST_EXCEPTION:
            return counter["error"] >= 1
        return False

    with cond:
        if not cond.wait_for(satisfied, timeout):
            raise TimeoutError(f"wait: not done within {timeout}s")
    done = {f for f in futures if f.done()}
    return DoneAndNotDoneFutures(done, {f for f in futures if not f.done()})


class as_completed(Iterator[Any]):
    """Iterate over futures in the order they finish (``distributed.as_completed``).

    With ``with_results=True`` it yields ``(future, result)`` pairs; a failed future then
    raises its exception unless ``raise_errors=False`` (which yields the exception instead).
    More futures can be added while iterating with :meth:`add`.
    """

    def __init__(self, futures: Iterable[Future] = (), with_results: bool = False,
                 raise_errors: bool = True, timeout: Optional[float] = None) -> None:
        self.with_results = with_results
        self.raise_errors = raise_errors
        self.timeout = timeout
        self._queue: queue.Queue[Future] = queue.Queue()
        self._waiter: Optional[tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]] = None
        self._pending = 0
        self._generation = 0  # clear() starts a new one: futures added before it are forgotten
        self._lock = threading.Lock()
        for f in futures:
            self.add(f)

    def add(self, future: Future) -> None:
        """Add one more future to wait for."""
        with self._lock:
            self._pending += 1
            generation = self._generation

        def ready(_: KeyState) -> None:
            with self._lock:
                if generation == self._generation:
                    self._queue.put(future)
                waiter, self._waiter = self._waiter, None
            if waiter is not None:  # an ``async for`` waits: wake it on its loop
                loop, fut = waiter

                def wake() -> None:
                    if not fut.done():
                        fut.set_result(None)

                loop.call_soon_threadsafe(wake)

        future._state.add_listener(ready)

    def clear(self) -> None:
        """Forget every future added so far, finished or not."""
        with self._lock:
            self._generation += 1
            self._pending = 0
            while not self._queue.empty():
                self._queue.get_nowait()

    def update(self, futures: Iterable[Future]) -> None:
        for f in futures:
            self.add(f)

    def count(self) -> int:
        """Futures not yet yielded."""
        with self._lock:
            return self._pending

    def is_empty(self) -> bool:
        return self.count() == 0

    def has_ready(self) -> bool:
        return not self._queue.empty()

    def __iter__(self) -> "as_completed":
        return self

    def __next__(self) -> Any:
        with self._lock:
            if self._pending == 0:
                raise StopIteration
        try:
            fut = self._queue.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"as_completed: nothing finished within {self.timeout}s") from None
        with self._lock:
            self._pending -= 1
        if not self.with_results:
            return fut
        try:
            return fut, fut.result()
        except BaseException as exc:
            if self.raise_errors:
                raise
            return fut, exc

    next = __next__

    def __aiter__(self) -> "as_completed":
        return self

    async def __anext__(self) -> Any:
        """``async for f in as_completed(fs)``: waits on the caller's event loop (no thread)."""
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else loop.time() + self.timeout
        while True:
            with self._lock:
                if self._pending == 0:
                    raise StopAsyncIteration
                if not self._queue.empty():
                    fut = self._queue.get_nowait()
                    self._pending -= 1
                    break
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiter = (loop, waiter)
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise TimeoutError(f"as_completed: nothing finished within {self.timeout}s")
            try:
                await asyncio.wait_for(waiter, left)
            except asyncio.TimeoutError:
                raise TimeoutError(f"as_completed: nothing finished within {self.timeout}s") from None
        if not self.with_results:
            return fut
        try:
            return fut, await fut
        except BaseException as exc:
            if self.raise_errors:
                raise
            return fut, exc

    def next_batch(self, block: bool = True) -> list[Any]:
        """Everything finished so far (at least one item when ``block``)."""
        out = []
        if block and self.count():
            out.append(next(self))
        while self.has_ready():
            out.append(next(self))
        return out

    def batches(self) -> Iterator[list[Any]]:
        while not self.is_empty():
            yield self.next_batch(block=True)


def _collect(obj: Any, out: list[Future]) -> None:
    if isinstance(obj, Future):
        out.append(obj)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for x in obj:
            _collect(x, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            _collect(x, out)
    elif isinstance(obj, Iterator):  # a generator of futures, as wait((f for f in fs)) passes
        for x in obj:
            _collect(x, out)
    elif hasattr(obj, "__dask_graph__") and not isinstance(obj, type):
        # a collection (persisted: its graph holds futures, as distributed.futures_of finds them)
        graph = obj.__dask_graph__()
        if graph:
            for v in dict(graph).values():
                _collect(getattr(v, "value", v), out)  # a DataNode wraps what it holds


def futures_of(obj: Any, client: Any = None) -> list[Future]:
    """The futures in ``obj``: a future, containers of them, or dask collections (a persisted
    collection's graph holds futures), each once, in order (``distributed.futures_of``)."""
    out: list[Future] = []
    _collect(obj, out)
    seen: set[str] = set()
    uniq = []
    for f in out:
        if f.key not in seen and (client is None or f.client is client):
            seen.add(f.key)
            uniq.append(f)
    return uniq


def traceback_from_text(text: str) -> Optional[TracebackType]:
    """A traceback object with the frames of a formatted traceback (the last one, when it is a
    chain of several), built by tblib; None if the text has no frames."""
    from tblib import Traceback, TracebackParseError

    header = "Traceback (most recent call last):"
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.rstrip() == header]
    tail = "\n".join(lines[starts[-1]:]) if starts else text
    try:
        tb: TracebackType = Traceback.from_string(tail, strict=bool(starts)).as_traceback()
    except (TracebackParseError, ValueError):
        return None
    return tb


def check_not_cancelled(state: KeyState) -> None:
    if state.status == CANCELLED:
        raise state.exception or CancelledError(f"{state.key} was cancelled")
