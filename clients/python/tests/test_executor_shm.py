"""Shared-memory windows between a worker and its executor (docs/protocol.md §3.5), with the
harness playing the worker: large dependency frames written into a memfd whose descriptor is
passed with SCM_RIGHTS, values built over the mapping, windows reported free and dropped. Also
segments: large results written into sealed memfds passed back with done, and segment-backed
dependencies mapped copy-on-write."""

from __future__ import annotations

import array
import fcntl
import os
import socket
import sys
import time
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from shoal import _keys, _wire
from shoal._refs import Ref
from shoal._serialize import encode
from shoal.executor import SEG_MIN, FdReceiver, Windows

from harness import FakeWorker, result_of

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(os, "memfd_create"),
                                reason="shared-memory windows need Linux")


@pytest.fixture()
def worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWorker]:
    monkeypatch.setenv("SHOAL_EXECUTOR_SHM_IDLE", str(16 << 20))
    w = FakeWorker()
    yield w
    if w.proc.poll() is None:
        w.close()


class Win:
    """A window on the harness's side: a memfd."""

    def __init__(self, wid: int, size: int) -> None:
        self.wid, self.size = wid, size
        self.fd = os.memfd_create("shoal-window")
        os.ftruncate(self.fd, size)
        self.sent = False

    def close(self) -> None:
        os.close(self.fd)


def run_windowed(w: FakeWorker, func: Any, value: Any, win: Win) -> tuple[dict[str, Any], list[bytearray]]:
    """Run func(value) with value's largest frame in win, as a worker does."""
    enc, frames = encode(value)
    sizes = [memoryview(f).nbytes for f in frames]
    big = max(range(len(frames)), key=lambda i: sizes[i])
    os.pwrite(win.fd, memoryview(frames[big]).cast("B"), 0)
    sent = list(frames)
    sent[big] = b""
    data = _keys.dumps_callable(func)
    w.ids += 1
    msg: dict[str, Any] = {"op": "run", "id": w.ids, "key": f"k{w.ids}", "func": _keys.func_hash(data),
                           "func_data": data, "payload": _keys.dumps_payload(((Ref("a"),), {})),
                           "items": [{"key": "a", "encoding": enc, "nframes": len(frames), "nbytes": sum(sizes)}],
                           "shm": [[big, win.wid, sizes[big]]]}
    anc = []
    if not win.sent:
        msg["shm_new"] = [[win.wid, win.size]]
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [win.fd]).tobytes())]
        win.sent = True
    raw = _wire.encode_message(msg, sent)
    n = w.conn.sock.sendmsg([raw], anc)
    if n < len(raw):
        w.conn.sock.sendall(raw[n:])
    return w.conn.recv()


def mapped_windows(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as f:
        return f.read().count("memfd:shoal-window")


def test_ready_announces_windows(worker: FakeWorker) -> None:
    assert worker.ready.get("shm") == 1


def test_ready_without_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_EXECUTOR_SHM", "0")
    w = FakeWorker()
    try:
        assert "shm" not in w.ready
    finally:
        w.close()


def total_and_writable(a: Any) -> tuple[float, bool, int]:
    return float(a.sum()), bool(a.flags.writeable), int(a.nbytes)


def keep_input(a: Any) -> Any:
    return a  # the result refers to the window until it is sent


def arrow_rows(t: Any) -> tuple[int, int]:
    return t.num_rows, t.column("k")[12345].as_py()


def test_numpy_and_arrow_through_a_window(worker: FakeWorker) -> None:
    win = Win(1, 8 << 20)
    try:
        a = np.arange(512 * 1024, dtype=np.float64)  # 4 MiB
        h, out = run_windowed(worker, total_and_writable, a, win)
        assert result_of((h, out)) == (float(a.sum()), True, a.nbytes)
        # nothing refers to the window after the task: it is reported free
        assert h.get("shm_free") == [1]
        assert mapped_windows(worker.proc.pid) == 1

        # the same window again (no descriptor this time), now with an Arrow table
        t = pa.table({"k": np.arange(400_000, dtype=np.int64), "x": np.ones(400_000)})
        h, out = run_windowed(worker, arrow_rows, t, win)
        assert result_of((h, out)) == (400_000, 12345)
        assert h.get("shm_free") == [1]
        assert mapped_windows(worker.proc.pid) == 1

        # a result that refers to the window keeps it busy until the next answer
        b = np.full(300_000, 7.0)
        h, out = run_windowed(worker, keep_input, b, win)
        assert np.array_equal(result_of((h, out)), b)
        assert "shm_free" not in h
        h, out = worker.run(lambda: 1)
        assert h.get("shm_free") == [1]
    finally:
        win.close()


def test_a_batch_of_plain_calls_reports_windows_freed(worker: FakeWorker) -> None:
    """Plain calls batched after a windowed run (which the executor may run in C) are answered,
    and while a window is busy the next answer still reports it free once it is."""
    import operator

    from shoal._refs import literal_packer, literal_payload
    from shoal.executor import runs_message

    def plain_batch(n: int) -> list[tuple[dict[str, Any], list[Any]]]:
        data = _keys.dumps_callable(operator.add)
        fh = _keys.func_hash(data)
        out = []
        for i in range(n):
            worker.ids += 1
            run: dict[str, Any] = {"op": "run", "id": worker.ids, "key": f"p{worker.ids}", "func": fh,
                                   "payload": literal_payload([i, 1], [], literal_packer()), "items": []}
            if fh not in worker.sent_funcs:  # the function once: later runs are compiled ones
                run["func_data"] = data
                worker.sent_funcs.add(fh)
            out.append((run, []))
        return out

    win = Win(1, 8 << 20)
    try:
        a = np.arange(512 * 1024, dtype=np.float64)
        h, _ = run_windowed(worker, total_and_writable, a, win)
        assert h.get("shm_free") == [1]  # mapped, and free
        worker.conn.send(*runs_message(plain_batch(5)))
        answers = [a for g in worker.answers(5) for a in g]
        assert [result_of(x) for x in answers] == [1, 2, 3, 4, 5]
        h, _ = run_windowed(worker, keep_input, np.full(300_000, 7.0), win)
        assert "shm_free" not in h  # the result the executor dropped since held the window
        worker.conn.send(*runs_message(plain_batch(3)))
        answers = [a for g in worker.answers(3) for a in g]
        assert [result_of(x) for x in answers] == [1, 2, 3]
        assert answers[0][0].get("shm_free") == [1]
    finally:
        win.close()


def test_idle_windows_are_dropped(worker: FakeWorker) -> None:
    wins = [Win(i, 12 << 20) for i in (1, 2)]
    try:
        a = np.ones(1 << 20)  # 8 MiB
        h, _ = run_windowed(worker, total_and_writable, a, wins[0])
        assert h.get("shm_free") == [1] and "shm_drop" not in h
        # two free windows of 12 MiB exceed the 16 MiB kept idle: one is unmapped and reported
        h, _ = run_windowed(worker, total_and_writable, a, wins[1])
        assert h.get("shm_free") == [2]
        assert len(h.get("shm_drop", [])) == 1
        assert mapped_windows(worker.proc.pid) == 1
    finally:
        for w in wins:
            w.close()


def test_bad_placement_is_a_task_error(worker: FakeWorker) -> None:
    data = _keys.dumps_callable(total_and_writable)
    msg = {"op": "run", "id": 1, "key": "k", "func": _keys.func_hash(data), "func_data": data,
           "payload": _keys.dumps_payload(((Ref("a"),), {})),
           "items": [{"key": "a", "encoding": "bytes", "nframes": 1, "nbytes": 10}],
           "shm": [[0, 99, 10]]}
    worker.conn.send(msg, [b""])
    h, _ = worker.conn.recv()
    assert h["op"] == "error"
    assert "shared memory" in h["error"]["message"]
    # the executor goes on
    assert result_of(worker.run(lambda: 5)) == 5


def test_windows_free_check_counts_references() -> None:
    w = Windows(None, idle_limit=0)
    import mmap

    w.maps[1] = mmap.mmap(-1, 4096)
    w.busy.add(1)
    view = memoryview(w.maps[1])[:10]
    arr = np.frombuffer(view, dtype=np.uint8)
    reply: dict[str, Any] = {}
    w.report(reply)
    assert reply == {}
    del view
    reply = {}
    w.report(reply)
    assert reply == {}, "the array still refers to the mapping"
    del arr
    reply = {}
    w.report(reply)
    assert reply == {"shm_free": [1], "shm_drop": [1]}
    assert w.maps == {}


# ------------------------------------------------------------------------------------------
# result segments (docs/protocol.md §3.5): the executor writes large results into sealed memfds


@pytest.fixture()
def seg_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeWorker, FdReceiver]]:
    """An executor told to put large results in segments, with a harness that keeps the
    descriptors passed with its answers."""
    monkeypatch.setenv("SHOAL_EXECUTOR_SEGMENTS", "1")
    w = FakeWorker()
    receiver = FdReceiver(w.conn.sock)
    w.conn = _wire.Connection(w.conn.sock, receiver=receiver)
    yield w, receiver
    receiver.close_fds()
    if w.proc.poll() is None:
        w.close()


def big_array(n: int) -> Any:
    a = np.arange(n, dtype=np.float64)
    a[0] = 42.0
    return a


def open_fds_named(pid: int, name: str) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += name in os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return n


def test_large_result_in_a_sealed_segment(seg_worker: tuple[FakeWorker, FdReceiver]) -> None:
    worker, receiver = seg_worker
    assert worker.ready.get("segments") == 1
    h, frames = worker.run(big_array, 1 << 19)  # 4 MiB
    assert h["op"] == "done"
    item = h["items"][0]
    assert item["nbytes"] == 8 * (1 << 19) + len(frames[0])
    assert len(receiver.fds) == 1
    fd = receiver.fds.popleft()
    try:
        want = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & want == want
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
        # the pickle header stays in the message, the buffer is in the segment, aligned
        assert [i for i, _, _ in h["seg"]] == [1] and len(frames[0]) > 0 and len(frames[1]) == 0
        full = list(frames)
        for i, off, n in h["seg"]:
            assert off % 64 == 0
            full[i] = bytearray(os.pread(fd, n, off))
        assert np.array_equal(result_of(({**h}, full)), big_array(1 << 19))
    finally:
        os.close(fd)
    assert open_fds_named(worker.proc.pid, "shoal-result") == 0, "the executor closed its descriptor"

    # small results still come in the message
    h, frames = worker.run(big_array, 1000)
    assert "seg" not in h and not receiver.fds
    assert result_of((h, frames))[0] == 42.0


def test_segment_dependency_is_copy_on_write(seg_worker: tuple[FakeWorker, FdReceiver]) -> None:
    worker, _ = seg_worker
    a = big_array(1 << 19)
    enc, frames = encode(a)
    raw = memoryview(frames[1]).cast("B")
    fd = os.memfd_create("shoal-test-seg", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 4096 + raw.nbytes)
        os.pwrite(fd, raw, 4096)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        data = _keys.dumps_callable(mutate_sum)
        msg: dict[str, Any] = {"op": "run", "id": 1, "key": "m", "func": _keys.func_hash(data), "func_data": data,
                               "payload": _keys.dumps_payload(((Ref("a"),), {})),
                               "items": [{"key": "a", "encoding": enc, "nframes": 2, "nbytes": raw.nbytes}],
                               "seg": [[1, 0, 4096, raw.nbytes]]}
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
        body = _wire.encode_message(msg, [frames[0], b""])
        n = worker.conn.sock.sendmsg([body], anc)
        worker.conn.sock.sendall(body[n:])
        h, out = worker.conn.recv()
        assert result_of((h, out)) == (-1.0 * a.size, True)
        # the task wrote into private pages: the segment still holds the value
        assert os.pread(fd, raw.nbytes, 4096) == raw.tobytes()
        # unmapped, and the descriptor the mapping keeps closed, once the answer went (by the
        # executor's unmapper thread, beside its work)
        deadline = time.monotonic() + 10
        while mapped_segment_count(worker.proc.pid) or open_fds_named(worker.proc.pid, "shoal-test-seg"):
            assert time.monotonic() < deadline, "the segment stayed mapped or open after the task let go of it"
            time.sleep(0.005)
    finally:
        os.close(fd)


def mutate_sum(x: Any) -> tuple[float, bool]:
    x[:] = -1.0
    return float(x.sum()), bool(x.flags.writeable)


def mapped_segment_count(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as f:
        return f.read().count("memfd:shoal-test-seg")


def big_frame(n: int) -> Any:
    return pd.DataFrame({"i": np.arange(n, dtype=np.int64), "x": np.arange(n) * 0.5,
                         "s": [f"s{i % 7}" for i in range(n)]})


def test_large_arrow_result_is_written_straight_into_its_segment(
        seg_worker: tuple[FakeWorker, FdReceiver]) -> None:
    """An Arrow-encoded result (a pandas DataFrame here) of at least SEG_MIN goes into its
    segment as one IPC stream at offset 0 (the executor writes it there from Arrow's buffers,
    without a stream in memory first; the wire form is the same as for any one-frame result):
    the message carries an empty frame, the segment the stream that decodes to the value."""
    worker, receiver = seg_worker
    h, frames = worker.run(big_frame, 200_000)
    assert h["op"] == "done", h
    item = h["items"][0]
    assert item["encoding"] == "arrow" and item["nframes"] == 1
    assert len(receiver.fds) == 1
    fd = receiver.fds.popleft()
    try:
        assert h["seg"] == [[0, 0, item["nbytes"]]] and len(frames[0]) == 0
        assert os.fstat(fd).st_size == item["nbytes"] >= SEG_MIN
        want = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & want == want
        got = result_of((h, [bytearray(os.pread(fd, item["nbytes"], 0))]))
        pd.testing.assert_frame_equal(got, big_frame(200_000))
    finally:
        os.close(fd)
    assert open_fds_named(worker.proc.pid, "shoal-result") == 0, "the executor closed its descriptor"

    # a small frame still comes in the message, as the same encoding
    h, frames = worker.run(big_frame, 100)
    assert "seg" not in h and not receiver.fds and h["items"][0]["encoding"] == "arrow"
    pd.testing.assert_frame_equal(result_of((h, frames)), big_frame(100))
