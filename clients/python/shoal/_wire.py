"""The Shoal wire protocol, version 1 (docs/protocol.md): handshake, frame lists, headers.

A connection starts with a handshake (magic ``SHOL``, version, role, token), then carries
messages. A message is a list of frames: a big-endian uint32 frame count, a uint64 length per
frame, then the frames. Frame 0 is a msgpack map with an ``op``; the other frames are raw
payload. Declared lengths are checked against :class:`Limits` before anything is allocated.

:class:`Connection` is a blocking, thread-safe-for-send connection; one thread reads.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, Union

import msgpack

from .exceptions import (
    AuthenticationError,
    BusyError,
    CommClosedError,
    ConnectError,
    FrameTooLargeError,
    HandshakeError,
    ProtocolError,
    TimeoutError,
)

MAGIC = b"SHOL"
VERSION = 1

ROLE_CLIENT = 1
ROLE_WORKER = 2
ROLE_PEER = 3
ROLE_EXECUTOR = 4
ROLE_ADMIN = 5

STATUS_OK = 0
STATUS_BAD_MAGIC = 1
STATUS_BAD_VERSION = 2
STATUS_AUTH_FAILED = 3
STATUS_BAD_ROLE = 4
STATUS_BUSY = 5

_STATUS_CODES = {
    STATUS_BAD_MAGIC: "bad-magic",
    STATUS_BAD_VERSION: "bad-version",
    STATUS_AUTH_FAILED: "auth-failed",
    STATUS_BAD_ROLE: "bad-role",
    STATUS_BUSY: "busy",
}

MAX_TOKEN_LEN = 1024
MAX_HANDSHAKE_MSG = 4096
HANDSHAKE_TIMEOUT = 10.0

Buffer = Union[bytes, bytearray, memoryview]
Header = dict[str, Any]
Message = tuple[Header, list[bytearray]]

_U32 = struct.Struct(">I")
# the count-and-lengths prefix's lengths, by frame count, for the messages _Reader.message
# parses in place: a run or an answer has a handful of frames, a batch of them (``runs``,
# ``dones``) up to a few hundred
_LENS_MAX = 1024
_LENS: dict[int, struct.Struct] = {}


def _lens(n: int) -> struct.Struct:
    s = _LENS.get(n)
    if s is None:
        s = _LENS[n] = struct.Struct(f">{n}Q")
    return s
_HELLO = struct.Struct(">4sHBH")  # magic, version, role, token length
_ANSWER = struct.Struct(">4sHBH")  # magic, version, status, message length


@dataclass(frozen=True)
class Limits:
    """What a peer may make this process allocate (docs/protocol.md §3)."""

    max_frames: int = 4096
    max_frame: int = 16 << 30
    max_header: int = 64 << 20
    max_message: int = 16 << 30


DEFAULT_LIMITS = Limits()


# ---------------------------------------------------------------------------------------------
# handshake


def encode_hello(role: int, token: str = "", version: int = VERSION) -> bytes:
    """The connecting side's half of the handshake."""
    tok = token.encode()
    if len(tok) > MAX_TOKEN_LEN:
        raise ValueError("shoal: token longer than 1024 bytes")
    return _HELLO.pack(MAGIC, version, role, len(tok)) + tok


def encode_answer(status: int, message: str = "", version: int = VERSION) -> bytes:
    """The accepting side's half of the handshake (used by tests playing a server)."""
    msg = message.encode()[:MAX_HANDSHAKE_MSG]
    return _ANSWER.pack(MAGIC, version, status, len(msg)) + msg


def decode_hello(data: bytes) -> tuple[int, int, str]:
    """Parse a complete hello: returns (version, role, token)."""
    magic, version, role, n = _HELLO.unpack_from(data)
    if magic != MAGIC:
        raise HandshakeError(f"bad magic {magic!r}: not a Shoal client", code="bad-magic")
    return version, role, data[_HELLO.size : _HELLO.size + n].decode()


def raise_for_answer(status: int, message: str, address: str = "") -> None:
    """Turn a handshake refusal into the matching exception."""
    if status == STATUS_OK:
        return
    where = f" by {address}" if address else ""
    text = f"handshake refused{where}: {message or 'no reason given'}"
    code = _STATUS_CODES.get(status, "protocol-error")
    if status == STATUS_AUTH_FAILED:
        raise AuthenticationError(text, code=code)
    if status == STATUS_BUSY:
        raise BusyError(text, code=code)
    raise HandshakeError(text, code=code)


def client_handshake(sock: socket.socket, role: int, token: str = "", address: str = "",
                     timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Perform the connecting side's handshake on a connected socket."""
    old = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        sock.sendall(encode_hello(role, token or ""))
        head = _recv_exact(sock, _ANSWER.size)
        magic, _version, status, n = _ANSWER.unpack(head)
        if magic != MAGIC:
            raise HandshakeError(
                f"{address or 'the server'} did not answer with the Shoal magic: is this a Shoal port?",
                code="bad-magic")
        if n > MAX_HANDSHAKE_MSG:
            raise HandshakeError("handshake answer too long", code="protocol-error")
        msg = _recv_exact(sock, n).decode(errors="replace") if n else ""
        raise_for_answer(status, msg, address)
    except socket.timeout as exc:
        raise TimeoutError(f"handshake with {address or 'peer'} timed out after {timeout}s") from exc
    except CommClosedError as exc:
        raise CommClosedError(
            f"{address or 'peer'} closed the connection during the handshake"
            " (is this a Shoal port?)") from exc
    finally:
        try:
            sock.settimeout(old)
        except OSError:
            pass


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise CommClosedError("connection closed by peer")
        got += k
    return buf


# ---------------------------------------------------------------------------------------------
# frames


# msgpack.packb makes a Packer, which mallocs a 256 KiB buffer and frees it again. glibc serves
# that from its heap while its mmap threshold adapts, but with MALLOC_TRIM_THRESHOLD_=65536 (as
# dask's workers run, and Shoal's executors once did) the threshold stays at 128 KiB: every packb
# was an mmap and a munmap, 7 µs instead of 0.2, a third of an executor's time on small tasks. A Packer
# that starts small grows its buffer only for a message that needs it.
_PACK_START = 4096


def _packer_takes_buf_size() -> bool:
    try:
        msgpack.Packer(buf_size=_PACK_START)  # msgpack 1.1 on; 1.0 has no such argument
        return True
    except TypeError:
        return False


if _packer_takes_buf_size():
    def packb(obj: Any) -> bytes:
        """``msgpack.packb(obj, use_bin_type=True)`` without the large buffer per call."""
        out: bytes = msgpack.Packer(use_bin_type=True, buf_size=_PACK_START).pack(obj)
        return out
else:  # pragma: no cover - msgpack 1.0
    def packb(obj: Any) -> bytes:
        """``msgpack.packb(obj, use_bin_type=True)``."""
        out: bytes = msgpack.packb(obj, use_bin_type=True)
        return out


class Encoded(dict[str, Any]):
    """A header whose bytes were written already: :func:`pack_header` returns ``wire``. The
    dict holds what the sender's own bookkeeping reads of it (``op``, ``id``, ...); its values
    need not be what msgpack would write (an update_graph's ``tasks`` is an EncodedTasks)."""

    __slots__ = ("wire",)

    def __init__(self, fields: dict[str, Any], wire: bytes) -> None:
        super().__init__(fields)
        self.wire = wire


def pack_header(header: Header) -> bytes:
    """Encode a header map (frame 0)."""
    if type(header) is Encoded:
        return header.wire
    return packb(header)


def unpack_header(frame: Buffer) -> Header:
    """Decode frame 0; a header that is not a map with a string ``op`` is a ProtocolError."""
    try:
        h = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError(f"bad header: {exc}") from exc
    if not isinstance(h, dict) or not isinstance(h.get("op"), str) or not h["op"]:
        raise ProtocolError("header is not a msgpack map with an op")
    return h


def encode_frames(frames: Sequence[Buffer]) -> list[Buffer]:
    """The byte strings of one message: the count-and-lengths prefix, then the frames."""
    n = len(frames)
    lens = [len(f) if type(f) is bytes else memoryview(f).nbytes for f in frames]
    return [struct.pack(f">I{n}Q", n, *lens), *frames]


def encode_message(header: Header, frames: Sequence[Buffer] = ()) -> bytes:
    """One whole message as bytes (convenient for tests and small messages)."""
    parts = encode_frames([pack_header(header), *frames])
    return b"".join(bytes(p) if not isinstance(p, bytes) else p for p in parts)


class Receiver(Protocol):
    """What :class:`_Reader` reads from: a socket, or a wrapper of one."""

    def recv(self, bufsize: int, /) -> bytes: ...

    def recv_into(self, buffer: Any, nbytes: int, /) -> int: ...


class _Reader:
    """Buffered exact reads from a socket; big reads go straight into their own buffer.

    Small reads are served from one 256 KiB buffer that is reused (``recv_into``): a fresh
    ``recv(256 KiB)`` per read costs ~20 µs in allocation alone (it is above malloc's mmap
    threshold), more than the rest of a small task's round trip. The buffer is made at the first
    read: a connection that only sends (a seceded task's answer socket) never pays for it, and
    zeroing 256 KiB of fresh pages was ~10 % of an executor's CPU in fib by recursive
    submission."""

    _CHUNK = 256 << 10
    _GROW_FROM = 64 << 20

    def __init__(self, sock: Receiver) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._pos = 0
        self._end = 0

    def buffered(self) -> int:
        """Bytes received and not yet read."""
        return self._end - self._pos

    def message(self, limits: "Limits") -> list[bytearray] | None:
        """The next message's frames when all of it is buffered and within ``limits``, in one
        pass over the buffer; None (nothing consumed) otherwise, for read_frames to read it
        piece by piece and raise what is wrong. Small messages, a batch of short runs or of
        answers, come whole from one ``recv_into``: parsing them in place saves a read call
        and a copy per frame and for the count and lengths (~1 µs of an executor's ~15 per
        run)."""
        buf, pos, end = self._buf, self._pos, self._end
        if end - pos < 12:
            return None
        (n,) = _U32.unpack_from(buf, pos)
        if n == 0 or n > limits.max_frames or n > _LENS_MAX:
            return None
        p = pos + 4 + 8 * n
        if p > end:
            return None
        lens = _lens(n).unpack_from(buf, pos + 4)
        total = sum(lens)
        if p + total > end or lens[0] > limits.max_header or max(lens) > limits.max_frame \
                or total > limits.max_message:
            return None
        out = []
        for size in lens:
            out.append(buf[p : p + size])
            p += size
        self._pos = p
        return out

    def fill(self) -> bool:
        """When nothing is buffered, read what the socket has (waiting for at least a byte) so
        that :meth:`message` can parse it in place; False (nothing read) otherwise."""
        if self._pos != self._end:
            return False
        self._pos, self._end = 0, self._recv_chunk()
        return True

    def _recv_chunk(self) -> int:
        """Read what the socket has into the chunk buffer (made at the first read), from its
        start: the number of bytes, at least one."""
        if not self._buf:
            self._view.release()
            self._buf = bytearray(self._CHUNK)
            self._view = memoryview(self._buf)
        k: int = self._sock.recv_into(self._view, self._CHUNK)
        if k == 0:
            raise CommClosedError("connection closed by peer")
        return k

    def read(self, n: int) -> bytearray:
        pos = self._pos
        if self._end - pos >= n:
            self._pos = pos + n
            return self._buf[pos : pos + n]
        avail = self._end - pos
        # A declared length is a claim: beyond _GROW_FROM the buffer doubles as bytes arrive.
        out = bytearray(min(n, max(avail, self._GROW_FROM)))
        view = memoryview(out)
        view[:avail] = self._view[pos : self._end]
        self._pos = self._end = 0
        got = avail
        while got < n:
            if len(out) - got < self._CHUNK and len(out) < n:
                view.release()
                out.extend(bytes(min(n, max(2 * len(out), got + self._CHUNK)) - len(out)))
                view = memoryview(out)
            if len(out) - got >= self._CHUNK:
                k = self._sock.recv_into(view[got:], len(out) - got)
                if k == 0:
                    raise CommClosedError("connection closed by peer")
                got += k
                continue
            k = self._recv_chunk()
            take = min(k, n - got)
            view[got : got + take] = self._view[:take]
            got += take
            if take < k:
                self._pos, self._end = take, k
        return out


def read_frames(reader: "_Reader", limits: Limits = DEFAULT_LIMITS) -> list[bytearray]:
    """Read one message's frames, checking declared lengths before allocating."""
    whole = reader.message(limits)
    if whole is None and reader.fill():  # waiting for the next message: it comes whole, mostly
        whole = reader.message(limits)
    if whole is not None:
        return whole
    (n,) = _U32.unpack(reader.read(4))
    if n == 0 or n > limits.max_frames:
        raise ProtocolError(f"{n} frames declared (limit {limits.max_frames})")
    lens = struct.unpack(f">{n}Q", reader.read(8 * n))
    total = 0
    for i, size in enumerate(lens):
        limit = limits.max_header if i == 0 else limits.max_frame
        if size > limit:
            raise FrameTooLargeError(f"frame {i} declares {size} bytes (limit {limit})")
        total += size
        if total > limits.max_message:
            raise FrameTooLargeError(f"message declares more than {limits.max_message} bytes")
    return [reader.read(size) if size else bytearray() for size in lens]


class Connection:
    """One handshaken, framed connection. ``send`` is thread-safe; ``recv`` is for one reader."""

    def __init__(self, sock: socket.socket, *, address: str = "",
                 limits: Limits = DEFAULT_LIMITS, receiver: Receiver | None = None) -> None:
        self.sock = sock
        self.address = address
        self.limits = limits
        self._reader = _Reader(receiver if receiver is not None else sock)
        self._send_lock = threading.Lock()
        self._closed = False

    @classmethod
    def connect(cls, address: str, role: int, token: str = "", *, timeout: float = 10.0,
                limits: Limits = DEFAULT_LIMITS,
                tls: ssl.SSLContext | None = None) -> "Connection":
        """Connect to ``host:port`` (a ``tcp://`` prefix is accepted) and do the handshake.

        With ``tls`` the connection is wrapped in TLS first, verifying the server's certificate
        for ``host`` as the context says (the ports of a cluster started with --tls-cert)."""
        host, port = parse_address(address)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except socket.timeout as exc:
            raise TimeoutError(f"could not connect to {address} within {timeout}s") from exc
        except OSError as exc:
            raise ConnectError(f"could not connect to {address}: {exc.strerror or exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                try:
                    sock = tls.wrap_socket(sock, server_hostname=host)
                except (ssl.SSLError, OSError) as exc:
                    raise ConnectError(f"TLS handshake with {address} failed: {exc}") from exc
            client_handshake(sock, role, token, address, min(timeout, HANDSHAKE_TIMEOUT))
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return cls(sock, address=address, limits=limits)

    @property
    def closed(self) -> bool:
        return self._closed

    def settimeout(self, timeout: float | None) -> None:
        """Bound each later ``recv`` (a silent peer raises TimeoutError); None: no bound."""
        self.sock.settimeout(timeout)

    def send(self, header: Header | bytes, frames: Sequence[Buffer] = ()) -> None:
        """Send one message; raises CommClosedError when the connection is gone, and
        FrameTooLargeError (the connection unharmed) for a header the peer would refuse."""
        self._send_parts(encode_frames([self._packed(header), *frames]))

    def send_many(self, messages: Sequence[tuple[Header | bytes, Sequence[Buffer]]]) -> None:
        """Send messages back to back, small ones together in one write."""
        parts: list[Buffer] = []
        for header, frames in messages:
            parts.extend(encode_frames([self._packed(header), *frames]))
        self._send_parts(parts)

    def send_wire(self, data: bytes) -> None:
        """Send whole messages already framed (shoal._speedups.answers_wire made them)."""
        self._send_parts((data,))

    def _packed(self, header: Header | bytes) -> bytes:
        """The encoded header (one already encoded: as it is), refused here when it is over
        the limit: sent, it would make the peer close the connection, and every later call on
        it would fail."""
        if isinstance(header, bytes):
            b, op = header, "encoded"
        else:
            b, op = pack_header(header), header.get("op", "")
        if len(b) > self.limits.max_header:
            raise FrameTooLargeError(
                f"a {op!r} message of {len(b):,} bytes is over the {self.limits.max_header:,}-byte"
                " limit of a message header: pass large arguments as futures of client.scatter(value)")
        return b

    def buffered(self) -> int:
        """Bytes already read from the socket and not yet returned by ``recv``."""
        return self._reader.buffered()

    def _send_parts(self, parts: Sequence[Buffer]) -> None:
        total = sum(len(p) if type(p) is bytes else memoryview(p).nbytes for p in parts)
        with self._send_lock:
            if self._closed:
                raise CommClosedError(f"connection to {self.address or 'peer'} is closed")
            try:
                if total <= (256 << 10) or len(parts) <= 2:
                    self.sock.sendall(b"".join(parts))
                else:
                    for p in parts:
                        self.sock.sendall(p)
            except OSError as exc:
                self._closed = True
                raise CommClosedError(
                    f"connection to {self.address or 'peer'} lost: {exc}") from exc

    def recv(self) -> Message:
        """Read one message: (header, payload frames)."""
        raw, frames = self.recv_raw()
        return self.header_of(raw), frames

    def recv_raw(self) -> tuple[bytearray, list[bytearray]]:
        """Read one message: (its header undecoded, payload frames); :meth:`header_of` decodes
        the header as :meth:`recv` does."""
        try:
            frames = read_frames(self._reader, self.limits)
        except FrameTooLargeError as exc:
            self._reply_error("frame-too-large", str(exc))
            self.close()
            raise
        except ProtocolError as exc:
            self._reply_error("protocol-error", str(exc))
            self.close()
            raise
        except socket.timeout as exc:
            raise TimeoutError(f"no answer from {self.address or 'peer'}") from exc
        except OSError as exc:
            self._closed = True
            raise CommClosedError(f"connection to {self.address or 'peer'} lost: {exc}") from exc
        return frames[0], frames[1:]

    def header_of(self, raw: Buffer) -> Header:
        """The header of a message :meth:`recv_raw` read; one that does not decode is refused
        to the peer and closes the connection (ProtocolError)."""
        try:
            return unpack_header(raw)
        except ProtocolError as exc:
            self._reply_error("protocol-error", str(exc))
            self.close()
            raise

    def _reply_error(self, code: str, message: str) -> None:
        try:
            self.send({"op": "error", "code": code, "message": message})
        except Exception:
            pass

    def close(self) -> None:
        """Close the socket; a blocked ``recv`` in another thread wakes with CommClosedError."""
        if self._closed and self.sock.fileno() < 0:
            return
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def parse_address(address: str) -> tuple[str, int]:
    """``[tcp://]host:port`` → (host, port); IPv6 hosts may be bracketed."""
    addr = address
    if "://" in addr:
        scheme, addr = addr.split("://", 1)
        if scheme not in ("tcp", "shoal"):
            raise ValueError(f"shoal: unsupported address scheme {scheme!r} in {address!r}")
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"shoal: address {address!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)
