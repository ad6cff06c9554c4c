"""Tasks that submit tasks: ``get_client``, ``secede``, ``rejoin``, ``worker_client`` and
``get_worker``, with dask.distributed's names and semantics.

Inside a task, :func:`get_client` returns the executor process's own client (one connection per
executor, shared by every task it runs, made on first use from ``$SHOAL_SCHEDULER_ADDRESS`` and
the cluster's token, which the executor takes out of its environment at start). A task that
waits on tasks it submitted should :func:`secede` first: it gives its thread back to the worker
(and the scheduler stops counting it against the worker's threads), so the tasks it waits on can
run there too — without it, ``fib(4)`` on one thread waits for ever. The executor then serves
the worker from another thread, and the seceded task's answer goes on a socket of its own,
which it passes to the worker with its secede (docs/protocol.md §3.5). :func:`rejoin` returns at
once: the task runs on without taking a thread slot, counted as long-running until it ends.
:func:`worker_client` does both around a block.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import TYPE_CHECKING, Any, Iterator, Optional

from . import _wire

if TYPE_CHECKING:
    from .client import Client
    from .executor import Executor

_local = threading.local()
_client_lock = threading.Lock()
_client: list[Any] = []
# the cluster's token, taken out of the executor's environment at start (tasks' child processes
# must not inherit it)
_token = os.environ.pop("SHOAL_CLUSTER_TOKEN", None) if os.environ.get("SHOAL_EXECUTOR_FD") else None


class _Task:
    """The task a thread runs: made per run by Python's enter (with slots: a dataclass's dict
    was a few per cent of an executor's CPU on small tasks), or only when the task asks for
    it by the compiled one (current)."""

    __slots__ = ("executor", "id", "key", "conn")

    def __init__(self, executor: "Executor", id: int, key: str) -> None:
        self.executor = executor
        self.id = id
        self.key = key
        self.conn: Optional[_wire.Connection] = None  # its own socket once it seceded


def _enter(executor: "Executor", task_id: int, key: str) -> object:
    """The executor starts running a task in this thread; the token to give leave."""
    task = _Task(executor, task_id, key)
    _local.task = task
    return task


def _leave(token: object) -> None:
    """The task enter gave ``token`` for has ended (nothing when another one runs now)."""
    if getattr(_local, "task", None) is token:
        _local.task = None


def _current() -> Optional[_Task]:
    """The task this thread runs, or None."""
    return getattr(_local, "task", None)


# Python's enter, leave and current, or those of the compiled module (_speedups.c, "The task
# running in each thread"), which make a _Task only for a task that asks for it (most never do)
enter, leave, current = _enter, _leave, _current
try:
    from ._speedups import set_task_type as _set_task_type
    from ._speedups import task_current as _task_current
    from ._speedups import task_enter as _task_enter
    from ._speedups import task_leave as _task_leave
except ImportError:
    pass
else:
    _set_task_type(_Task)
    enter, leave, current = _task_enter, _task_leave, _task_current


# how many tasks seceded whose loop has not taken their socket yet (took_own_socket): while
# none has, the loop's check after every run is a global read, not a thread-local lookup
_seceding = 0
_seceding_lock = threading.Lock()


def took_own_socket() -> Optional[_wire.Connection]:
    """After a run returned: the socket of its task when the task seceded (the loop that ran it
    then stops serving), else None."""
    global _seceding
    if not _seceding:
        return None
    conn = getattr(_local, "seceded", None)
    if conn is not None:
        _local.seceded = None
        with _seceding_lock:
            _seceding -= 1
    return conn


def exporting(keys: Optional[list[str]]) -> None:
    """Collect (a list) or stop collecting (None) the keys of futures pickled in this thread:
    the executor names those in a task's result, so the scheduler keeps them for its readers."""
    _local.exported = keys


def exported(future: Any) -> bool:
    """Name a future pickled into a task's result; False when not encoding one."""
    futures = getattr(_local, "exported", None)
    if futures is None:
        return False
    futures.append(future)
    return True


# Futures a task returned, kept referenced for a while after its answer: the executor's client
# would otherwise release them (every 20 ms) possibly before the scheduler learns, from the
# task_finished that travels through the worker, that the result holds them.
_RETAIN_SECONDS = 5.0


def retain(futures: list[Any]) -> None:
    t = threading.Timer(_RETAIN_SECONDS, futures.clear)  # then they are released as usual
    t.daemon = True
    t.start()


def current_key() -> Optional[str]:
    """The key of the task running in this thread, or None outside a task."""
    task = current()
    return None if task is None else task.key


def secede() -> None:
    """Give this task's thread back to its worker while it waits on other tasks (it keeps
    running). Call it in a task, before waiting on futures it submitted; a second call does
    nothing. Outside a task it raises ``ValueError``."""
    global _seceding
    task: Optional[_Task] = current()
    if task is None:
        raise ValueError("secede() must be called from a task running on a Shoal worker")
    if task.conn is not None:
        return
    ex = task.executor
    if not hasattr(socket, "AF_UNIX"):
        raise NotImplementedError("secede: this platform cannot pass sockets between processes")
    from .executor import send_with_fd

    standby = ex.take_standby()  # before telling the worker anything: this may fail
    conn = ex.conn
    if ex.held:  # the batch's earlier answers go first: the worker reads them in order
        ex.send_held()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        send_with_fd(conn, {"op": "secede", "id": task.id}, [], theirs.fileno())
    finally:
        theirs.close()  # the worker has its own copy (or is gone)
    mine.setblocking(True)
    task.conn = _wire.Connection(mine, address="worker")
    with _seceding_lock:
        _seceding += 1
    _local.seceded = task.conn
    ex.hand_over(standby)


def rejoin() -> None:
    """This task wants a thread again (after :func:`secede`). It returns at once and the task
    runs on, counted as long-running until it ends: Shoal does not make it wait for a free
    thread (a round trip to the worker for nothing cost half a millisecond per task)."""
    return


def get_client(address: Optional[str] = None, timeout: Optional[float] = None,
               resolve_address: bool = True) -> "Client":
    """The client to submit tasks with. In a task: this executor's own client (one connection
    for all its tasks, made on first use). Elsewhere: the default client
    (:func:`shoal.default_client`). ``address``, when given, must be the scheduler's."""
    from .client import Client, default_client

    if current() is None and not os.environ.get("SHOAL_EXECUTOR_FD"):
        c = default_client()
        if address and address.split("://")[-1] != c.scheduler_address.split("://")[-1]:
            raise ValueError(f"get_client({address!r}): the default client is connected to {c.scheduler_address}")
        return c
    with _client_lock:
        if _client and _client[0].status != "closed":
            return _client[0]  # type: ignore[no-any-return]
        sched = os.environ.get("SHOAL_SCHEDULER_ADDRESS")
        if not sched and os.environ.get("SHOAL_SCHEDULER_FILE"):
            try:
                with open(os.environ["SHOAL_SCHEDULER_FILE"]) as f:
                    sched = f.read().strip()
            except OSError:
                sched = None
        if not sched:
            raise ValueError("get_client: this executor does not know its scheduler's address")
        c = Client(sched, token=_token or "", timeout=timeout or 30.0, set_as_default=True)
        _client[:] = [c]
        return c


@contextlib.contextmanager
def worker_client(timeout: Optional[float] = None, separate_thread: bool = True) -> Iterator["Client"]:
    """``with worker_client() as client:`` — the task's client, with the task seceded inside
    the block (and rejoined after), so waiting on what it submits cannot starve the worker."""
    client = get_client(timeout=timeout)
    if separate_thread:
        secede()
    try:
        yield client
    finally:
        if separate_thread:
            rejoin()


def get_worker() -> Any:
    """What the worker running this task is (its address, name, plugins): a
    :class:`shoal._preload.WorkerInfo`. Outside a task it raises ``ValueError``."""
    if current() is None:
        raise ValueError("get_worker() must be called from a task running on a Shoal worker")
    from . import _preload

    return _preload.current().worker
