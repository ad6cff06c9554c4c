"""Framing and handshake, byte for byte as docs/protocol.md describes them."""

from __future__ import annotations

import os
import socket
import struct
import threading

import msgpack
import pytest

from shoal import _wire
from shoal.exceptions import (
    AuthenticationError,
    CommClosedError,
    ConnectError,
    FrameTooLargeError,
    HandshakeError,
    ProtocolError,
)


def test_hello_bytes() -> None:
    assert _wire.encode_hello(_wire.ROLE_CLIENT, "tok") == b"SHOL\x00\x01\x01\x00\x03tok"
    assert _wire.encode_hello(_wire.ROLE_EXECUTOR) == b"SHOL\x00\x01\x04\x00\x00"
    assert _wire.decode_hello(b"SHOL\x00\x01\x04\x00\x02ab") == (1, 4, "ab")
    with pytest.raises(ValueError):
        _wire.encode_hello(1, "x" * 1025)


def test_answer_bytes() -> None:
    assert _wire.encode_answer(0) == b"SHOL\x00\x01\x00\x00\x00"
    assert _wire.encode_answer(3, "no") == b"SHOL\x00\x01\x03\x00\x02no"


def test_message_layout() -> None:
    msg = _wire.encode_message({"op": "x"}, [b"abc", b""])
    header = msgpack.packb({"op": "x"})
    expect = struct.pack(">IQQQ", 3, len(header), 3, 0) + header + b"abc"
    assert msg == expect


def _pair() -> tuple[_wire.Connection, _wire.Connection]:
    a, b = socket.socketpair()
    return _wire.Connection(a), _wire.Connection(b)


def test_round_trip_small_and_big() -> None:
    a, b = _pair()
    big = bytes(range(256)) * 8000  # 2 MB: sent frame by frame
    t = threading.Thread(target=lambda: [a.send({"op": "m", "i": i}, [b"x" * i, big]) for i in range(50)])
    t.start()
    for i in range(50):
        h, frames = b.recv()
        assert h == {"op": "m", "i": i}
        assert bytes(frames[0]) == b"x" * i and bytes(frames[1]) == big
        assert isinstance(frames[1], bytearray)  # writable: numpy arrays from it are writable
    t.join()
    a.close()
    with pytest.raises(CommClosedError):
        b.recv()


def test_limits_checked_before_allocating() -> None:
    a, b = socket.socketpair()
    conn = _wire.Connection(b, limits=_wire.Limits(max_frame=10))
    a.sendall(struct.pack(">IQQ", 2, 3, 1 << 40))
    with pytest.raises(FrameTooLargeError):
        conn.recv()
    # the peer is told why before the connection closes
    rest = a.recv(1 << 16)
    assert b"frame-too-large" in rest


def test_zero_frames_and_bad_header() -> None:
    a, b = socket.socketpair()
    a.sendall(struct.pack(">I", 0))
    with pytest.raises(ProtocolError):
        _wire.Connection(b).recv()
    a, b = socket.socketpair()
    a.sendall(_wire.encode_message({"noop": 1}))
    with pytest.raises(ProtocolError):
        _wire.Connection(b).recv()


class _Feed:
    """A receiver that hands out a byte string ``step`` bytes per call."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step = data, step

    def recv_into(self, view: memoryview, n: int) -> int:
        k = min(n, self.step, len(self.data))
        view[:k] = self.data[:k]
        self.data = self.data[k:]
        return k

    def recv(self, n: int) -> bytes:  # pragma: no cover - _Reader reads with recv_into
        raise AssertionError


def test_buffered_messages_parse_in_place_as_read_piecewise() -> None:
    """Messages that arrive whole in the reader's buffer are parsed in place
    (``_Reader.message``); the same bytes a byte at a time take the piecewise reads: the
    frames are the same, and the same limits hold either way."""
    msgs = [({"op": "run", "id": i}, [b"x" * i, b"", bytes(range(i % 256))]) for i in range(40)]
    msgs.append(({"op": "many"}, [b"f%d" % j for j in range(20)]))  # more frames than parsed in place
    stream = b"".join(_wire.encode_message(h, f) for h, f in msgs)
    for step in (len(stream), 1):
        reader = _wire._Reader(_Feed(stream, step))
        for h, f in msgs:
            frames = _wire.read_frames(reader)
            assert msgpack.unpackb(frames[0]) == h
            assert [bytes(x) for x in frames[1:]] == f
            assert all(isinstance(x, bytearray) for x in frames)
        assert reader.buffered() == 0

    big = _wire.encode_message({"op": "x"}, [b"y" * 100])
    for step in (len(big), 1):
        with pytest.raises(FrameTooLargeError):
            _wire.read_frames(_wire._Reader(_Feed(big, step)), _wire.Limits(max_frame=99))
        with pytest.raises(FrameTooLargeError):
            _wire.read_frames(_wire._Reader(_Feed(big, step)), _wire.Limits(max_header=2))
        with pytest.raises(FrameTooLargeError):
            _wire.read_frames(_wire._Reader(_Feed(big, step)), _wire.Limits(max_message=100))
        with pytest.raises(ProtocolError):
            _wire.read_frames(_wire._Reader(_Feed(big, step)), _wire.Limits(max_frames=1))
        zero = struct.pack(">I", 0) + bytes(16)
        with pytest.raises(ProtocolError):
            _wire.read_frames(_wire._Reader(_Feed(zero, step)))


def _server(status: int, message: str = "") -> tuple[str, threading.Thread, list[bytes]]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got: list[bytes] = []

    def run() -> None:
        c, _ = srv.accept()
        hello = c.recv(9)
        n = struct.unpack(">H", hello[7:9])[0]
        got.append(hello + (c.recv(n) if n else b""))
        c.sendall(_wire.encode_answer(status, message))
        if status == 0:
            c.sendall(_wire.encode_message({"op": "welcome", "client": 1}))
        c.close()
        srv.close()

    t = threading.Thread(target=run)
    t.start()
    return f"127.0.0.1:{srv.getsockname()[1]}", t, got


def test_handshake_ok_and_refusals() -> None:
    addr, t, got = _server(0)
    conn = _wire.Connection.connect(addr, _wire.ROLE_CLIENT, "secret", timeout=5)
    assert conn.recv()[0]["op"] == "welcome"
    t.join()
    assert got[0] == b"SHOL\x00\x01\x01\x00\x06secret"

    addr, t, _ = _server(3, "authentication failed: wrong token")
    with pytest.raises(AuthenticationError, match="wrong token"):
        _wire.Connection.connect(addr, _wire.ROLE_CLIENT, "bad", timeout=5)
    t.join()

    addr, t, _ = _server(4, "role client is not served on this port")
    with pytest.raises(HandshakeError, match="not served"):
        _wire.Connection.connect(addr, _wire.ROLE_CLIENT, timeout=5)
    t.join()


def test_connect_refused_is_clear() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectError, match="could not connect"):
        _wire.Connection.connect(f"127.0.0.1:{port}", _wire.ROLE_CLIENT, timeout=2)


def test_not_a_shoal_port() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run() -> None:
        c, _ = srv.accept()
        c.recv(100)
        c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        c.close()

    t = threading.Thread(target=run)
    t.start()
    with pytest.raises(HandshakeError, match="Shoal"):
        _wire.Connection.connect(f"127.0.0.1:{srv.getsockname()[1]}", _wire.ROLE_CLIENT, timeout=5)
    t.join()
    srv.close()


def test_parse_address() -> None:
    assert _wire.parse_address("tcp://10.0.0.1:8786") == ("10.0.0.1", 8786)
    assert _wire.parse_address("[::1]:1") == ("::1", 1)
    with pytest.raises(ValueError):
        _wire.parse_address("nope")


def test_reader_grows_large_frames_as_bytes_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A declared length is not allocated up front: the buffer grows with what arrives, and
    the bytes come out intact across the growth steps."""
    monkeypatch.setattr(_wire._Reader, "_GROW_FROM", 1000)
    a, b = socket.socketpair()
    data = os.urandom(3_000_017)
    t = threading.Thread(target=lambda: (a.sendall(b"xy" + data + b"tail"), a.close()))
    t.start()
    r = _wire._Reader(b)
    assert bytes(r.read(2)) == b"xy"
    assert bytes(r.read(len(data))) == data
    assert bytes(r.read(4)) == b"tail"
    t.join()
    b.close()
    # a frame declared far beyond what is sent costs what arrived, then fails cleanly
    a, b = socket.socketpair()
    a.sendall(b"z" * 10)
    a.close()
    with pytest.raises(_wire.CommClosedError):
        _wire._Reader(b).read(1 << 40)
    b.close()
