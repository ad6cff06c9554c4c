"""A tiny in-process stand-in for the Go scheduler and one worker, speaking the wire protocol.

It exists to test the Client's plumbing without the Go binary: tasks run inline (in the
server thread) through shoal.executor's own run logic; go tasks support ``inc`` and
``row_count`` only.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import pyarrow as pa

from shoal import _serialize, _wire
from shoal.exceptions import CommClosedError
from shoal.executor import Executor


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

    def _serve_messages(self, conn: _wire.Connection) -> None:
        conn.send({"op": "welcome", "client": 1, "version": "fake", "dashboard": "http://x/status"})
        while True:
            try:
                h, frames = conn.recv()
            except Exception:
                return
            self.received.append(h)
            op = h["op"]
            if op == "update_graph":
                self.funcs.update(h.get("funcs") or {})
                for t in h["tasks"]:
                    self._run(t)
                for k in h.get("wanted") or []:
                    self._report(conn, k)
            elif op == "info":
                conn.send({"op": "info_reply", "id": h["id"], "scheduler": self.scheduler_address,
                           "workers": [{"name": "w1", "address": self.data_address, "nthreads": 1,
                                        "memory_limit": 1 << 30}]})
            elif op == "who_has":
                conn.send({"op": "who_has_reply", "id": h["id"], "who_has": {
                    k: [self.data_address] for k in h["keys"] if k in self.store}})
            elif op == "cancel_keys":
                for k in h["keys"]:
                    conn.send({"op": "key_state", "key": k, "state": "cancelled",
                               "error": {"code": "cancelled", "message": "cancelled"}})

    def _report(self, conn: _wire.Connection, key: str) -> None:
        if key in self.store:
            enc, fr = self.store[key]
            conn.send({"op": "key_state", "key": key, "state": "memory", "worker": self.data_address,
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
