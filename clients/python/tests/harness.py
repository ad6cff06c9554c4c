"""A test harness that plays a Go worker's side of the executor protocol (§3.5)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from shoal import _keys, _serialize, _wire
from shoal.executor import runs_message

PKG_ROOT = str(Path(__file__).resolve().parents[1]) + os.pathsep + str(Path(__file__).resolve().parent)


class FakeWorker:
    """Starts ``python -m shoal.executor`` on a socketpair and drives it."""

    def __init__(self, token: str = "t0k") -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ, SHOAL_EXECUTOR_FD=str(theirs.fileno()), SHOAL_EXECUTOR_TOKEN=token,
                   PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "shoal.executor"], env=env,
                                     pass_fds=[theirs.fileno()])
        theirs.close()
        ours.settimeout(30)
        hello = _recv(ours, 9)
        n = struct.unpack(">H", hello[7:9])[0]
        self.hello = hello + _recv(ours, n)
        ours.sendall(_wire.encode_answer(0))
        self.conn = _wire.Connection(ours)
        self.ready, _ = self.conn.recv()
        self.sent_funcs: set[str] = set()
        self.ids = 0

    def run(self, func: Any, *args: Any, deps: Optional[dict[str, Any]] = None,
            key: str = "k", **kwargs: Any) -> tuple[dict[str, Any], list[bytearray]]:
        msg, frames = self.run_message(func, *args, deps=deps, key=key, **kwargs)
        self.conn.send(msg, frames)
        return self.conn.recv()

    def run_message(self, func: Any, *args: Any, deps: Optional[dict[str, Any]] = None,
                    key: str = "k", **kwargs: Any) -> tuple[dict[str, Any], list[Any]]:
        """The run message (header, frames) for a call, with the next id."""
        data = _keys.dumps_callable(func)
        h = _keys.func_hash(data)
        self.ids += 1
        msg: dict[str, Any] = {"op": "run", "id": self.ids, "key": key, "func": h,
                               "payload": _keys.dumps_payload((args, kwargs))}
        if h not in self.sent_funcs:
            msg["func_data"] = data
            self.sent_funcs.add(h)
        items, frames = encode_items(deps or {})
        msg["items"] = items
        return msg, frames

    def send_runs(self, msgs: Sequence[tuple[dict[str, Any], Sequence[Any]]]) -> None:
        """Send run messages as one ``runs`` message, as a worker sends a batch."""
        self.conn.send(*runs_message(msgs))

    def answers(self, n: int) -> list[list[tuple[dict[str, Any], list[bytearray]]]]:
        """The next ``n`` answers, grouped by the message that carried them (a ``dones``
        carries several)."""
        out: list[list[tuple[dict[str, Any], list[bytearray]]]] = []
        while n > 0:
            h, frames = self.conn.recv()
            if h["op"] != "dones":
                out.append([(h, frames)])
                n -= 1
                continue
            assert len(h["replies"]) == len(h["nframes"]) > 1, h
            assert sum(h["nframes"]) == len(frames), h
            group = []
            for reply, k in zip(h["replies"], h["nframes"]):
                group.append((reply, frames[:k]))
                frames = frames[k:]
            out.append(group)
            n -= len(group)
        assert n == 0, "a dones message answered more runs than were sent"
        return out

    def run_task(self, task: dict[str, Any], func_data: dict[str, bytes],
                 values: dict[str, tuple[str, list[Any]]]) -> tuple[dict[str, Any], list[bytearray]]:
        """Run a wire task (as the client built it) with dependency values already encoded."""
        self.ids += 1
        msg: dict[str, Any] = {"op": "run", "id": self.ids, "key": task["key"],
                               "func": task["func"], "payload": task["payload"], "items": []}
        if task["func"] not in self.sent_funcs:
            msg["func_data"] = func_data[task["func"]]
            self.sent_funcs.add(task["func"])
        frames: list[Any] = []
        for d in task.get("deps") or []:
            enc, fr = values[d]
            msg["items"].append({"key": d, "encoding": enc, "nframes": len(fr),
                                 "nbytes": _serialize.nbytes(fr)})
            frames.extend(fr)
        self.conn.send(msg, frames)
        return self.conn.recv()

    def close(self) -> int:
        try:
            self.conn.send({"op": "shutdown"})
        except Exception:
            pass
        code = self.proc.wait(10)
        self.conn.close()
        return code


def encode_items(values: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    items, frames = [], []
    for k, v in values.items():
        enc, fr = _serialize.encode(v)
        items.append({"key": k, "encoding": enc, "nframes": len(fr), "nbytes": _serialize.nbytes(fr)})
        frames.extend(fr)
    return items, frames


def result_of(reply: tuple[dict[str, Any], Sequence[bytearray]]) -> Any:
    h, frames = reply
    assert h["op"] == "done", h
    item = h["items"][0]
    return _serialize.decode(item["encoding"], frames)


def _recv(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out
