"""A tiny in-process stand-in for the Go scheduler and one worker, speaking the wire protocol.

It exists to test the Client's plumbing without the Go binary: tasks run inline (in the
server thread) through shoal.executor's own run logic; go tasks support ``inc`` and
``row_count`` only.

It serves real sockets (``scheduler_address``) and, through :meth:`FakeCluster.transport`, an
in-memory transport (``Client(fake.mem_address, transport=fake.transport())``) on which a test
can break the scheduler's connections (:meth:`FakeCluster.drop`), refuse new ones
(``fake.down``), hold tasks back (``fake.paused``) and forget everything as a scheduler
restarted without a journal would (:meth:`FakeCluster.forget`).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import socket
import struct
import threading
from typing import Any, Optional, Sequence

import pyarrow as pa

from shoal import _serialize, _wire
from shoal.exceptions import AuthenticationError, CommClosedError, ConnectError, TimeoutError
from shoal.executor import Executor


class MemoryStream:
    """One end of an in-memory message pipe (a ``shoal._conn.Stream``). Headers go through
    msgpack as on the wire; ``close`` on either end ends both."""

    def __init__(self, inbox: "queue.Queue[Any]", outbox: "queue.Queue[Any]", address: str) -> None:
        self.inbox, self.outbox, self.address = inbox, outbox, address
        self._closed = False
        self.io_timeout: Optional[float] = None

    @property
    def closed(self) -> bool:
        return self._closed

    def settimeout(self, timeout: Optional[float]) -> None:
        self.io_timeout = timeout

    def send(self, header: dict[str, Any], frames: Sequence[Any] = ()) -> None:
        if self._closed:
            raise CommClosedError(f"connection to {self.address} is closed")
        self.outbox.put((_wire.pack_header(header), [bytes(f) for f in frames]))

    def recv(self) -> tuple[dict[str, Any], list[bytearray]]:
        try:
            item = self.inbox.get(timeout=self.io_timeout)
        except queue.Empty:
            raise TimeoutError(f"no answer from {self.address}") from None
        if item is None or self._closed:
            self._closed = True
            raise CommClosedError(f"connection to {self.address} lost")
        head, frames = item
        return _wire.unpack_header(head), [bytearray(f) for f in frames]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.inbox.put(None)
            self.outbox.put(None)


class _LoopQueue:
    """What a server thread puts into to reach an asyncio stream: hands each item to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, q: "asyncio.Queue[Any]") -> None:
        self.loop, self.q = loop, q

    def put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.q.put_nowait, item)
        except RuntimeError:
            pass  # the loop is closed: nobody reads any more


class AsyncMemoryStream:
    """The asyncio end of an in-memory pipe (a ``shoal._conn.AsyncStreamLike``)."""

    def __init__(self, inbox: "asyncio.Queue[Any]", outbox: "queue.Queue[Any]", address: str) -> None:
        self.inbox, self.outbox, self.address = inbox, outbox, address
        self.closed = False

    async def send(self, header: dict[str, Any], frames: Sequence[Any] = ()) -> None:
        if self.closed:
            raise CommClosedError(f"connection to {self.address} is closed")
        self.outbox.put((_wire.pack_header(header), [bytes(f) for f in frames]))

    async def recv(self) -> tuple[dict[str, Any], list[bytearray]]:
        item = await self.inbox.get()
        if item is None or self.closed:
            self.closed = True
            raise CommClosedError(f"connection to {self.address} lost")
        head, frames = item
        return _wire.unpack_header(head), [bytearray(f) for f in frames]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put(None)


def pipe(address: str) -> tuple[MemoryStream, MemoryStream]:
    a: queue.Queue[Any] = queue.Queue()
    b: queue.Queue[Any] = queue.Queue()
    return MemoryStream(a, b, address), MemoryStream(b, a, address)


class MemoryTransport:
    """A ``shoal._conn.Transport`` whose connections are served by a FakeCluster in threads."""

    def __init__(self, fake: "FakeCluster") -> None:
        self.fake = fake
        self.dials: list[str] = []
        self.async_conns = 0

    async def connect_async(self, address: str, token: str, timeout: float) -> AsyncMemoryStream:
        self.dials.append(address)
        if address != self.fake.mem_data_address:
            raise ConnectError(f"could not connect to {address}: connection refused")
        if self.fake.token and token != self.fake.token:
            raise AuthenticationError("handshake refused: authentication failed: wrong token", code="auth-failed")
        to_client: asyncio.Queue[Any] = asyncio.Queue()
        to_server: queue.Queue[Any] = queue.Queue()
        theirs = MemoryStream(to_server, _LoopQueue(asyncio.get_running_loop(), to_client), address)  # type: ignore[arg-type]
        threading.Thread(target=self.fake._serve_data_stream, args=(theirs,), daemon=True).start()
        self.async_conns += 1
        return AsyncMemoryStream(to_client, to_server, address)

    def connect(self, address: str, token: str, timeout: float, io_timeout: Optional[float] = None) -> MemoryStream:
        self.dials.append(address)
        fake = self.fake
        if address == fake.mem_data_address:
            handler = fake._serve_data_stream
        elif address == fake.mem_address and not fake.down:
            handler = fake._serve_messages
        else:
            raise ConnectError(f"could not connect to {address}: connection refused")
        if fake.token and token != fake.token:
            raise AuthenticationError("handshake refused: authentication failed: wrong token", code="auth-failed")
        mine, theirs = pipe(address)
        mine.io_timeout = io_timeout
        threading.Thread(target=handler, args=(theirs,), daemon=True).start()
        return mine


class FakeCluster:
    def __init__(self, token: str = "") -> None:
        self.token = token
        self.store: dict[str, tuple[str, list[Any]]] = {}
        self.funcs: dict[str, bytes] = {}
        self.errors: dict[str, dict[str, Any]] = {}
        self.received: list[dict[str, Any]] = []
        self.executor = Executor.__new__(Executor)
        self.executor.funcs = {}
        self.executor.segments = False
        self.sched = self._listen(self._serve_client)
        self.data = self._listen(self._serve_data)
        self.scheduler_address = f"127.0.0.1:{self.sched.getsockname()[1]}"
        self.data_address = f"127.0.0.1:{self.data.getsockname()[1]}"
        # the in-memory side (see MemoryTransport)
        self.mem_address = "mem-scheduler:1"
        self.mem_data_address = "mem-worker:2"
        self.down = False  # refuse new scheduler connections
        self.paused = False  # keep submitted tasks waiting (run them with run_held)
        self.held: list[dict[str, Any]] = []
        self.mute: set[str] = set()  # request ops left unanswered
        self.resume_error: Optional[dict[str, Any]] = None
        self.conns: list[Any] = []  # open scheduler-side client connections
        self.wanted: set[str] = set()
        self.graph_seq = 0  # the last update_graph id read (a muted one is not read)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def transport(self) -> MemoryTransport:
        return MemoryTransport(self)

    def drop(self, down: bool = True) -> None:
        """Break every client connection (the scheduler died); ``down``: refuse new ones too."""
        self.down = down
        with self._lock:
            conns, self.conns = self.conns, []
        for c in conns:
            c.close()

    def forget(self) -> None:
        """Lose every task and result, as a scheduler restarted without a journal does."""
        self.store.clear()
        self.errors.clear()
        self.funcs.clear()
        self.held.clear()
        self.wanted.clear()

    def run_held(self) -> None:
        """Run the tasks held while ``paused`` and report them to the connected clients."""
        self.paused = False
        held, self.held = self.held, []
        for t in held:
            self._run(t)
        with self._lock:
            conns = list(self.conns)
        for c in conns:
            for t in held:
                if t["key"] in self.wanted:
                    self._report(c, t["key"])

    def _listen(self, handler: Any) -> socket.socket:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)

        def loop() -> None:
            while True:
                try:
                    c, _ = s.accept()
                except OSError:
                    return
                threading.Thread(target=handler, args=(c,), daemon=True).start()

        threading.Thread(target=loop, daemon=True).start()
        return s

    def _accept(self, c: socket.socket) -> _wire.Connection | None:
        hello = _recv(c, 9)
        n = struct.unpack(">H", hello[7:9])[0]
        tok = _recv(c, n).decode() if n else ""
        if self.token and tok != self.token:
            c.sendall(_wire.encode_answer(3, "authentication failed: wrong token"))
            c.close()
            return None
        c.sendall(_wire.encode_answer(0))
        return _wire.Connection(c)

    def _serve_client(self, c: socket.socket) -> None:
        conn = self._accept(c)
        if conn is None:
            return
        try:
            self._serve_messages(conn)
        except CommClosedError:
            return  # the client went away, perhaps while an answer was on its way: session over

    def _serve_messages(self, conn: Any) -> None:
        with self._lock:
            self.conns.append(conn)
        try:
            self._serve_session(conn)
        except CommClosedError:
            pass  # the client went away, perhaps while an answer was on its way: session over
        finally:
            with self._lock:
                if conn in self.conns:
                    self.conns.remove(conn)

    def _serve_session(self, conn: Any) -> None:
        conn.send({"op": "welcome", "client": next(self._ids), "version": "fake", "dashboard": "http://x/status"})
        while True:
            try:
                h, frames = conn.recv()
            except Exception:
                return
            self.received.append(h)
            op = h["op"]
            if op in self.mute:
                continue
            if op == "update_graph":
                self.graph_seq = max(self.graph_seq, int(h["id"]))
                missing = [t["func"] for t in h["tasks"] if t["kind"] == "py" and t["func"] not in self.funcs
                           and t["func"] not in (h.get("funcs") or {})]
                if missing:
                    conn.send({"op": "graph_rejected", "id": h["id"], "keys": [t["key"] for t in h["tasks"]],
                               "error": {"code": "unknown-function", "message": f"unknown function {missing[0]}"}})
                    continue
                self.funcs.update(h.get("funcs") or {})
                self.wanted.update(h.get("wanted") or [])
                if self.paused:
                    self.held.extend(h["tasks"])
                    continue
                for t in h["tasks"]:
                    self._run(t)
                for k in h.get("wanted") or []:
                    self._report(conn, k)
            elif op == "resume":
                if self.resume_error is not None:
                    conn.send({"op": "error", "id": h["id"], **self.resume_error})
                    continue
                held = {t["key"] for t in self.held}
                unread = []  # graphs the client sent that this scheduler never read: ask for them
                if int(h.get("n") or 0) > self.graph_seq:
                    unread = [k for k in h["keys"] if k not in self.store and k not in self.errors and k not in held]
                conn.send({"op": "resumed", "id": h["id"], "client": h["client"], "n": self.graph_seq, "keys": unread})
                self._want(conn, [k for k in h["keys"] if k not in unread])
            elif op == "wanted":
                self._want(conn, h["keys"])
            elif op == "event_set":
                conn.send({"op": "ok", "id": h["id"]})
            elif op == "info":
                conn.send({"op": "info_reply", "id": h["id"], "scheduler": self.scheduler_address,
                           "workers": [{"name": "w1", "address": self._data_addr(conn), "nthreads": 1,
                                        "memory_limit": 1 << 30}]})
            elif op == "who_has":
                conn.send({"op": "who_has_reply", "id": h["id"], "who_has": {
                    k: [self._data_addr(conn)] for k in h["keys"] if k in self.store}})
            elif op == "cancel_keys":
                for k in h["keys"]:
                    conn.send({"op": "key_state", "key": k, "state": "cancelled",
                               "error": {"code": "cancelled", "message": "cancelled"}})

    def _want(self, conn: Any, keys: list[str]) -> None:
        """Keys wanted (again): finished ones are reported, held ones wait, others are lost."""
        held = {t["key"] for t in self.held}
        for k in keys:
            if k in self.store or k in self.errors:
                self.wanted.add(k)
                self._report(conn, k)
            elif k in held:
                self.wanted.add(k)
            else:
                conn.send({"op": "key_state", "key": k, "state": "lost",
                           "error": {"code": "lost", "message": f"the scheduler does not know {k}"}})

    def _data_addr(self, conn: Any) -> str:
        return self.mem_data_address if isinstance(conn, MemoryStream) else self.data_address

    def _report(self, conn: Any, key: str) -> None:
        if key in self.store:
            enc, fr = self.store[key]
            conn.send({"op": "key_state", "key": key, "state": "memory", "worker": self._data_addr(conn),
                       "encoding": enc, "nbytes": _serialize.nbytes(fr)})
        else:
            conn.send({"op": "key_state", "key": key, "state": "erred",
                       "error": self.errors.get(key) or {"code": "missing-dependency", "message": key}})

    def _run(self, t: dict[str, Any]) -> None:
        deps = t.get("deps") or []
        bad = [d for d in deps if d in self.errors]
        if bad:
            self.errors[t["key"]] = self.errors[bad[0]]
            return
        if t["kind"] == "go":
            args = [_serialize.decode(*self.store[a["r"]]) if "r" in a else a["v"] for a in t["args"]]
            value: Any = {"inc": lambda x: x + 1,
                          "row_count": lambda x: x.num_rows if isinstance(x, pa.Table) else len(x)}[t["func"]](*args)
            self.store[t["key"]] = _serialize.encode(value)
            return
        items, frames = [], []
        for d in deps:
            enc, fr = self.store[d]
            items.append({"key": d, "encoding": enc, "nframes": len(fr)})
            frames.extend(fr)
        msg = {"op": "run", "id": 1, "key": t["key"], "func": t["func"],
               "func_data": self.funcs.get(t["func"]), "payload": t["payload"], "items": items}
        reply, out = self.executor.run(msg, [bytearray(bytes(f)) for f in frames])
        if reply["op"] == "done":
            self.store[t["key"]] = (reply["items"][0]["encoding"], [bytearray(bytes(f)) for f in out])
        else:
            self.errors[t["key"]] = reply["error"]

    def _serve_data(self, c: socket.socket) -> None:
        conn = self._accept(c)
        if conn is None:
            return
        self._serve_data_stream(conn)

    def _serve_data_stream(self, conn: Any) -> None:
        while True:
            try:
                h, frames = conn.recv()
            except Exception:
                return
            if h["op"] == "get_data":
                items, out, missing = [], [], []
                for k in h["keys"]:
                    if k not in self.store:
                        missing.append(k)
                        continue
                    enc, fr = self.store[k]
                    items.append({"key": k, "encoding": enc, "nframes": len(fr)})
                    out.extend(fr)
                conn.send({"op": "data", "id": h["id"], "items": items, "missing": missing}, out)
            elif h["op"] == "put_data":
                pos = 0
                for it in h["items"]:
                    n = it["nframes"]
                    self.store[it["key"]] = (it["encoding"], frames[pos:pos + n])
                    pos += n
                conn.send({"op": "put_ok", "id": h["id"]})

    def close(self) -> None:
        self.sched.close()
        self.data.close()


def _recv(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out
