"""A stand-in for `python -m shoal.executor` used by the worker's tests.

It speaks docs/protocol.md §3.5 (handshake as role executor on the inherited socket, msgpack
headers, payload frames) but, instead of unpickling callables, treats func_data as the name of
a canned behaviour:

  echo    result (encoding bytes) = payload followed by every dependency frame
  raise   answer error {code task-error, type ValueError}
  crash   die of SIGSEGV
  exit3   exit with status 3
  extra   like echo, but answered in a dones message with a second answer to a run never sent
"""

import os
import signal
import socket
import struct
import sys

import msgpack


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def recv_msg(sock):
    (n,) = struct.unpack(">I", recv_exact(sock, 4))
    lens = struct.unpack(">%dQ" % n, recv_exact(sock, 8 * n))
    frames = [recv_exact(sock, ln) for ln in lens]
    return msgpack.unpackb(frames[0], raw=False), frames[1:]


def send_msg(sock, header, frames=()):
    frames = [msgpack.packb(header, use_bin_type=True)] + list(frames)
    out = struct.pack(">I", len(frames)) + b"".join(struct.pack(">Q", len(f)) for f in frames)
    sock.sendall(out + b"".join(frames))


def main():
    sock = socket.socket(fileno=int(os.environ["SHOAL_EXECUTOR_FD"]))
    token = os.environ["SHOAL_EXECUTOR_TOKEN"].encode()
    sock.sendall(b"SHOL" + struct.pack(">HBH", 1, 4, len(token)) + token)
    magic, _version, status, mlen = struct.unpack(">4sHBH", recv_exact(sock, 9))
    reason = recv_exact(sock, mlen)
    if magic != b"SHOL" or status != 0:
        sys.exit("handshake refused: %r" % reason)
    send_msg(sock, {"op": "ready", "pid": os.getpid(), "python": sys.version.split()[0]})
    print("fake executor %d ready" % os.getpid(), file=sys.stderr, flush=True)
    funcs = {}
    while True:
        try:
            msg, frames = recv_msg(sock)
        except EOFError:
            return
        if msg["op"] == "shutdown":
            return
        if msg["op"] != "run":
            send_msg(sock, {"op": "error", "code": "unknown-op", "message": msg["op"]})
            continue
        if msg.get("func_data"):
            funcs[msg["func"]] = msg["func_data"].decode()
        behaviour = funcs.get(msg["func"])
        if behaviour == "echo":
            result = msg.get("payload", b"") + b"".join(frames)
            item = {"key": msg["key"], "encoding": "bytes", "nframes": 1, "nbytes": len(result)}
            send_msg(sock, {"op": "done", "id": msg["id"], "items": [item]}, [result])
        elif behaviour == "extra":
            result = msg.get("payload", b"")
            item = {"key": msg["key"], "encoding": "bytes", "nframes": 1, "nbytes": len(result)}
            bogus = {"op": "done", "id": msg["id"] + 1000, "items": [dict(item, key="bogus")]}
            send_msg(sock, {"op": "dones", "replies": [{"op": "done", "id": msg["id"], "items": [item]}, bogus],
                            "nframes": [1, 1]}, [result, result])
        elif behaviour == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif behaviour == "exit3":
            os._exit(3)
        else:
            err = {"code": "task-error", "type": "ValueError",
                   "message": "behaviour %r" % behaviour, "traceback": "fake traceback"}
            send_msg(sock, {"op": "error", "id": msg["id"], "error": err})


if __name__ == "__main__":
    main()
