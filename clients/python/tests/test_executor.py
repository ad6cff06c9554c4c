"""The real executor process (python -m shoal.executor) driven by a harness playing the worker."""

from __future__ import annotations

import operator
import os
import pickle
import threading
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from shoal import executor
from shoal._refs import Ref, literal_packer, literal_payload
from shoal._serialize import decode, encode
from shoal.exceptions import RemoteTraceback, error_from_wire
from shoal.executor import runs_message

from harness import FakeWorker, result_of


def inc(x: int) -> int:
    return x + 1


def boom(x: int) -> int:
    return 1 // x


class CustomError(Exception):
    pass


def raise_custom() -> None:
    raise CustomError("custom failure")


def test_handshake_and_ready(worker: FakeWorker) -> None:
    assert worker.hello == b"SHOL\x00\x01\x04\x00\x03t0k"
    assert worker.ready["op"] == "ready"
    assert worker.ready["pid"] == worker.proc.pid
    assert worker.ready["python"].count(".") == 2


def test_run_with_refs_and_cache(worker: FakeWorker) -> None:
    h, _ = worker.run(inc, 41, key="inc-1")
    assert h["items"][0]["key"] == "inc-1" and h["items"][0]["encoding"] == "msgpack"
    assert result_of((h, _)) == 42
    # second run: func sent by hash only
    assert result_of(worker.run(inc, Ref("a"), deps={"a": 9})) == 10
    nested = worker.run(lambda d, y=0: d["x"][1] + y, {"x": [0, Ref("a")]}, y=Ref("b"),
                        deps={"a": 5, "b": 7})
    assert result_of(nested) == 12
    assert result_of(worker.run(lambda x: x, None)) is None


def test_a_batch_of_runs_is_answered_together(worker: FakeWorker, tmp_path: Any) -> None:
    """Runs the worker writes together (a batch of short tasks) are answered with one write:
    the answer to the first arrives only after the last has run, and all come in order."""
    marks = [tmp_path / f"ran-{i}" for i in range(3)]

    def mark(path: str, i: int) -> int:
        open(path, "w").close()
        return i

    msgs = [worker.run_message(mark, str(m), i, key=f"mark-{i}") for i, m in enumerate(marks)]
    worker.conn.send_many(msgs)
    answers = [worker.conn.recv()]
    assert all(m.exists() for m in marks)  # the first answer waited for the last run
    answers += [worker.conn.recv() for _ in msgs[1:]]
    assert [h["id"] for h, _ in answers] == [h["id"] for h, _ in msgs]
    assert [result_of(a) for a in answers] == [0, 1, 2]
    # a run on its own is answered at once, as before
    assert result_of(worker.run(inc, 1)) == 2


def test_a_runs_message_is_answered_with_dones(worker: FakeWorker) -> None:
    """A batch sent as one ``runs`` message is run in order and answered with one ``dones``
    (an error among them included); from then on held answers to plain runs go as ``dones``
    too, and a run alone is still answered alone."""
    assert worker.ready["batch"] == 1
    literal = worker.run_message(operator.add, deps={"d": 41}, key="e")  # as client.get sends a plain call
    literal[0]["payload"] = literal_payload(["d", 1], [0], literal_packer())
    msgs = [worker.run_message(inc, 1, key="a"), worker.run_message(boom, 0, key="b"),
            worker.run_message(inc, Ref("d"), deps={"d": 41}, key="c"), literal,
            worker.run_message(lambda n: list(range(n)), 3, key="f")]
    worker.send_runs(msgs)
    [group] = worker.answers(5)
    assert [h["id"] for h, _ in group] == [h["id"] for h, _ in msgs]
    assert [h["op"] for h, _ in group] == ["done", "error", "done", "done", "done"]
    assert group[1][0]["error"]["type"].endswith("ZeroDivisionError") and group[1][1] == []
    assert [result_of(group[i]) for i in (0, 2, 3, 4)] == [2, 42, 42, [0, 1, 2]]
    assert [h["items"][0]["key"] for h, _ in group if h["op"] == "done"] == ["a", "c", "e", "f"]
    assert all(h["start"] <= h["stop"] for h, _ in group if h["op"] == "done")
    msgs = [worker.run_message(inc, i, key=f"p{i}") for i in range(3)]
    worker.conn.send_many(msgs)
    [group] = worker.answers(3)
    assert [result_of(a) for a in group] == [1, 2, 3]
    assert result_of(worker.run(inc, 5)) == 6


def test_large_answers_leave_the_dones(worker: FakeWorker) -> None:
    """An answer with more than 64 KiB of frames goes on its own, in its place."""
    big = b"x" * (100 << 10)
    msgs = [worker.run_message(inc, 1), worker.run_message(inc, 2),
            worker.run_message(lambda b: b, big), worker.run_message(inc, 3)]
    worker.send_runs(msgs)
    groups = worker.answers(4)
    assert [len(g) for g in groups] == [2, 1, 1]
    answers = [a for g in groups for a in g]
    assert [h["id"] for h, _ in answers] == [h["id"] for h, _ in msgs]
    assert [result_of(a) for a in answers] == [2, 3, big, 4]


def test_malformed_runs_are_refused(worker: FakeWorker) -> None:
    """A runs message whose counts do not cover its frames is answered with a protocol error,
    and the executor goes on serving."""
    header, frames = runs_message([worker.run_message(inc, Ref("d"), deps={"d": 1}), worker.run_message(inc, 2)])
    worker.conn.send(dict(header, nframes=[0, 0]), frames)
    h, _ = worker.conn.recv()
    assert h["op"] == "error" and h["code"] == "protocol-error" and "frames" in h["message"]
    entry = header["runs"][1]
    for bad in ({"op": "shutdown"}, entry[:5], [*entry[:5], [1]], [*entry[:5], {"op": "shutdown"}],
                [*entry[:5], {"timeout": "soon"}], ["1", *entry[1:]], [entry[0], 7, *entry[2:]]):
        worker.conn.send(dict(header, runs=[header["runs"][0], bad], nframes=[1, 0]), frames[:1])
        h, _ = worker.conn.recv()
        assert h["op"] == "error" and h["code"] == "protocol-error"
    worker.sent_funcs.clear()  # the refused runs carried the function: it was never loaded
    assert result_of(worker.run(inc, 7)) == 8


def test_a_run_seceding_in_a_runs_batch_leaves_the_rest_to_be_run() -> None:
    """When a run of a ``runs`` batch secedes, the thread that takes over serving runs the
    batch's remaining runs: the worker gets the earlier answers, the ``secede``, then theirs."""
    worker = FakeWorker()
    try:
        def seceding() -> int:
            from shoal import secede
            secede()
            return 0

        msgs = [worker.run_message(inc, 1), worker.run_message(seceding, key="s"),
                worker.run_message(inc, 2), worker.run_message(inc, 3)]
        worker.send_runs(msgs)
        answers = [a for g in worker.answers(4) for a in g]
        assert [h["id"] for h, _ in answers] == [h["id"] for h, _ in msgs]
        assert [h["op"] for h, _ in answers] == ["done", "secede", "done", "done"]
        assert [result_of(answers[i]) for i in (0, 2, 3)] == [2, 3, 4]
        assert result_of(worker.run(inc, 9)) == 10
    finally:
        worker.close()


def test_encodings(worker: FakeWorker) -> None:
    arr = np.arange(1000.0)
    h, frames = worker.run(lambda a: a * 2, Ref("a"), deps={"a": arr})
    assert h["items"][0]["encoding"] == "pickle" and h["items"][0]["nframes"] == 2
    out = result_of((h, frames))
    np.testing.assert_array_equal(out, arr * 2)
    out[0] = 5  # writable

    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}).set_index("b")
    h, frames = worker.run(lambda d: d.assign(c=d.a * 2), Ref("d"), deps={"d": df})
    assert h["items"][0]["encoding"] == "arrow"
    pd.testing.assert_frame_equal(result_of((h, frames)), df.assign(c=df.a * 2))

    table = pa.table({"x": [1, 2, 3]})
    h, frames = worker.run(lambda t: t.num_rows, Ref("t"), deps={"t": table})
    assert result_of((h, frames)) == 3
    h, frames = worker.run(lambda: pa.table({"y": [1.5]}))
    assert h["items"][0]["encoding"] == "arrow"
    assert isinstance(result_of((h, frames)), pa.Table)
    assert result_of(worker.run(lambda b: b + b"!", b"hi")) == b"hi!"
    assert result_of(worker.run(lambda: np.float64(1.5))) == 1.5
    # scalars: msgpack when it can carry them, bytes as they are, anything else pickled
    for value, encoding in ((7, "msgpack"), (None, "msgpack"), ("é", "msgpack"), (2.5, "msgpack"),
                            (b"raw", "bytes"), (1 << 70, "pickle"), (-(1 << 64), "pickle"), ("\udc80", "pickle")):
        h, frames = worker.run(lambda v: v, value)
        assert h["items"][0]["encoding"] == encoding, (value, h)
        assert result_of((h, frames)) == value


def test_task_error(worker: FakeWorker) -> None:
    h, _ = worker.run(boom, 0)
    assert h["op"] == "error" and h["id"] == worker.ids
    err = h["error"]
    assert err["code"] == "task-error"
    assert err["type"] == "builtins.ZeroDivisionError"
    assert "in boom" in err["traceback"] and "ZeroDivisionError" in err["traceback"]
    assert "shoal/executor.py" not in err["traceback"]
    exc = error_from_wire(err)
    assert isinstance(exc, ZeroDivisionError)
    assert isinstance(exc.__cause__, RemoteTraceback)

    h, _ = worker.run(raise_custom)
    exc = error_from_wire(h["error"])
    assert type(exc).__name__ == "CustomError" and str(exc) == "custom failure"


def test_unpicklable_exception(worker: FakeWorker) -> None:
    def bad() -> None:
        class Local(Exception):
            def __reduce__(self):  # type: ignore[no-untyped-def]
                raise TypeError("nope")
        raise Local("weird")

    h, _ = worker.run(bad)
    assert "exc" not in h["error"]
    exc = error_from_wire(h["error"])
    assert type(exc).__name__ == "RemoteError" and "Local" in str(exc) and "weird" in str(exc)


def test_executor_exits_on_crash_and_on_close() -> None:
    w = FakeWorker()
    w.conn.send({"op": "run", "id": 1, "key": "x", "func": "0" * 64,
                 "func_data": b"", "payload": pickle.dumps(((), {}))})
    h, _ = w.conn.recv()
    assert h["op"] == "error"  # unknown function hash: an error, not a crash
    data = __import__("cloudpickle").dumps(lambda: os._exit(3))
    import hashlib
    w.conn.send({"op": "run", "id": 2, "key": "y", "func": hashlib.sha256(data).hexdigest(),
                 "func_data": data, "payload": pickle.dumps(((), {}))})
    assert w.proc.wait(10) == 3
    w.conn.close()

    w = FakeWorker()
    w.conn.close()  # the worker went away: the executor exits
    assert w.proc.wait(10) == 0


def test_serialize_round_trips() -> None:
    for v in [1, -5, 2**63, 1.5, "s", None, True, b"b", [1, 2], {"a": 1}, (1, 2), {1, 2}]:
        enc, frames = encode(v)
        assert decode(enc, frames) == v, v
    assert encode(1)[0] == "msgpack" and encode(2**70)[0] == "pickle"
    assert encode([1, 2])[0] == "pickle"  # lists keep their type: pickled


class _Box:
    """A user object holding a Ref in an attribute (not a container the client walks)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner


def test_load_payload_substitutes_refs_while_unpickling() -> None:
    from shoal.executor import load_payload

    payload = pickle.dumps(((Ref("a"), [Ref("b"), {"k": (Ref("a"),)}], _Box(Ref("b")), "Ref"),
                            {"kw": {Ref("c")}.pop()}), protocol=5)
    a, b, c = object(), [1, 2], "three"
    args, kwargs = load_payload(payload, {"a": a, "b": b, "c": c})
    assert args[0] is a
    assert args[1][0] is b and args[1][1]["k"][0] is a
    assert args[2].inner is b
    assert args[3] == "Ref"
    assert kwargs == {"kw": "three"}
    # no dependencies: a plain load, Refs left alone
    args, kwargs = load_payload(pickle.dumps(((Ref("z"),), {}), protocol=5), {})
    assert args == (Ref("z"),) and kwargs == {}
    assert load_payload(None, {}) == ((), {})
    with pytest.raises(KeyError):
        load_payload(payload, {"a": a})


def test_trim_when_idle_trims_once_per_idle_spell() -> None:
    """All the kept heap is given back once no run has started or ended for the idle time,
    once per idle spell and not before anything ran; while runs keep coming, only the holes
    are, every idle time, keeping the top."""
    class Ex:
        ran = 0

    calls: list[int] = []
    ex, stop = Ex(), threading.Event()
    executor.trim_when_idle(ex, 0.5, keep=123, trim=calls.append, stop=stop)  # type: ignore[arg-type]
    try:
        time.sleep(1)
        assert calls == [], "nothing ran: nothing to give back"
        ex.ran = time.time_ns()
        deadline = time.monotonic() + 20
        while not calls:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(1)
        assert calls == [0], "one trim per idle spell"
        for _ in range(200):  # busy for two seconds: a run starts every 10 ms
            ex.ran = time.time_ns()
            time.sleep(0.01)
        busy = calls[1:]
        assert busy and set(busy) == {123}, f"only the holes while busy: {calls}"
        while calls[-1] != 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        stop.set()


def test_trim_when_idle_gives_holes_back_sooner_than_the_idle_time() -> None:
    """A busy executor gives back its holes every ``holes_every`` seconds, not only once per
    idle time: the idle time is long (a minute), and the worker counts what the executor keeps
    against its memory limit."""
    class Ex:
        ran = 0

    calls: list[int] = []
    ex, stop = Ex(), threading.Event()
    executor.trim_when_idle(ex, 3600, keep=7, trim=calls.append, stop=stop,  # type: ignore[arg-type]
                            holes_every=0.2)
    try:
        deadline = time.monotonic() + 20
        while len(calls) < 2:  # busy: a run starts every 10 ms
            assert time.monotonic() < deadline, f"holes not given back while busy: {calls}"
            ex.ran = time.time_ns()
            time.sleep(0.01)
        assert set(calls) == {7}, f"only the holes, never all of it, while busy: {calls}"
    finally:
        stop.set()


def test_start_trimming_takes_the_worker_settings_out_of_the_environment() -> None:
    """The glibc variables the worker set go out of the tasks' environment with the trimmer's
    own; a user's own MALLOC_ variable (no SHOAL_EXECUTOR_HEAP_KEEP) stays; a bad idle time is
    refused (logged) rather than spinning or killing the executor."""
    class Ex:
        ran = 0

    env = {"SHOAL_EXECUTOR_TRIM_IDLE": "nan", "SHOAL_EXECUTOR_HEAP_KEEP": "64", "MALLOC_MMAP_MAX_": "0",
           "MALLOC_TOP_PAD_": "64", "MALLOC_TRIM_THRESHOLD_": "64", "PATH": "/bin"}
    assert executor.start_trimming(Ex(), env) is None  # type: ignore[arg-type]
    assert env == {"PATH": "/bin"}
    for bad in ("0", "-1", "inf", "10s"):
        assert executor.start_trimming(Ex(), {"SHOAL_EXECUTOR_TRIM_IDLE": bad}) is None  # type: ignore[arg-type]
    user = {"MALLOC_ARENA_MAX": "2"}
    assert executor.start_trimming(Ex(), user) is None  # type: ignore[arg-type]
    assert user == {"MALLOC_ARENA_MAX": "2"}
