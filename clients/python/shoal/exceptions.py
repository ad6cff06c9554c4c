"""Exceptions raised by Shoal.

Every exception Shoal raises for its own reasons derives from :class:`ShoalError` and carries
the stable wire ``code`` from docs/protocol.md §5. A task's own exception is re-raised with its
original type (see :func:`error_from_wire`).

::

    ShoalError
    ├── ShoalConnectionError (also ConnectionError)   transport problems
    │   ├── ConnectError                               could not connect
    │   ├── CommClosedError                            the connection closed or broke
    │   └── HandshakeError                             bad-magic, bad-version, bad-role
    │       ├── AuthenticationError                    auth-failed: missing or wrong token
    │       └── BusyError                              busy: too many connections; try later
    ├── ProtocolError                                  protocol-error, unknown-op
    │   └── FrameTooLargeError                         frame-too-large
    ├── GraphError (also ValueError)                   the scheduler refused a graph
    │   ├── CycleError                                 graph-cycle
    │   ├── MissingDependencyError                     missing-dependency
    │   ├── UnknownFunctionError                       unknown-function
    │   ├── KeyConflictError                           key-conflict
    │   └── InvalidTaskError                           invalid-task
    ├── RemoteError                                    task-error whose exception cannot be
    │   └── TaskPanicError                             rebuilt locally; task-panic (Go)
    ├── KilledWorker                                   killed-worker
    ├── ExecutorDiedError                              executor-died
    ├── CancelledError (also concurrent.futures.CancelledError)   cancelled
    ├── FutureLostError                                lost
    ├── FetchFailedError                               fetch-failed
    ├── DuplicateWorkerError                           duplicate-worker (a worker's name is taken)
    └── TimeoutError (also builtins.TimeoutError)      a client-side timeout expired

A task's exception is re-raised as itself (its pickled form travels in the error's ``exc``
field) with ``__cause__`` set to a :class:`RemoteTraceback` holding the formatted traceback from
the worker, so the traceback print shows where it failed remotely.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import pickle
from typing import Any, Mapping

__all__ = [
    "ShoalError", "ShoalConnectionError", "ConnectError", "CommClosedError", "HandshakeError",
    "AuthenticationError", "ProtocolError", "FrameTooLargeError", "GraphError", "CycleError",
    "MissingDependencyError", "UnknownFunctionError", "KeyConflictError", "InvalidTaskError",
    "RemoteError", "TaskPanicError", "KilledWorker", "ExecutorDiedError", "CancelledError",
    "FutureLostError", "FetchFailedError", "DuplicateWorkerError", "BusyError", "TimeoutError",
    "LimitExceededError", "RemoteTraceback", "error_from_wire",
]


class ShoalError(Exception):
    """Base class of Shoal's own errors. ``code`` is the stable wire error code."""

    default_code = "error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class ShoalConnectionError(ShoalError, ConnectionError):
    """A transport problem talking to a scheduler or worker."""

    default_code = "comm-closed"


class ConnectError(ShoalConnectionError):
    """The address could not be reached (refused, unresolvable, unreachable)."""

    default_code = "connect-failed"


class CommClosedError(ShoalConnectionError):
    """The connection closed or broke (for example the scheduler went away)."""


class HandshakeError(ShoalConnectionError):
    """The server refused the handshake (bad magic, version or role)."""

    default_code = "protocol-error"


class AuthenticationError(HandshakeError):
    """The server requires a token and it was missing or wrong (``auth-failed``)."""

    default_code = "auth-failed"


class ProtocolError(ShoalError):
    """A malformed frame or header, or an op the peer does not serve."""

    default_code = "protocol-error"


class FrameTooLargeError(ProtocolError):
    """A frame, header or message exceeded the configured limits."""

    default_code = "frame-too-large"


class GraphError(ShoalError, ValueError):
    """The scheduler refused an ``update_graph``; nothing of it was added."""

    default_code = "invalid-task"

    def __init__(self, message: str = "", *, code: str | None = None,
                 keys: list[str] | None = None) -> None:
        super().__init__(message, code=code)
        self.keys = list(keys or [])


class CycleError(GraphError):
    """The submitted graph has a cycle."""

    default_code = "graph-cycle"


class MissingDependencyError(GraphError):
    """A task depends on a key that is neither in the graph nor known to the scheduler."""

    default_code = "missing-dependency"


class UnknownFunctionError(GraphError):
    """No worker registers the Go function a task names."""

    default_code = "unknown-function"


class KeyConflictError(GraphError):
    """A key was submitted again with a different definition."""

    default_code = "key-conflict"


class InvalidTaskError(GraphError):
    """A task field is malformed."""

    default_code = "invalid-task"


class RemoteError(ShoalError):
    """A task failed and its exception could not be rebuilt here.

    ``type_name`` is the remote exception's ``module.qualname``; ``remote_traceback`` the
    formatted traceback from the worker.
    """

    default_code = "task-error"

    def __init__(self, message: str = "", *, code: str | None = None, type_name: str = "",
                 remote_traceback: str = "") -> None:
        text = f"{type_name}: {message}" if type_name else message
        super().__init__(text, code=code)
        self.type_name = type_name
        self.remote_traceback = remote_traceback


class TaskPanicError(RemoteError):
    """A Go task panicked."""

    default_code = "task-panic"


class KilledWorker(ShoalError):
    """The task was running on several workers that all died; it will not be retried."""

    default_code = "killed-worker"


class ExecutorDiedError(ShoalError):
    """The Python executor running the task exited (``os._exit``, a segfault, OOM kill)."""

    default_code = "executor-died"


class CancelledError(ShoalError, concurrent.futures.CancelledError):
    """The key was cancelled."""

    default_code = "cancelled"


class FutureLostError(ShoalError):
    """The key's data was lost and cannot be recomputed (e.g. scattered data on a dead worker)."""

    default_code = "lost"


class DuplicateWorkerError(ShoalError):
    """A worker name is already registered."""

    default_code = "duplicate-worker"


class FetchFailedError(ShoalError):
    """A task's input could not be moved to the worker running it, after repeated tries with
    backoff; the message names the input and the last cause."""

    default_code = "fetch-failed"


class BusyError(HandshakeError):
    """The server has as many connections of this kind as it allows; try again later."""

    default_code = "busy"


class LimitExceededError(ShoalError, ValueError):
    """A request would exceed a documented bound of the scheduler (a shared-state value over
    1 MiB, a full queue at its hard cap, too many named objects or waiters); the message names
    the limit."""

    default_code = "limit-exceeded"


class TimeoutError(ShoalError, builtins.TimeoutError):
    """A client-side timeout expired."""

    default_code = "timeout"


class RemoteTraceback(Exception):
    """Holds a remote traceback as text; set as the ``__cause__`` of a re-raised task error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\nRemote traceback (from the worker):\n" + self.tb.rstrip() + "\n"


_BY_CODE: dict[str, type[ShoalError]] = {
    "protocol-error": ProtocolError,
    "unknown-op": ProtocolError,
    "frame-too-large": FrameTooLargeError,
    "bad-magic": HandshakeError,
    "bad-version": HandshakeError,
    "bad-role": HandshakeError,
    "auth-failed": AuthenticationError,
    "graph-cycle": CycleError,
    "missing-dependency": MissingDependencyError,
    "unknown-function": UnknownFunctionError,
    "key-conflict": KeyConflictError,
    "invalid-task": InvalidTaskError,
    "task-error": RemoteError,
    "task-panic": TaskPanicError,
    "executor-died": ExecutorDiedError,
    "killed-worker": KilledWorker,
    "cancelled": CancelledError,
    "lost": FutureLostError,
    "duplicate-worker": DuplicateWorkerError,
    "fetch-failed": FetchFailedError,
    "busy": BusyError,
    "limit-exceeded": LimitExceededError,
}


def class_for_code(code: str) -> type[ShoalError]:
    """The exception class for a wire error code (ShoalError when unknown)."""
    return _BY_CODE.get(code, ShoalError)


def error_from_wire(err: Mapping[str, Any] | None, *, keys: list[str] | None = None) -> BaseException:
    """Build the exception to raise for a wire Error map.

    For ``task-error`` the pickled exception (``exc``) is loaded when possible, so the caller
    sees the task's own exception type; the remote traceback becomes its ``__cause__``.
    """
    err = dict(err or {})
    code = str(err.get("code") or "error")
    message = str(err.get("message") or "")
    tb = str(err.get("traceback") or "")
    type_name = str(err.get("type") or "")
    if code == "task-error" and err.get("exc"):
        try:
            exc = pickle.loads(err["exc"])
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            if tb:
                exc.__cause__ = RemoteTraceback(tb)
            try:
                exc.__shoal_traceback__ = tb  # type: ignore[attr-defined]
            except Exception:
                pass
            return exc
    cls = class_for_code(code)
    out: ShoalError
    if issubclass(cls, RemoteError):
        out = cls(message, code=code, type_name=type_name, remote_traceback=tb)
    elif issubclass(cls, GraphError):
        out = cls(message, code=code, keys=keys)
    else:
        out = cls(message, code=code)
    if tb:
        out.__cause__ = RemoteTraceback(tb)
    return out
