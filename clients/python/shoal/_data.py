"""Data connections: the client's requests to workers' data ports (``get_data``, ``put_data``).

The scheduler never carries results: it says where a key lives, and the client asks that
worker. :class:`DataPool` keeps one connection per worker, shared by the client's threads (a
request holds it until its answer came), and reconnects once when a pooled connection that
served before was closed by the worker's idle timeout. The control connection's loss does not
touch these connections.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from typing import Any, Sequence

from . import _segments, _serialize, _wire
from ._conn import AsyncStreamLike, Stream, Transport
from .exceptions import CommClosedError, ShoalError, TimeoutError, error_from_wire
from .futures import reading_client

logger = logging.getLogger("shoal")

GET_DATA_BATCH = 1000  # keys per get_data request
PUT_DATA_BATCH = 1000  # items per put_data request

Reply = tuple[dict[str, Any], list[bytearray]]


class DataConn:
    """A request/response connection to one worker's data port."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.used = False  # a request went through: a failure may be the worker's idle timeout

    def request(self, header: dict[str, Any], frames: Sequence[_wire.Buffer] = (),
                expect: str = "data") -> Reply:
        with self.lock:
            rid = next(self.ids)
            self.stream.send({**header, "id": rid}, frames)
            while True:
                reply, out = self.stream.recv()
                if reply.get("id") not in (rid, None, 0):
                    continue  # a stale answer
                self.used = True
                if reply["op"] == "error":
                    raise error_from_wire(reply)
                if reply["op"] != expect:
                    continue
                return reply, out


def decode_items(reply: dict[str, Any], frames: list[bytearray], client: Any) -> dict[str, Any]:
    """The values of a ``data`` reply; Futures inside them belong to ``client``."""
    out: dict[str, Any] = {}
    pos = 0
    token = reading_client.set(client)
    try:
        for it in reply.get("items") or []:
            n = int(it.get("nframes") or 1)
            out[str(it["key"])] = _serialize.decode(str(it["encoding"]), frames[pos:pos + n])
            pos += n
    finally:
        reading_client.reset(token)
    return out


def encode_items(items: Sequence[tuple[str, Any]]) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """put_data item headers and each value's frames."""
    headers: list[dict[str, Any]] = []
    encoded: list[list[Any]] = []
    for key, value in items:
        enc, fr = _serialize.encode(value)
        headers.append({"key": key, "encoding": enc, "nframes": len(fr), "nbytes": _serialize.nbytes(fr)})
        encoded.append(fr)
    return headers, encoded


def is_loopback(address: str) -> bool:
    import ipaddress

    try:
        host, _ = _wire.parse_address(address)
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # an address this client cannot read, or a host name: maybe remote
        return False


def use_segments(worker: str, headers: list[dict[str, Any]], refused: dict[str, bool]) -> bool:
    """Whether to pass these values to ``worker`` in shared memory: it is on this machine, did
    not refuse before, and one value is large enough to be worth a memfd."""
    return (not refused.get(worker) and _segments.available() and is_loopback(worker)
            and any(h["nbytes"] >= _segments.SEG_MIN for h in headers))


def segment_message(headers: list[dict[str, Any]], encoded: list[list[Any]],
                    fds: list[int]) -> tuple[dict[str, Any], list[_wire.Buffer]]:
    """A put_data with each large value in a sealed memfd (its fd appended to ``fds``, for the
    caller to close once the worker answered)."""
    segs: list[dict[str, Any]] = []
    frames: list[_wire.Buffer] = []
    for h, fr in zip(headers, encoded):
        if h["nbytes"] >= _segments.SEG_MIN:
            fd, at, fr = _segments.write_segment(fr)
            fds.append(fd)
            st = os.fstat(fd)
            segs.append({"key": h["key"], "pid": os.getpid(), "fd": fd, "dev": st.st_dev,
                         "ino": st.st_ino, "frames": at})
        frames.extend(fr)
    return {"op": "put_data", "items": headers, "seg": segs, "shm_host": _segments.host_id()}, frames


class DataPool:
    """The client's data connections: per worker address, up to :attr:`MAX_PER_WORKER` open at
    once, each used by one request at a time and kept for the next when it ends well. Threads
    fetching from the same worker at once (the seceded tasks of an executor, waiting on what
    they submitted) each get a connection instead of queueing behind one."""

    MAX_PER_WORKER = 8

    def __init__(self, transport: Transport, token: Any, timeout: float, fetch_timeout: float) -> None:
        self.transport = transport
        self._token = token  # a callable giving the current token
        self.timeout = timeout
        self.fetch_timeout = fetch_timeout
        self._idle: dict[str, list[DataConn]] = {}
        self._open: dict[str, int] = {}  # connections per worker, idle or in use
        self._cond = threading.Condition()
        self._closed = False
        self.no_segments: dict[str, bool] = {}  # workers that refused put_data segments

    def take(self, worker: str) -> DataConn:
        """A connection to ``worker`` for one request (idle, or new while fewer than
        MAX_PER_WORKER are open; else wait for one). Give it back with :meth:`give`."""
        deadline = time.monotonic() + self.fetch_timeout
        with self._cond:
            while True:
                if self._closed:
                    raise CommClosedError("the client is closed")
                idle = self._idle.get(worker)
                while idle:
                    dc = idle.pop()
                    if not dc.stream.closed:
                        return dc
                    self._open[worker] -= 1
                if self._open.get(worker, 0) < self.MAX_PER_WORKER:
                    self._open[worker] = self._open.get(worker, 0) + 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no connection to {worker} came free within {self.fetch_timeout}s")
                self._cond.wait(left)
        try:
            stream = self.transport.connect(worker, self._token(), self.timeout, io_timeout=self.fetch_timeout)
        except BaseException:
            with self._cond:
                self._open[worker] -= 1
                self._cond.notify()
            raise
        return DataConn(stream)

    def give(self, worker: str, dc: DataConn, reuse: bool = True) -> None:
        """A request on ``dc`` ended: keep it for the next one (``reuse`` and still open), or
        close it."""
        keep = reuse and not dc.stream.closed
        with self._cond:
            keep = keep and not self._closed
            if keep:
                self._idle.setdefault(worker, []).append(dc)
            else:
                self._open[worker] = max(self._open.get(worker, 1) - 1, 0)
            self._cond.notify()
        if not keep:
            dc.stream.close()

    def drop(self, worker: str) -> None:
        """Close the idle connections to ``worker`` (the busy ones close when given back)."""
        with self._cond:
            idle = self._idle.pop(worker, [])
            self._open[worker] = max(self._open.get(worker, 0) - len(idle), 0)
            self._cond.notify_all()
        for dc in idle:
            dc.stream.close()

    def request(self, worker: str, header: dict[str, Any], frames: Sequence[_wire.Buffer] = (),
                expect: str = "data") -> Reply:
        """One request on a pooled connection to ``worker``. A pooled connection that served
        before may have been closed by the worker's idle timeout: then the request is sent once
        more on a new connection."""
        while True:
            dc = self.take(worker)
            try:
                reply = dc.request(header, frames, expect=expect)
            except (CommClosedError, ConnectionError, OSError):
                self.give(worker, dc, reuse=False)
                if not dc.used:
                    raise
                logger.debug("shoal: pooled data connection to %s was closed; reconnecting", worker)
                continue
            except BaseException as exc:
                # an error answer leaves the connection in step; a timeout or anything else
                # may leave an answer unread on it
                self.give(worker, dc, reuse=isinstance(exc, ShoalError) and not isinstance(exc, TimeoutError))
                raise
            self.give(worker, dc)
            return reply

    def get_data(self, worker: str, keys: list[str], client: Any) -> dict[str, Any]:
        """Values of ``keys`` held by ``worker`` (keys it does not have are left out)."""
        try:
            reply, frames = self.request(worker, {"op": "get_data", "keys": keys})
        except (CommClosedError, TimeoutError, ConnectionError, OSError) as exc:
            logger.info("shoal: fetching from %s failed: %s", worker, exc)  # its connection was dropped
            return {}
        return decode_items(reply, frames, client)

    def put(self, worker: str, headers: list[dict[str, Any]], encoded: list[list[Any]]) -> None:
        """put_data of encoded values on ``worker`` (in shared memory when it is on this machine)."""
        if not self._put_segments(worker, headers, encoded):
            frames = [f for fr in encoded for f in fr]
            self.request(worker, {"op": "put_data", "items": headers}, frames, expect="put_ok")

    def _put_segments(self, worker: str, headers: list[dict[str, Any]], encoded: list[list[Any]]) -> bool:
        """put_data with each large value in a sealed memfd the worker opens through /proc,
        when the worker is on this machine: the bytes are copied once, into the memfd, and
        never cross a socket. False when not tried or refused (then the caller sends bytes)."""
        if not use_segments(worker, headers, self.no_segments):
            return False
        fds: list[int] = []
        try:
            header, frames = segment_message(headers, encoded, fds)
            self.request(worker, header, frames, expect="put_ok")
            return True
        except (OSError, ShoalError) as exc:
            logger.info("shoal: passing values to %s in shared memory failed, sending bytes: %s", worker, exc)
            self.no_segments[worker] = True
            self.drop(worker)
            return False
        finally:
            for fd in fds:
                os.close(fd)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            conns = [dc for idle in self._idle.values() for dc in idle]
            self._idle.clear()
            self._cond.notify_all()
        for dc in conns:
            dc.stream.close()


# -------------------------------------------------------------------------------------------
# asyncio


class AsyncStream:
    """A framed message stream on asyncio streams (the data-port protocol of ``_wire``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str,
                 limits: _wire.Limits = _wire.DEFAULT_LIMITS) -> None:
        self.reader = reader
        self.writer = writer
        self.address = address
        self.limits = limits
        self.closed = False

    async def send(self, header: dict[str, Any], frames: Sequence[_wire.Buffer] = ()) -> None:
        if self.closed:
            raise CommClosedError(f"connection to {self.address} is closed")
        try:
            self.writer.writelines(_wire.encode_frames([_wire.pack_header(header), *frames]))
            await self.writer.drain()
        except OSError as exc:
            self.closed = True
            raise CommClosedError(f"connection to {self.address} lost: {exc}") from exc

    async def recv(self) -> Reply:
        import struct

        try:
            (n,) = struct.unpack(">I", await self.reader.readexactly(4))
            if n == 0 or n > self.limits.max_frames:
                raise ShoalError(f"{n} frames declared by {self.address} (limit {self.limits.max_frames})")
            lens = struct.unpack(f">{n}Q", await self.reader.readexactly(8 * n))
            frames: list[bytearray] = []
            for i, size in enumerate(lens):
                limit = self.limits.max_header if i == 0 else self.limits.max_frame
                if size > limit:
                    raise ShoalError(f"frame {i} from {self.address} declares {size} bytes (limit {limit})")
                frames.append(bytearray(await self.reader.readexactly(size)) if size else bytearray())
        except (asyncio.IncompleteReadError, OSError) as exc:
            self.closed = True
            raise CommClosedError(f"connection to {self.address} lost: {exc}") from exc
        return _wire.unpack_header(frames[0]), frames[1:]

    def close(self) -> None:
        self.closed = True
        self.writer.close()


async def open_async_stream(address: str, token: str, timeout: float, tls: Any = None) -> AsyncStream:
    """Connect to ``address`` on the running loop and do the handshake (role client)."""
    host, port = _wire.parse_address(address)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None,
                                    limit=1 << 20), timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(f"could not connect to {address} within {timeout}s") from None
    except OSError as exc:
        from .exceptions import ConnectError

        raise ConnectError(f"could not connect to {address}: {exc.strerror or exc}") from exc
    try:
        writer.write(_wire.encode_hello(_wire.ROLE_CLIENT, token))
        head = await asyncio.wait_for(reader.readexactly(_wire._ANSWER.size), timeout)
        magic, _version, status, n = _wire._ANSWER.unpack(head)
        if magic != _wire.MAGIC:
            from .exceptions import HandshakeError

            raise HandshakeError(f"{address} did not answer with the Shoal magic: is this a Shoal port?",
                                 code="bad-magic")
        msg = (await asyncio.wait_for(reader.readexactly(n), timeout)).decode(errors="replace") if n else ""
        _wire.raise_for_answer(status, msg, address)
    except asyncio.TimeoutError:
        writer.close()
        raise TimeoutError(f"handshake with {address} timed out after {timeout}s") from None
    except asyncio.IncompleteReadError as exc:
        writer.close()
        raise CommClosedError(f"{address} closed the connection during the handshake") from exc
    except BaseException:
        writer.close()
        raise
    return AsyncStream(reader, writer, address)


class AsyncDataConn:
    """A data connection used from one event loop (requests one at a time, as DataConn)."""

    def __init__(self, stream: AsyncStreamLike) -> None:
        self.stream = stream
        self.lock = asyncio.Lock()
        self.ids = itertools.count(1)
        self.used = False

    async def request(self, header: dict[str, Any], frames: Sequence[_wire.Buffer], expect: str,
                      timeout: float) -> Reply:
        async with self.lock:
            rid = next(self.ids)
            await self.stream.send({**header, "id": rid}, frames)
            while True:
                try:
                    reply, out = await asyncio.wait_for(self.stream.recv(), timeout)
                except asyncio.TimeoutError:
                    self.stream.close()  # an answer may still come: never read it as another's
                    raise TimeoutError(f"no answer from {header['op']!r} within {timeout}s") from None
                if reply.get("id") not in (rid, None, 0):
                    continue
                self.used = True
                if reply["op"] == "error":
                    raise error_from_wire(reply)
                if reply["op"] != expect:
                    continue
                return reply, out


class AsyncDataPool:
    """The data connections of one client on one event loop: :class:`DataPool` without threads
    (each request is a coroutine on the loop; nothing blocks it). As DataPool: up to
    MAX_PER_WORKER connections per worker, one request each, kept for the next."""

    MAX_PER_WORKER = DataPool.MAX_PER_WORKER

    def __init__(self, transport: Transport, token: Any, timeout: float, fetch_timeout: float) -> None:
        self.transport = transport
        self._token = token
        self.timeout = timeout
        self.fetch_timeout = fetch_timeout
        self._idle: dict[str, list[AsyncDataConn]] = {}
        self._open: dict[str, int] = {}
        self._freed = asyncio.Event()  # a connection was given back or closed
        self._closed = False
        self.no_segments: dict[str, bool] = {}

    async def take(self, worker: str) -> AsyncDataConn:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.fetch_timeout
        while True:
            if self._closed:
                raise CommClosedError("the client is closed")
            idle = self._idle.get(worker)
            while idle:
                dc = idle.pop()
                if not dc.stream.closed:
                    return dc
                self._open[worker] -= 1
            if self._open.get(worker, 0) < self.MAX_PER_WORKER:
                break
            self._freed.clear()
            try:
                await asyncio.wait_for(self._freed.wait(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                raise TimeoutError(f"no connection to {worker} came free within {self.fetch_timeout}s") from None
        self._open[worker] = self._open.get(worker, 0) + 1
        try:
            stream = await self.transport.connect_async(worker, self._token(), self.timeout)
        except BaseException:
            self._open[worker] -= 1
            self._freed.set()
            raise
        return AsyncDataConn(stream)

    def give(self, worker: str, dc: AsyncDataConn, reuse: bool = True) -> None:
        if reuse and not dc.stream.closed and not self._closed:
            self._idle.setdefault(worker, []).append(dc)
        else:
            self._open[worker] = max(self._open.get(worker, 1) - 1, 0)
            dc.stream.close()
        self._freed.set()

    def drop(self, worker: str) -> None:
        """Close the idle connections to ``worker``."""
        idle = self._idle.pop(worker, [])
        self._open[worker] = max(self._open.get(worker, 0) - len(idle), 0)
        for dc in idle:
            dc.stream.close()
        self._freed.set()

    async def request(self, worker: str, header: dict[str, Any], frames: Sequence[_wire.Buffer] = (),
                      expect: str = "data") -> Reply:
        while True:
            dc = await self.take(worker)
            try:
                reply = await dc.request(header, frames, expect, self.fetch_timeout)
            except (CommClosedError, ConnectionError, OSError):
                self.give(worker, dc, reuse=False)
                if not dc.used:
                    raise
                logger.debug("shoal: pooled data connection to %s was closed; reconnecting", worker)
                continue
            except BaseException as exc:  # an error answer leaves it in step; anything else may not
                self.give(worker, dc, reuse=isinstance(exc, ShoalError) and not isinstance(exc, TimeoutError))
                raise
            self.give(worker, dc)
            return reply

    async def get_data(self, worker: str, keys: list[str], client: Any) -> dict[str, Any]:
        try:
            reply, frames = await self.request(worker, {"op": "get_data", "keys": keys})
        except (CommClosedError, TimeoutError, ConnectionError, OSError) as exc:
            logger.info("shoal: fetching from %s failed: %s", worker, exc)
            return {}
        return decode_items(reply, frames, client)

    async def put(self, worker: str, headers: list[dict[str, Any]], encoded: list[list[Any]]) -> None:
        if use_segments(worker, headers, self.no_segments):
            fds: list[int] = []
            try:
                header, frames = segment_message(headers, encoded, fds)
                await self.request(worker, header, frames, expect="put_ok")
                return
            except (OSError, ShoalError) as exc:
                logger.info("shoal: passing values to %s in shared memory failed, sending bytes: %s", worker, exc)
                self.no_segments[worker] = True
                self.drop(worker)
            finally:
                for fd in fds:
                    os.close(fd)
        frames = [f for fr in encoded for f in fr]
        await self.request(worker, {"op": "put_data", "items": headers}, frames, expect="put_ok")

    def close(self) -> None:
        self._closed = True
        conns = [dc for idle in self._idle.values() for dc in idle]
        self._idle.clear()
        for dc in conns:
            dc.stream.close()
        self._freed.set()
