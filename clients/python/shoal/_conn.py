"""The client's control connection to the scheduler: typed messages, requests matched to their
replies, and transparent reconnection.

Layers (lowest first), as httpx layers its client:

* a :class:`Transport` opens :class:`Stream`\\ s (framed message streams) to an address. The
  default one, :class:`TcpTransport`, is ``_wire.Connection`` over TCP (or TLS); tests inject an
  in-memory one (``tests/fakecluster.py``), so the client's logic runs without a cluster;
* :func:`parse` turns a scheduler message into a typed one (:class:`Welcome`,
  :class:`KeyStateMsg`, :class:`GraphRejected`, :class:`Reply`, :class:`ServerError`);
* :class:`ControlConnection` owns one stream to the scheduler and the thread that reads it.
  ``send`` queues nothing while connected (it writes at once); ``request`` returns a
  ``concurrent.futures.Future`` of the reply, which a blocking caller waits on and an asyncio
  caller awaits (``asyncio.wrap_future``: no thread). When the stream breaks while the client
  is not closing, the reader thread reconnects with backoff (0.1 s doubling to 2 s, for at most
  ``reconnect_timeout`` seconds), sends ``resume`` with the keys the client holds, and sends
  what was sent meanwhile; callers keep their futures. The ``update_graph`` messages written
  last (:data:`RETAIN_GRAPH_TASKS` tasks' worth) are kept: the scheduler may have died before
  reading them, and its ``resumed`` answer says which ones to send again.

The connection knows nothing about futures: it tells its owner (the client) through the
callbacks of :class:`Handler`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence, Union

from . import _wire
from ._chunk import payload_bytes
from .exceptions import CommClosedError, ShoalError, TimeoutError, error_from_wire

logger = logging.getLogger("shoal")

Header = dict[str, Any]

# How many tasks' worth, and how many bytes of payloads and functions, of the update_graph
# messages written last are kept, to be sent again when a scheduler that died before reading
# them comes back (docs/protocol.md, resume).
RETAIN_GRAPH_TASKS = 100_000
RETAIN_GRAPH_BYTES = 256 << 20


def _graph_bytes(header: Header) -> int:
    """What keeping an update_graph costs, roughly: its payloads and functions."""
    return payload_bytes(header.get("tasks") or []) + sum(len(b) for b in (header.get("funcs") or {}).values())


# reconnect backoff: the first retry after 0.1 s, doubling up to 2 s between tries
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0

# Requests that only read state: a request of these ops that was waiting for its reply when the
# connection broke is sent again after the reconnect (its caller never notices). Any other
# request fails with CommClosedError: the scheduler may or may not have acted on it.
IDEMPOTENT = frozenset({"info", "who_has", "story", "processing", "get_logs", "list_datasets",
                        "get_dataset", "queue_qsize", "semaphore_value", "variable_get"})


# -------------------------------------------------------------------------------------------
# transport


class Stream(Protocol):
    """A framed, handshaken message stream (``_wire.Connection`` is one). ``send`` may be called
    from any thread; ``recv`` from one reader; ``close`` wakes a blocked ``recv``."""

    @property
    def closed(self) -> bool: ...

    def send(self, header: Header, frames: Sequence[_wire.Buffer] = ()) -> None: ...

    def recv(self) -> tuple[Header, list[bytearray]]: ...

    def settimeout(self, timeout: Optional[float]) -> None:
        """Bound each later ``recv`` (None: wait as long as it takes)."""

    def close(self) -> None: ...


class AsyncStreamLike(Protocol):
    """A Stream for asyncio: ``send`` and ``recv`` are coroutines (``_data.AsyncStream``)."""

    @property
    def closed(self) -> bool: ...

    async def send(self, header: Header, frames: Sequence[_wire.Buffer] = ()) -> None: ...

    async def recv(self) -> tuple[Header, list[bytearray]]: ...

    def close(self) -> None: ...


class Transport(Protocol):
    """Opens streams to the scheduler's control port and to workers' data ports (role client).
    ``timeout`` bounds connecting and the handshake; ``io_timeout`` (None: none) bounds each
    later read. ``connect_async`` opens one on the running event loop (the asyncio client's
    data connections)."""

    def connect(self, address: str, token: str, timeout: float,
                io_timeout: Optional[float] = None) -> Stream: ...

    async def connect_async(self, address: str, token: str, timeout: float) -> AsyncStreamLike: ...


class TcpTransport:
    """The real transport: TCP, TLS when given a context."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.tls = tls

    def connect(self, address: str, token: str, timeout: float,
                io_timeout: Optional[float] = None) -> Stream:
        conn = _wire.Connection.connect(address, _wire.ROLE_CLIENT, token, timeout=timeout, tls=self.tls)
        conn.settimeout(io_timeout)
        return conn

    async def connect_async(self, address: str, token: str, timeout: float) -> AsyncStreamLike:
        from ._data import open_async_stream

        return await open_async_stream(address, token, timeout, self.tls)


# -------------------------------------------------------------------------------------------
# typed messages from the scheduler


@dataclass(frozen=True)
class Welcome:
    client: int
    version: str
    dashboard: str


@dataclass(frozen=True)
class KeyStateMsg:
    key: str
    state: str
    worker: str = ""
    encoding: str = ""
    nbytes: int = 0
    error: Optional[dict[str, Any]] = None


@dataclass(frozen=True)
class GraphRejected:
    id: int
    keys: list[str]
    error: Optional[dict[str, Any]]


@dataclass(frozen=True)
class Reply:
    """The answer to a request (``info_reply``, ``who_has_reply``, ``ok``, ``resumed``, or an
    ``error`` naming the request's id)."""

    id: int
    header: Header


@dataclass(frozen=True)
class ServerError:
    """An ``error`` that answers no request."""

    code: str
    message: str


@dataclass(frozen=True)
class Other:
    op: str
    header: Header


Message = Union[Welcome, KeyStateMsg, GraphRejected, Reply, ServerError, Other]

_REPLIES = frozenset({"info_reply", "who_has_reply", "ok", "resumed"})


def parse(h: Header) -> Message:
    """The typed form of a scheduler message header."""
    op = h["op"]
    if op == "key_state":
        return KeyStateMsg(str(h.get("key")), str(h.get("state") or ""), str(h.get("worker") or ""),
                           str(h.get("encoding") or ""), int(h.get("nbytes") or 0), h.get("error"))
    if op in _REPLIES:
        return Reply(int(h.get("id") or 0), h)
    if op == "error":
        if h.get("id"):
            return Reply(int(h["id"]), h)
        return ServerError(str(h.get("code") or ""), str(h.get("message") or ""))
    if op == "graph_rejected":
        return GraphRejected(int(h.get("id") or 0), [str(k) for k in h.get("keys") or ()], h.get("error"))
    if op == "welcome":
        return Welcome(int(h.get("client") or 0), str(h.get("version") or ""), str(h.get("dashboard") or ""))
    return Other(op, h)


# -------------------------------------------------------------------------------------------
# the control connection


class Handler(Protocol):
    """What the connection tells its owner."""

    def on_message(self, msg: Message) -> None:
        """A message that is not a reply (key_state, graph_rejected, …), in the reader thread."""

    def resume_keys(self) -> list[str]:
        """The keys to name in ``resume`` (every key the client holds a Future for)."""

    def on_reconnected(self) -> None:
        """A new stream is up, before ``resume`` and the queued messages go (must not send).
        Called, like ``resume_keys``, without the connection's lock held."""

    def on_resume_failed(self, exc: BaseException) -> None:
        """The scheduler refused the resume: fail what is pending."""

    def on_lost(self, exc: BaseException) -> None:
        """The connection is gone for good (closing, reconnect disabled or timed out)."""


@dataclass
class _Pending:
    header: Header
    future: "concurrent.futures.Future[Header]"
    generation: int  # the stream it was written to; 0: not written yet (queued while connecting)


@dataclass
class _Target:
    address: str
    token: str


@dataclass
class ConnectionState:
    status: str = "connecting"  # connecting, resuming (resume sent, its answer awaited), running, closed
    error: Optional[BaseException] = None
    generation: int = 0
    reconnects: int = 0
    queued: list[Header] = field(default_factory=list)


class ControlConnection:
    """One client's connection to the scheduler (see the module docstring).

    ``target()`` gives the address and token to dial (read again before each reconnect: a
    scheduler file may have changed). ``timeout`` bounds connecting and the welcome;
    ``reconnect_timeout`` (seconds, 0: never reconnect) how long a broken connection is retried.
    """

    def __init__(self, target: Callable[[], tuple[str, str]], transport: Transport, handler: Handler, *,
                 timeout: float, reconnect_timeout: float) -> None:
        self._target = target
        self.transport = transport
        self.handler = handler
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self.address = ""
        self.welcome = Welcome(0, "", "")
        self.client_id = 0
        self.state = ConnectionState()
        self._lock = threading.Lock()
        self._stream: Optional[Stream] = None
        self._requests: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._closing = False
        # update_graph messages written, newest last, at most RETAIN_GRAPH_TASKS tasks in all
        # (header, _graph_bytes of it)
        self._sent_graphs: collections.deque[tuple[Header, int]] = collections.deque()
        self._sent_graph_tasks = 0
        self._sent_graph_bytes = 0
        self._last_graph = 0  # the highest update_graph id written
        self._wake = threading.Event()  # set by close(): stop backing off
        self._reader: Optional[threading.Thread] = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Welcome:
        """Connect (no retries: a first connection that fails raises) and start the reader."""
        stream, welcome = self._dial()
        self._stream = stream
        self.welcome = welcome
        self.client_id = welcome.client
        with self._lock:
            self.state.status = "running"
            self.state.generation = 1
        self._reader = threading.Thread(target=self._read_loop, name="shoal-client-reader", daemon=True)
        self._reader.start()
        return welcome

    def _dial(self, limit: Optional[float] = None) -> tuple[Stream, Welcome]:
        address, token = self._target()
        self.address = address
        t = self.timeout if limit is None else max(min(self.timeout, limit), 0.05)
        stream = self.transport.connect(address, token, t, io_timeout=t)
        try:
            header, _ = stream.recv()
        except TimeoutError:
            stream.close()
            raise TimeoutError(f"the scheduler at {address} sent no welcome within {t}s") from None
        except BaseException:
            stream.close()
            raise
        if header["op"] == "error":
            stream.close()
            raise error_from_wire(header)
        msg = parse(header)
        if not isinstance(msg, Welcome):
            stream.close()
            raise ShoalError(f"expected welcome from {address}, got {header['op']!r}")
        stream.settimeout(None)  # the welcome came: from now on reads wait as long as it takes
        return stream, msg

    @property
    def status(self) -> str:
        return self.state.status

    @property
    def reader(self) -> Optional[threading.Thread]:
        return self._reader

    def close(self) -> None:
        """Close for good: the reader ends, pending requests fail with CommClosedError."""
        with self._lock:
            self._closing = True
            stream = self._stream
        self._wake.set()
        if stream is not None:
            stream.close()
        if self._reader is not None and threading.current_thread() is not self._reader:
            self._reader.join(timeout=5)
        self._finish(CommClosedError("the client is closed"))

    # -- sending -----------------------------------------------------------------------------

    def send(self, header: Header) -> None:
        """Send a message. While reconnecting it is kept and sent after the ``resume``; on a
        closed connection it raises CommClosedError."""
        with self._lock:
            self._send_locked(header)

    def _send_locked(self, header: Header) -> bool:
        """Write or queue ``header``; True when written."""
        st = self.state
        if st.status == "closed":
            raise self._closed_error()
        if st.status != "running":  # connecting, or resuming: sent once resumed is handled
            st.queued.append(header)
            return False
        assert self._stream is not None
        try:
            self._stream.send(header)
            self._sent_locked(header)
            return True
        except CommClosedError:
            if self.reconnect_timeout <= 0:
                raise
            # the stream broke under us: the reader notices (we close it to be sure) and
            # reconnects; this message goes after the resume
            st.status = "connecting"
            st.queued.append(header)
            self._stream.close()
            return False

    def _sent_locked(self, header: Header) -> None:
        """Keep a written update_graph (the scheduler may die before reading it)."""
        gid = int(header.get("id") or 0) if header.get("op") == "update_graph" else 0
        if gid <= self._last_graph:
            return  # not a graph, or one sent again (kept already)
        self._last_graph = gid
        nbytes = _graph_bytes(header)
        self._sent_graphs.append((header, nbytes))
        self._sent_graph_tasks += len(header.get("tasks") or ())
        self._sent_graph_bytes += nbytes
        while len(self._sent_graphs) > 1 and (self._sent_graph_tasks > RETAIN_GRAPH_TASKS
                                              or self._sent_graph_bytes > RETAIN_GRAPH_BYTES):
            self._forget_graph_locked()

    def _forget_graph_locked(self) -> None:
        h, nbytes = self._sent_graphs.popleft()
        self._sent_graph_tasks -= len(h.get("tasks") or ())
        self._sent_graph_bytes -= nbytes

    def _closed_error(self) -> BaseException:
        err = self.state.error
        if err is None:
            return CommClosedError(f"not connected to the scheduler at {self.address}")
        if isinstance(err, CommClosedError):
            return CommClosedError(str(err))
        return CommClosedError(f"not connected to the scheduler at {self.address}: {err}")

    def request_future(self, header: Header) -> "concurrent.futures.Future[Header]":
        """Send a request (an ``id`` is added) and return the future of its reply (an ``error``
        reply is set as the future's exception)."""
        rid = next(self._ids)
        fut: concurrent.futures.Future[Header] = concurrent.futures.Future()
        msg = {**header, "id": rid}
        with self._lock:
            pending = _Pending(msg, fut, 0)
            self._requests[rid] = pending
            try:
                if self._send_locked(msg):
                    pending.generation = self.state.generation
            except BaseException:
                self._requests.pop(rid, None)
                raise
        fut.add_done_callback(lambda _: self._forget(rid))
        return fut

    def _forget(self, rid: int) -> None:
        with self._lock:
            self._requests.pop(rid, None)

    def request(self, header: Header, timeout: Optional[float] = None) -> Header:
        """Send a request and wait for its reply (``TimeoutError`` after ``timeout`` seconds,
        default the connection's timeout; the reply's error raised)."""
        fut = self.request_future(header)
        t = self.timeout if timeout is None else timeout
        try:
            return fut.result(t)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"the scheduler did not answer {header['op']!r} within {t}s") from None

    # -- reading -----------------------------------------------------------------------------

    def _read_loop(self) -> None:
        while True:
            stream = self._stream
            assert stream is not None
            try:
                header, _ = stream.recv()
            except BaseException as exc:  # noqa: BLE001
                if not self._reconnect(exc):
                    return
                continue
            try:
                self._dispatch(parse(header))
            except Exception:
                logger.exception("shoal: error handling %r from the scheduler", header.get("op"))

    def _dispatch(self, msg: Message) -> None:
        if isinstance(msg, Reply):
            with self._lock:
                pending = self._requests.pop(msg.id, None)
            if pending is None:
                return
            if msg.header.get("op") == "error":
                _settle(pending.future, exc=error_from_wire(msg.header))
            else:
                _settle(pending.future, value=msg.header)
        elif isinstance(msg, ServerError):
            logger.error("shoal: scheduler error %s: %s", msg.code, msg.message)
        elif isinstance(msg, Welcome):
            pass
        else:
            self.handler.on_message(msg)

    # -- reconnecting ------------------------------------------------------------------------

    def _reconnect(self, exc: BaseException) -> bool:
        """The stream broke: reconnect and resume (True), or give up (False)."""
        with self._lock:
            closing = self._closing
            if not closing:
                self.state.status = "connecting"
                # requests waiting for a reply on the broken stream: read-only ones are sent
                # again after the resume; the others fail (the scheduler may have acted on them)
                lost = [p for p in self._requests.values()
                        if p.generation == self.state.generation and p.header["op"] not in IDEMPOTENT]
                for p in self._requests.values():
                    if p.generation == self.state.generation and p.header["op"] in IDEMPOTENT:
                        p.generation = 0
                        self.state.queued.insert(0, p.header)
        if closing:
            self._finish(CommClosedError("the client is closed"))
            return False
        err = CommClosedError(f"lost the connection to the scheduler at {self.address}: {exc}")
        for p in lost:
            _settle(p.future, exc=CommClosedError(f"{err}; the {p.header['op']!r} request may or may not"
                                                  " have been carried out"))
        if self.reconnect_timeout <= 0:
            logger.warning("shoal: lost the connection to the scheduler at %s: %s", self.address, exc)
            self._finish(err)
            return False
        logger.warning("shoal: lost the connection to the scheduler at %s: %s; reconnecting for up to %gs",
                       self.address, exc, self.reconnect_timeout)
        started = time.monotonic()
        deadline = started + self.reconnect_timeout
        delay = BACKOFF_FIRST
        attempt = 0
        last: BaseException = exc
        while True:
            attempt += 1
            try:
                stream, welcome = self._dial(deadline - time.monotonic())
            except Exception as e:  # noqa: BLE001 - any failure to connect: try again
                last = e
                logger.debug("shoal: reconnect attempt %d to %s failed: %s", attempt, self.address, e)
            else:
                if self._resume(stream, welcome):
                    logger.info("shoal: reconnected to the scheduler at %s after %.2fs (%d attempts)",
                                self.address, time.monotonic() - started, attempt)
                    return True
                self._finish(CommClosedError("the client is closed"))
                return False
            left = deadline - time.monotonic()
            if left <= 0 or self._closing:
                break
            if self._wake.wait(min(delay, left)):
                break  # close() was called
            delay = min(delay * 2, BACKOFF_MAX)
        if self._closing:
            self._finish(CommClosedError("the client is closed"))
            return False
        logger.warning("shoal: could not reconnect to the scheduler at %s within %gs: %s",
                       self.address, self.reconnect_timeout, last)
        self._finish(CommClosedError(f"lost the connection to the scheduler at {self.address} and could not"
                                     f" reconnect within {self.reconnect_timeout}s: {last}"))
        return False

    def _resume(self, stream: Stream, welcome: Welcome) -> bool:
        """On a fresh stream: send ``resume`` then everything queued; False when closing."""
        # the owner's state is read before taking this connection's lock: the owner's threads
        # take their own lock and then this one (to send), never the reverse
        self.handler.on_reconnected()
        held = self.handler.resume_keys()
        with self._lock:
            if self._closing:
                stream.close()
                return False
            queued, self.state.queued = self.state.queued, []
            # keys that queued messages define (a graph submitted while disconnected) or ask for
            # are not resumed: the scheduler does not know them yet, and will after the queue
            fresh: set[str] = set()
            for h in queued:
                if h["op"] == "update_graph":
                    fresh.update(h.get("wanted") or ())
                elif h["op"] in ("wanted", "scatter"):
                    fresh.update(h.get("keys") or (str(it.get("key")) for it in h.get("items") or ()))
            keys = [k for k in held if k not in fresh]
            rid = next(self._ids)
            fut: concurrent.futures.Future[Header] = concurrent.futures.Future()
            # n: the last graph written to the broken stream; if the scheduler has not read
            # it, resumed says from which one to send again (_resumed)
            sent_before = self._last_graph
            resume = {"op": "resume", "id": rid, "client": self.client_id, "keys": keys, "n": sent_before}
            self._requests[rid] = _Pending(resume, fut, 0)
            self._stream = stream
            self.state.generation += 1
            self.state.reconnects += 1
            # what was queued goes once resumed is handled (_resumed), after the graphs the
            # scheduler may ask for again, which later graphs may depend on; until then
            # messages keep being queued behind it
            self.state.queued = queued + self.state.queued
            try:
                stream.send(resume)
            except CommClosedError:
                # broke again at once: the reader finds out and starts over with all of it
                self._requests.pop(rid, None)
                self.state.status = "connecting"
                return True
            self.state.status = "resuming"
            self.welcome = welcome
        fut.add_done_callback(lambda f: self._resumed(f, sent_before))
        return True

    def _resumed(self, fut: "concurrent.futures.Future[Header]", sent_before: int = 0) -> None:
        """The answer to ``resume`` (in the reader thread): the graphs the scheduler did not read
        go again, then everything queued meanwhile, in order."""
        exc = fut.exception()
        if isinstance(exc, CommClosedError):
            return  # the connection broke again: the next reconnect resumes, queue and all
        unread: list[str] = []
        read = 0
        if exc is not None:
            logger.warning("shoal: the scheduler at %s refused to resume this client's session: %s",
                           self.address, exc)
            self.handler.on_resume_failed(exc)
        else:
            reply = fut.result()
            new_id = int(reply.get("client") or self.welcome.client)
            if new_id != self.client_id:
                logger.info("shoal: resumed as client %d (was %d)", new_id, self.client_id)
            self.client_id = new_id
            unread, read = list(reply.get("keys") or ()), int(reply.get("n") or 0)
        # the owner's state first, without this connection's lock (see _resume)
        held = set(self.handler.resume_keys()) if unread else set()
        with self._lock:
            if self.state.status != "resuming" or self._stream is None:
                return  # broke again, or closed
            out: list[Header] = []
            if unread:
                out = self._unread_locked(read, sent_before, unread, held)
            queued, self.state.queued = self.state.queued, []
            gen = self.state.generation
            written = 0  # of queued
            try:
                for h in out:
                    self._stream.send(h)
                for h in queued:
                    self._stream.send(h)
                    written += 1
                    self._sent_locked(h)
                    p = self._requests.get(int(h.get("id") or 0)) if "id" in h else None
                    if p is not None and p.header is h:
                        p.generation = gen
            except CommClosedError:
                # broke again: the reader reconnects; what was not written goes after that resume
                self.state.queued = queued[written:] + self.state.queued
                self.state.status = "connecting"
                self._stream.close()
                return
            self.state.status = "running"

    def _unread_locked(self, read: int, sent_before: int, keys: list[str], held: set[str]) -> list[Header]:
        """The scheduler read our graphs up to id ``read`` and does not know ``keys``: the kept
        graphs after ``read`` (written before the resume) to send again, then ``wanted`` for the
        keys still held (those no graph defines are then reported lost), and ``release_keys``
        for what those graphs want that no future holds any more (keys held only until a later
        chunk was sent)."""
        while self._sent_graphs and int(self._sent_graphs[0][0].get("id") or 0) <= read:
            self._forget_graph_locked()  # read: never needed again
        again = [h for h, _ in self._sent_graphs if int(h.get("id") or 0) <= sent_before]
        kept_from = int(again[0].get("id") or 0) if again else sent_before + 1
        logger.warning("shoal: the scheduler had not read the graphs this client sent after graph %d before it"
                       " went away; sending the %d still kept again", read, len(again))
        if kept_from > read + 1:
            logger.warning("shoal: graphs %d to %d are no longer kept (over %d tasks or %d MiB since); their"
                           " keys will be reported lost", read + 1, kept_from - 1, RETAIN_GRAPH_TASKS,
                           RETAIN_GRAPH_BYTES >> 20)
        out: list[Header] = list(again)
        want = [k for k in keys if k in held]
        if want:
            out.append({"op": "wanted", "keys": want})
        unheld = list(dict.fromkeys(k for h in again for k in h.get("wanted") or () if k not in held))
        if unheld:
            out.append({"op": "release_keys", "keys": unheld})
        return out

    def _finish(self, err: BaseException) -> None:
        """Closed for good: fail every waiting request, tell the owner (once)."""
        with self._lock:
            if self.state.status == "closed":
                return
            self.state.status = "closed"
            self.state.error = err
            self.state.queued.clear()
            requests = list(self._requests.values())
            self._requests.clear()
        for p in requests:
            _settle(p.future, exc=err)
        self.handler.on_lost(err)


def _settle(fut: "concurrent.futures.Future[Header]", *, value: Optional[Header] = None,
            exc: Optional[BaseException] = None) -> None:
    """Set a reply future's outcome unless it is done already (cancelled by a timed-out waiter)."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            assert value is not None
            fut.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass
