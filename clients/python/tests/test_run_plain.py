"""The executor's compiled run of a plain call (``shoal._speedups.run_plain``, taken by
``Executor.run_entry``) against its Python path: the same answers, the same errors, and the
Python path for everything it does not take.

``make test`` sets ``SHOAL_REQUIRE_SPEEDUPS=1``: there the extension must have been built;
elsewhere these tests skip without it.
"""

from __future__ import annotations

import os
import random
import struct
import sys
from typing import Any, Callable, Iterator

import msgpack
import pytest

from shoal import _preload, _refs, _serialize, _worker, executor
from shoal.executor import Executor

from harness import FakeWorker, result_of

if executor._run_plain is None:
    if os.environ.get("SHOAL_REQUIRE_SPEEDUPS"):
        raise RuntimeError("shoal._speedups is not built (SHOAL_REQUIRE_SPEEDUPS is set)")
    pytest.skip("shoal._speedups is not built", allow_module_level=True)

FH = "f" * 64
PACK = _refs.literal_packer()


def both(fn: Callable[..., Any], entry: list[Any], frames: list[Any],
         monkeypatch: pytest.MonkeyPatch) -> tuple[tuple[Any, Any], tuple[Any, Any], int]:
    """run_entry's answer through the compiled path and through the Python one, and how many
    runs the compiled path took (0 or 1)."""
    taken = 0
    real = executor._run_plain

    def counting(*a: Any) -> Any:
        nonlocal taken
        r = real(*a)  # type: ignore[misc]
        taken += r is not None
        return r

    ex = Executor(None)  # type: ignore[arg-type]
    ex.funcs[FH] = fn
    monkeypatch.setattr(executor, "_run_plain", counting)
    compiled = ex.run_entry(list(entry), list(frames))
    monkeypatch.setattr(executor, "_run_plain", None)
    python = ex.run_entry(list(entry), list(frames))
    monkeypatch.setattr(executor, "_run_plain", real)
    return compiled, python, taken


def entry(args: list[Any], refs: list[int] | None = None, items: list[Any] | None = None,
          payload: bytes | None = None, extra: Any = None) -> list[Any]:
    return [7, "k-1", FH, payload if payload is not None else _refs.literal_payload(args, refs or [], PACK),
            items or [], extra]


def item(key: str, enc: str = "msgpack", nframes: int = 1) -> list[Any]:
    return [key, enc, nframes, 0]


def same_error(a: tuple[Any, Any], b: tuple[Any, Any]) -> None:
    """Two error answers that say the same (a pickled exception differs only in its object)."""
    (ha, fa), (hb, fb) = a, b
    assert ha["op"] == hb["op"] == "error" and fa == fb == []
    ea, eb = ha["error"], hb["error"]
    assert {k: v for k, v in ea.items() if k != "exc"} == {k: v for k, v in eb.items() if k != "exc"}


def concat(*a: Any) -> tuple[Any, ...]:
    return a


def first(*a: Any) -> Any:
    return a[0] if a else None


def literals(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 8)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
                           2**64 - 1, -1, -32, -33, -128, -129, -32768, -32769, -2**31, -2**31 - 1, -2**63])
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind == 3:
        return "".join(rng.choice("aé€𝄞 \x00") for _ in range(rng.choice([0, 1, 31, 32, 300])))
    if kind == 4:
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 5, 300])))
    if kind in (5, 6, 7):
        return rng.randrange(-(2**40), 2**40)
    return [literals(rng, depth + 1) for _ in range(rng.randrange(20))]


def test_literal_runs_answer_as_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(19)
    for fn in (first, concat):
        for _ in range(300):
            args = [literals(rng) for _ in range(rng.randrange(1, 6))]
            deps = {f"('x', {i})": literals(rng) for i in range(rng.randrange(4))}
            refs = []
            for i, name in enumerate(deps):
                if i < len(args):
                    args[i] = name
                    refs.append(i)
            items = [item(name) for name in deps]
            frames = [msgpack.packb(v, use_bin_type=True) for v in deps.values()]
            compiled, python, taken = both(fn, entry(args, refs, items), frames, monkeypatch)
            assert taken == 1, args
            assert compiled == python, (args, deps)


def test_a_scalar_result_is_answered_in_msgpack(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in (None, True, 0, -2**63, 2**64 - 1, 1.5, "é", ""):
        (h, frames), python, taken = both(lambda v: v, entry([value]), [], monkeypatch)
        assert taken == 1 and (h, frames) == python
        assert h == {"op": "done", "id": 7, "items": [{"key": "k-1", "encoding": "msgpack", "nframes": 1,
                                                       "nbytes": len(frames[0])}]}
        assert msgpack.unpackb(frames[0], raw=False) == value


def test_other_results_are_encoded_by_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A result msgpack's scalars do not hold (an int beyond 64 bits, a lone surrogate, a list,
    bytes) ran compiled and is encoded as the Python path encodes it."""
    for value in (2**64, -2**63 - 1, "\udc80", [1, 2], b"raw", {"a": 1}):
        compiled, python, taken = both(lambda _v, value=value: value, entry([0]), [], monkeypatch)
        assert taken == 1
        assert compiled == python, value
        assert compiled[0]["items"][0]["encoding"] != "msgpack" or type(value) in (list, dict)


def test_float32_and_every_int_width_decode_as_msgpack_does(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = [b"\xca" + struct.pack(">f", 1.25), b"\xcc\xff", b"\xcd\xff\xff", b"\xce\xff\xff\xff\xff",
              b"\xcf" + b"\xff" * 8, b"\xd0\x80", b"\xd1\x80\x00", b"\xd2\x80\x00\x00\x00",
              b"\xd3\x80" + b"\x00" * 7, b"\xd9\x01a", b"\xda\x00\x01b", b"\xdb\x00\x00\x00\x01c",
              b"\xc4\x01\x00", b"\xc5\x00\x01\x01", b"\xc6\x00\x00\x00\x01\x02", b"\xdc\x00\x01\x01",
              b"\xdd\x00\x00\x00\x01\x02", b"\xe0", b"\xc0", b"\xc2", b"\xc3"]
    names = [f"d{i}" for i in range(len(frames))]
    e = entry(names, list(range(len(names))), [item(n) for n in names])
    (h, out), python, taken = both(concat, e, frames, monkeypatch)
    assert taken == 1 and (h, out) == python
    got = _serialize.decode(h["items"][0]["encoding"], out)
    assert list(got) == [msgpack.unpackb(f, raw=False) for f in frames]


def test_runs_it_does_not_take_go_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is called before the compiled path hands a run back: a map among the arguments,
    a pickled payload, an input in another encoding or of two frames, a reference by a negative
    position or to a key no item names, a malformed payload or input."""
    calls: list[tuple[Any, ...]] = []

    def record(*a: Any) -> Any:
        calls.append(a)
        return len(a)

    cases: list[tuple[list[Any], list[Any]]] = [
        (entry([{"a": 1}]), []),
        (entry([], payload=b"\x80\x05N."), []),
        (entry(["x"], [0], [item("x", enc="pickle")]), [b"\x80\x05K\x01."]),
        (entry(["x"], [0], [item("x", nframes=2)]), [b"\x01", b"\x02"]),
        (entry(["x"], [-1], [item("x")]), [b"\x01"]),
        (entry(["y"], [0], [item("x")]), [b"\x01"]),
        (entry(["x"], [0], [item("x")]), [b"\x81\xa1a\x01"]),  # a map as the input's value
        (entry([], payload=b"\x00\x91\x92\x01"), []),  # truncated
        (entry([], payload=b"\x00\x91\x90\xc0"), []),  # bytes after the value
        (entry([], payload=b"\x00\x91\xdd\xff\xff\xff\xff"), []),  # 4G elements declared, none sent
        (entry(["x"], [0], [item("x")]), [b"\xdb\xff\xff\xff\xff"]),  # a 4 GiB str declared
        (entry([], payload=b"\x00\x91\x91" + b"\x91" * 40 + b"\xc0"), []),  # nested beyond the limit
        (entry([], payload=b"\x00\x91\x91\xa2\xff\xfe"), []),  # not UTF-8
        (entry(["x"], [0], [item("x")]), []),  # no frame for the input
    ]
    for e, frames in cases:
        compiled, python, taken = both(record, e, frames, monkeypatch)
        assert taken == 0, e
        if compiled[0]["op"] == "error":
            same_error(compiled, python)
        else:
            assert compiled == python
    assert calls, "the cases the Python path can run were run"


def test_errors_are_reported_as_the_python_path_reports_them(monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(x: int) -> int:
        return 1 // x

    compiled, python, taken = both(fails, entry([0]), [], monkeypatch)
    assert taken == 1
    same_error(compiled, python)
    err = compiled[0]["error"]
    assert err["type"] == "builtins.ZeroDivisionError"
    assert "in fails" in err["traceback"] and "run_entry" not in err["traceback"], err["traceback"]

    def interrupted() -> None:
        raise KeyboardInterrupt

    ex = Executor(None)  # type: ignore[arg-type]
    ex.funcs[FH] = interrupted
    with pytest.raises(KeyboardInterrupt):
        ex.run_entry(entry([]), [])


def test_the_task_knows_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """get_worker and secede find the running task: enter and leave are called around it."""
    seen: list[Any] = []

    def look() -> int:
        task = _worker._local.task
        seen.append((task.id, task.key))
        return 0

    compiled, _, taken = both(look, entry([]), [], monkeypatch)
    assert taken == 1 and compiled[0]["op"] == "done"
    assert seen == [(7, "k-1"), (7, "k-1")]
    assert getattr(_worker._local, "task", None) is None


def test_plugins_take_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """With worker plugins registered, every run goes through call, which tells them."""
    pre = _preload.Preloads()
    pre.plugins["p"] = object()
    monkeypatch.setattr(_preload, "_current", pre)
    transitions: list[tuple[str, str, str]] = []
    monkeypatch.setattr(pre, "transition", lambda key, a, b, **_: transitions.append((key, a, b)))
    _, _, taken = both(lambda: 1, entry([]), [], monkeypatch)
    assert taken == 0
    assert ("k-1", "executing", "memory") in transitions


def test_no_references_are_leaked(monkeypatch: pytest.MonkeyPatch) -> None:
    def ident(*a: Any) -> Any:
        return a[0]

    ex = Executor(None)  # type: ignore[arg-type]
    ex.funcs[FH] = ident
    e = entry(["x", 5], [0], [item("x")])
    frames = [msgpack.packb([1, "two", 3.0])]
    key, fn, payload = e[1], ident, e[3]
    before = (sys.getrefcount(key), sys.getrefcount(fn), sys.getrefcount(payload), sys.getrefcount(ex),
              sys.getrefcount(frames[0]))
    for _ in range(1000):
        h, out = ex.run_entry(e, frames)
        assert h["op"] == "done"
        del h, out
    after = (sys.getrefcount(key), sys.getrefcount(fn), sys.getrefcount(payload), sys.getrefcount(ex),
             sys.getrefcount(frames[0]))
    assert after == before


def plain_runs(worker: FakeWorker, n: int) -> Iterator[tuple[dict[str, Any], list[Any]]]:
    """``n`` run messages as a worker sends a client.get's plain calls: ``operator.add`` of
    two inputs named in a literal payload."""
    import operator

    from shoal import _keys

    data = _keys.dumps_callable(operator.add)
    fh = _keys.func_hash(data)
    for i in range(n):
        worker.ids += 1
        h: dict[str, Any] = {"op": "run", "id": worker.ids, "key": f"('sum', {i})", "func": fh,
                             "payload": _refs.literal_payload(["a", "b"], [0, 1], PACK),
                             "items": [{"key": "a", "encoding": "msgpack", "nframes": 1, "nbytes": 1},
                                       {"key": "b", "encoding": "msgpack", "nframes": 1, "nbytes": 1}]}
        if fh not in worker.sent_funcs:
            h["func_data"] = data
            worker.sent_funcs.add(fh)
        yield h, [msgpack.packb(i), msgpack.packb(100)]


def test_an_executor_process_answers_plain_runs() -> None:
    """The real executor, fed a runs message of plain calls, answers each (as dones), and a
    failing one with its error, in order."""
    worker = FakeWorker()
    try:
        msgs = list(plain_runs(worker, 30))
        bad = msgs[10][0]
        bad["payload"] = _refs.literal_payload(["a", None], [0], PACK)  # 10 + None
        worker.send_runs(msgs)
        answers = [a for g in worker.answers(30) for a in g]
        assert [h["id"] for h, _ in answers] == [h["id"] for h, _ in msgs]
        for i, (h, frames) in enumerate(answers):
            if i == 10:
                assert h["op"] == "error" and h["error"]["type"] == "builtins.TypeError"
            else:
                assert h["op"] == "done" and result_of((h, frames)) == i + 100
    finally:
        worker.close()
