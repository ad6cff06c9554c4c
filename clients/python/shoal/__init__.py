"""Shoal: a Dask-like task scheduler written in Go, with dask.distributed's Python API.

>>> from shoal import Client, LocalCluster
>>> with LocalCluster(n_workers=2) as cluster, Client(cluster) as client:  # doctest: +SKIP
...     client.submit(lambda x: x + 1, 10).result()
11

See docs/python.md.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# The names above are imported when first used (PEP 562), not with the package: an executor
# process (python -m shoal.executor) imports shoal but needs none of the client's modules, and
# importing them all (the client, dask, urllib, jinja2 for reports) took its start from 0.08 to
# 0.36 s and its idle memory from 22 to 40 MB, a wait the first task of every executor paid
# (docs/performance.md, "An executor's start").
_LAZY = {
    "._control": ["WorkerPlugin"],
    "._reports": ["get_task_stream", "performance_report"],
    "._shared": ["Event", "Lock", "Queue", "Semaphore", "Variable"],
    "._worker": ["get_client", "get_worker", "rejoin", "secede", "worker_client"],
    ".client": ["AsyncClient", "Client", "default_client", "fire_and_forget"],
    ".cluster": ["LocalCluster"],
    ".exceptions": [
        "AuthenticationError", "BusyError", "CancelledError", "CommClosedError", "ConnectError",
        "CycleError", "DuplicateWorkerError", "ExecutorDiedError", "FetchFailedError",
        "FrameTooLargeError", "FutureLostError", "GraphError", "HandshakeError", "InvalidTaskError",
        "KeyConflictError", "KilledWorker", "LimitExceededError", "MissingDependencyError",
        "ProtocolError", "RemoteError", "RemoteTraceback", "ShoalConnectionError", "ShoalError",
        "TaskPanicError", "TimeoutError", "UnknownFunctionError",
    ],
    ".futures": ["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "Future", "as_completed",
                 "futures_of", "progress", "wait"],
}
_MODULE_OF = {name: mod for mod, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    else:
        # a submodule (shoal.cluster after only `import shoal`), as when the package
        # imported them all
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'shoal' has no attribute {name!r}") from None
    globals()[name] = value  # the next look finds it without this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF) | {"__version__"})


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
