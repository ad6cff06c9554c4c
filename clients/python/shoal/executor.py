"""The Python executor a Go worker spawns: ``python -m shoal.executor`` (docs/protocol.md §3.5).

The worker passes one end of a socketpair as file descriptor ``SHOAL_EXECUTOR_FD`` and a
per-executor secret in ``SHOAL_EXECUTOR_TOKEN``. The executor handshakes (role 4), says
``ready``, then runs the ``run`` messages it receives one at a time:

1. load the callable from ``func_data`` (cloudpickle) or from its cache, by SHA-256 hash;
2. decode the dependency values listed in ``items`` from the payload frames;
3. unpickle ``payload`` = ``(args, kwargs)``, each :class:`shoal._refs.Ref` becoming the
   dependency's value as it is unpickled (no second walk over the arguments);
4. call, encode the result (:mod:`shoal._serialize`) and reply ``done``, or reply ``error``
   with the exception's type, message, formatted traceback and pickled form.

It exits on ``shutdown`` or when the socket closes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import socket
import sys
import traceback
from typing import Any, Callable, Sequence

from . import _refs, _serialize, _wire
from .exceptions import CommClosedError

logger = logging.getLogger("shoal.executor")

Header = dict[str, Any]


class Executor:
    """Runs ``run`` messages from one worker connection (the state of one executor process)."""

    def __init__(self, conn: _wire.Connection) -> None:
        self.conn = conn
        self.funcs: dict[str, Callable[..., Any]] = {}

    def serve(self) -> None:
        """Say ``ready``, then handle messages until ``shutdown`` or the socket closes."""
        conn = self.conn
        conn.send({"op": "ready", "pid": os.getpid(), "python": sys.version.split()[0]})
        recv, send, run = conn.recv, conn.send, self.run
        while True:
            try:
                header, frames = recv()
            except CommClosedError:
                return
            op = header["op"]
            if op == "run":
                reply, out = run(header, frames)
                send(reply, out)
            elif op == "shutdown":
                return
            elif op == "error":
                logger.error("worker sent an error: %s", header.get("message"))
            else:
                self.conn.send({"op": "error", "code": "unknown-op", "id": header.get("id", 0),
                                "message": f"executor does not serve op {op!r}"})

    def load_func(self, digest: str, data: bytes | bytearray | None) -> Callable[..., Any]:
        """The callable with this hash, unpickled from ``data`` the first time."""
        fn = self.funcs.get(digest)
        if fn is not None:
            return fn
        if not data:
            raise LookupError(f"function {digest} is not known to this executor and was not sent")
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"function data does not match its hash {digest}")
        loaded = pickle.loads(data)
        if not callable(loaded):
            raise TypeError(f"function {digest} unpickled to a non-callable {type(loaded).__name__}")
        func: Callable[..., Any] = loaded
        self.funcs[digest] = func
        return func

    def run(self, header: Header, frames: Sequence[bytearray]) -> tuple[Header, list[Any]]:
        """Run one task; returns the reply header and frames (``done`` or ``error``)."""
        task_id = header.get("id", 0)
        try:
            fn = self.funcs.get(header.get("func"))  # type: ignore[arg-type]
            if fn is None:
                fn = self.load_func(str(header.get("func", "")), header.get("func_data"))
            items = header.get("items")
            values = decode_items(items, frames) if items else {}
            args, kwargs = load_payload(header.get("payload"), values)
        except BaseException as exc:  # noqa: BLE001 - reported to the worker
            return error_reply(task_id, exc, skip=0), []
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            return error_reply(task_id, exc, skip=1), []
        try:
            encoding, out = _serialize.encode(result)
        except BaseException as exc:  # noqa: BLE001
            return error_reply(task_id, exc, skip=0,
                               prefix=f"could not serialize the result of {header.get('key')}: "), []
        if len(out) == 1:
            size = len(out[0]) if type(out[0]) is bytes else memoryview(out[0]).nbytes
        else:
            size = _serialize.nbytes(out)
        item = {"key": header.get("key", ""), "encoding": encoding, "nframes": len(out), "nbytes": size}
        return {"op": "done", "id": task_id, "items": [item]}, out


def decode_items(items: Sequence[Header], frames: Sequence[bytearray]) -> dict[str, Any]:
    """Decode the values described by ``items`` from consecutive payload frames."""
    values: dict[str, Any] = {}
    pos = 0
    for it in items:
        n = int(it.get("nframes") or 1)
        if pos + n > len(frames):
            raise ValueError(f"item {it.get('key')!r} declares {n} frames; too few were sent")
        values[str(it["key"])] = _serialize.decode(str(it["encoding"]), frames[pos : pos + n])
        pos += n
    return values


class _RefUnpickler(pickle.Unpickler):
    """Unpickles a payload with every ``Ref(key)`` turned into ``values[key]`` on the way.

    A pickled Ref is a call of the class ``shoal._refs.Ref`` (its ``__reduce__``), looked up
    once per payload through ``find_class``; handing back ``values.__getitem__`` instead puts
    the value where the Ref was, at any depth, without walking the arguments afterwards.
    """

    def __init__(self, data: bytes | bytearray, values: dict[str, Any]) -> None:
        super().__init__(io.BytesIO(data))
        self.values = values

    def find_class(self, module: str, name: str) -> Any:
        if name == "Ref" and module == _REFS_MODULE:
            return self.values.__getitem__
        return super().find_class(module, name)


_REFS_MODULE = _refs.Ref.__module__


def load_payload(payload: bytes | bytearray | None, values: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Unpickle ``(args, kwargs)`` and put the dependency values in place of the Refs."""
    if not payload:
        return (), {}
    if values:
        args, kwargs = _RefUnpickler(payload, values).load()
    else:
        args, kwargs = pickle.loads(payload)
    if type(args) is not tuple:
        args = tuple(args)
    if type(kwargs) is not dict:
        kwargs = dict(kwargs)
    return args, kwargs


def qualified_name(typ: type) -> str:
    """``module.qualname`` of an exception type (``builtins.ZeroDivisionError``)."""
    return f"{typ.__module__}.{typ.__qualname__}"


def format_remote_traceback(exc: BaseException, skip: int) -> str:
    """Format the traceback of ``exc`` without the executor's own ``skip`` outermost frames."""
    tb = exc.__traceback__
    for _ in range(skip):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def error_reply(task_id: Any, exc: BaseException, *, skip: int, prefix: str = "") -> Header:
    """An ``error`` message for ``exc``, with the pickled exception when it pickles."""
    err: Header = {
        "code": "task-error",
        "type": qualified_name(type(exc)),
        "message": prefix + _safe_str(exc),
        "traceback": format_remote_traceback(exc, skip),
    }
    exc_bytes = pickle_exception(exc)
    if exc_bytes is not None:
        err["exc"] = exc_bytes
    return {"op": "error", "id": task_id, "error": err}


def pickle_exception(exc: BaseException) -> bytes | None:
    """The exception pickled so that the client can rebuild it, or None."""
    tb, cause, ctx = exc.__traceback__, exc.__cause__, exc.__context__
    try:
        exc.__traceback__ = None
        exc.__cause__ = None
        exc.__context__ = None
        for dumps in (pickle.dumps, _cloudpickle_dumps):
            try:
                data = dumps(exc)
                pickle.loads(data)
                return data
            except Exception:
                continue
        return None
    finally:
        exc.__traceback__, exc.__cause__, exc.__context__ = tb, cause, ctx


def _cloudpickle_dumps(obj: Any) -> bytes:
    import cloudpickle

    data: bytes = cloudpickle.dumps(obj, protocol=5)
    return data


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def connect_from_env() -> _wire.Connection:
    """The worker connection from ``SHOAL_EXECUTOR_FD`` / ``SHOAL_EXECUTOR_TOKEN``, handshaken."""
    try:
        fd = int(os.environ["SHOAL_EXECUTOR_FD"])
    except (KeyError, ValueError) as exc:
        raise SystemExit("shoal.executor: SHOAL_EXECUTOR_FD is not set; this program is started"
                         " by a Shoal worker") from exc
    token = os.environ.get("SHOAL_EXECUTOR_TOKEN", "")
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    _wire.client_handshake(sock, _wire.ROLE_EXECUTOR, token, "worker")
    return _wire.Connection(sock, address="worker")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m shoal.executor``."""
    conn = connect_from_env()
    # tasks must not read the token or inherit the worker socket
    os.environ.pop("SHOAL_EXECUTOR_TOKEN", None)
    try:
        Executor(conn).serve()
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
