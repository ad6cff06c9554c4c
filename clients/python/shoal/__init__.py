"""Shoal: a Dask-like task scheduler written in Go, with dask.distributed's Python API.

>>> from shoal import Client, LocalCluster
>>> with LocalCluster(n_workers=2) as cluster, Client(cluster) as client:  # doctest: +SKIP
...     client.submit(lambda x: x + 1, 10).result()
11

See docs/python.md.
"""

from __future__ import annotations

from pathlib import Path

from ._control import WorkerPlugin
from ._reports import get_task_stream, performance_report
from ._shared import Event, Lock, Queue, Semaphore, Variable
from ._worker import get_client, get_worker, rejoin, secede, worker_client
from .client import AsyncClient, Client, default_client, fire_and_forget
from .cluster import LocalCluster
from .exceptions import (
    AuthenticationError,
    BusyError,
    CancelledError,
    CommClosedError,
    ConnectError,
    CycleError,
    DuplicateWorkerError,
    ExecutorDiedError,
    FetchFailedError,
    FrameTooLargeError,
    FutureLostError,
    GraphError,
    HandshakeError,
    InvalidTaskError,
    KeyConflictError,
    KilledWorker,
    LimitExceededError,
    MissingDependencyError,
    ProtocolError,
    RemoteError,
    RemoteTraceback,
    ShoalConnectionError,
    ShoalError,
    TaskPanicError,
    TimeoutError,
    UnknownFunctionError,
)
from .futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    Future,
    as_completed,
    futures_of,
    progress,
    wait,
)


def _version() -> str:
    """The installed distribution's version; in a source checkout that is not installed, the
    repository's VERSION file (the one version source of the Go binary and this package)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shoal")
    except PackageNotFoundError:
        pass
    try:
        return (Path(__file__).resolve().parents[3] / "VERSION").read_text().strip()
    except OSError:
        return "0+unknown"


__version__ = _version()

__all__ = [
    "Client", "AsyncClient", "LocalCluster", "Future", "as_completed", "wait", "progress", "WorkerPlugin",
    "Variable", "Queue", "Lock", "Semaphore", "Event",
    "futures_of", "default_client", "fire_and_forget", "get_client", "get_worker", "secede", "rejoin", "worker_client",
    "get_task_stream", "performance_report",
    "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION",
    "ShoalError", "ShoalConnectionError", "ConnectError", "CommClosedError", "HandshakeError",
    "AuthenticationError", "ProtocolError", "FrameTooLargeError", "GraphError", "CycleError",
    "MissingDependencyError", "UnknownFunctionError", "KeyConflictError", "InvalidTaskError",
    "RemoteError", "TaskPanicError", "KilledWorker", "ExecutorDiedError", "CancelledError",
    "FutureLostError", "DuplicateWorkerError", "FetchFailedError", "BusyError", "TimeoutError",
    "LimitExceededError", "RemoteTraceback", "__version__",
]
