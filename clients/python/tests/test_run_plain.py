"""The executor's compiled run of a plain call (``shoal._speedups.run_plain``, taken by
``Executor.run_entry``) against its Python path: the same answers, the same errors, and the
Python path for everything it does not take.

``make test`` sets ``SHOAL_REQUIRE_SPEEDUPS=1``: there the extension must have been built;
elsewhere these tests skip without it.
"""

from __future__ import annotations

import gc
import os
import random
import struct
import sys
import threading
import weakref
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


def refuses_none(*a: Any) -> Any:
    if None in a:
        raise ValueError("None among", a)
    return len(a)


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


def random_call(rng: random.Random, nargs: int, ndeps: int,
                prefix: str) -> tuple[list[Any], list[int], dict[str, Any]]:
    """Literal arguments, the first of which name inputs (their positions: refs), and the
    inputs' values by wire key."""
    args = [literals(rng) for _ in range(rng.randrange(1, nargs))]
    deps = {f"('{prefix}', {j})": literals(rng) for j in range(rng.randrange(ndeps))}
    refs = []
    for j, name in enumerate(deps):
        if j < len(args):
            args[j] = name
            refs.append(j)
    return args, refs, deps


def test_literal_runs_answer_as_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(19)
    for fn in (first, concat):
        for _ in range(300):
            args, refs, deps = random_call(rng, 6, 4, "x")
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
        task = _worker.current()
        assert task is not None
        seen.append((task.id, task.key))
        return 0

    compiled, _, taken = both(look, entry([]), [], monkeypatch)
    assert taken == 1 and compiled[0]["op"] == "done"
    assert seen == [(7, "k-1"), (7, "k-1")]
    assert _worker.current() is None


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
    """The real executor, fed a runs message of plain calls, answers each (as dones), a failing
    one with its error and one returning a list as the Python path encodes it, in order."""
    worker = FakeWorker()
    try:
        msgs = list(plain_runs(worker, 30))
        bad = msgs[10][0]
        bad["payload"] = _refs.literal_payload(["a", None], [0], PACK)  # 10 + None
        msgs[20][0]["payload"] = _refs.literal_payload([[1], [2]], [], PACK)  # a list: encoded in Python
        worker.send_runs(msgs)
        answers = [a for g in worker.answers(30) for a in g]
        assert [h["id"] for h, _ in answers] == [h["id"] for h, _ in msgs]
        for i, (h, frames) in enumerate(answers):
            if i == 10:
                assert h["op"] == "error" and h["error"]["type"] == "builtins.TypeError"
            elif i == 20:
                assert result_of((h, frames)) == [1, 2]
            else:
                assert h["op"] == "done" and result_of((h, frames)) == i + 100
    finally:
        worker.close()


# --- runs messages read in C (RunBatch) ------------------------------------------------------

from shoal import _wire  # noqa: E402
from shoal._speedups import runs_batch  # noqa: E402
from shoal.executor import dones_header, group_answers, split_runs  # noqa: E402


def batch_of(ex: Executor, header: dict[str, Any], frames: list[Any]) -> Any:
    raw = bytearray(_wire.pack_header(header))
    return runs_batch(raw, frames, ex.funcs, ex, _worker.enter, _worker.leave, executor._unpack_entry)


def plain_batch(n: int, rng: random.Random) -> tuple[dict[str, Any], list[Any], list[Any]]:
    """A runs message of ``n`` runs as a worker sends a client.get's: plain calls of ``first``
    or ``concat`` over literals and inputs, some keeping, with the expected values."""
    entries, counts, frames = [], [], []
    for i in range(n):
        args, refs, deps = random_call(rng, 4, 3, f"d-{i}")
        items = [[name, "msgpack", rng.choice([0, 1]), 1] for name in deps]
        extra = rng.choice([None, None, {"keep": 1}, {"keep": False}, {}])
        fh = rng.choice([FH, "c" * 64, "r" * 64])
        entries.append([i + 1, f"('t', {i})", fh, _refs.literal_payload(args, refs, PACK), items, extra])
        counts.append(len(deps))
        frames.extend(msgpack.packb(v, use_bin_type=True) for v in deps.values())
    return {"op": "runs", "runs": entries, "nframes": counts}, frames, entries


def run_python(ex: Executor, header: dict[str, Any], frames: list[Any],
               monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    monkeypatch.setattr(executor, "_run_plain", None)
    try:
        return [ex.run_entry(e, f) for e, f in split_runs(header, frames)]
    finally:
        monkeypatch.undo()


def run_batch(ex: Executor, batch: Any, many: bool = False) -> list[tuple[Any, Any]]:
    """Each run of the batch answered as the executor's loop answers it (without start/stop):
    one next() per run, or (``many``) run_many's plain answers and next()'s value of each run
    that stopped it."""
    out: list[tuple[Any, Any]] = []

    def plain(ran: Any) -> None:
        h = msgpack.unpackb(ran[0], raw=False)
        assert _wire.pack_header(h) == ran[0], "encoded as pack_header encodes the map"
        assert 0 < h.pop("start") <= h.pop("stop")
        out.append((h, ran[1]))

    while batch.left:
        if many:
            held: list[Any] = []
            ran = batch.run_many(held, {"_seceding": 0})
            for answer in held:
                assert len(answer) == 2
                plain(answer)
            if ran is None:
                assert not batch.left
                break
            assert len(ran) != 2, "a plain answer came back while no task seceded"
        else:
            ran = batch.next()
        if len(ran) == 2:
            plain(ran)
            continue
        kind, value, run_of, _ = ran
        if kind == 3:
            out.append(ex.run_entry(value, run_of))
        elif kind == 1:
            running = _worker.current()
            assert running is not None and running.key == run_of[1], "still in the task while its error is answered"
            out.append((executor.error_reply(run_of[0], value, skip=0), []))
            _worker.leave(run_of[2])
        else:
            out.append(ex.result_reply(*run_of, value))
    return out


@pytest.mark.parametrize("many", [False, True])
def test_a_runs_batch_answers_as_the_python_path(monkeypatch: pytest.MonkeyPatch, many: bool) -> None:
    rng = random.Random(5)
    ex = Executor(None)  # type: ignore[arg-type]
    ex.funcs[FH] = first
    ex.funcs["c" * 64] = concat
    ex.funcs["r" * 64] = refuses_none
    for _ in range(40):
        header, frames, _ = plain_batch(rng.randrange(0, 70), rng)
        batch = batch_of(ex, header, frames)
        assert batch is not None
        got = run_batch(ex, batch, many)
        want = run_python(ex, header, frames, monkeypatch)
        assert len(got) == len(want)
        assert _worker.current() is None
        for g, w in zip(got, want):
            if w[0]["op"] == "error":
                same_error(g, w)
            else:
                assert g == w


def test_a_batch_hands_other_runs_to_the_python_path() -> None:
    """Runs the compiled path does not take come back as split_runs makes them, in order:
    pickled payloads, a function still to load (func_data), the profiler's timeout, an unknown
    function; and take() hands any run over unrun."""
    rng = random.Random(7)
    ex = Executor(None)  # type: ignore[arg-type]
    ex.funcs[FH] = first
    header, frames, entries = plain_batch(6, rng)
    for e in entries:
        e[2] = FH
    entries[1][3] = b"\x80\x05N."
    entries[2][5] = {"func_data": b"data", "keep": 1}
    entries[3][5] = {"timeout": 0.01}
    entries[4][2] = "e" * 64
    split = split_runs(header, frames)
    batch = batch_of(ex, header, frames)
    handed = []
    for i in range(len(entries)):
        ran = batch.take() if i == 5 else batch.next()
        if len(ran) == 4 and ran[0] == 3:
            handed.append(i)
            assert [ran[1], ran[2]] == list(split[i])
    assert handed == [1, 2, 3, 4, 5] and batch.left == 0
    with pytest.raises(IndexError):
        batch.next()


def test_runs_messages_split_runs_refuses_are_not_batched() -> None:
    """Whatever split_runs (or the header's decoding) refuses, runs_batch leaves to it; and
    what runs_batch takes, split_runs takes too, with the same runs (random mutations of valid
    messages, hostile lengths and nesting among them)."""
    rng = random.Random(11)
    ex = Executor(None)  # type: ignore[arg-type]
    header, frames, entries = plain_batch(3, rng)
    good = _wire.pack_header(header)
    bad_headers = [
        dict(header, op="run"), dict(header, nframes=header["nframes"][:-1]),
        dict(header, nframes=[*header["nframes"][:-1], header["nframes"][-1] + 1]),
        dict(header, runs=[*entries[:-1], entries[-1][:5]]),
        dict(header, runs=[*entries[:-1], [*entries[-1][:5], {"keep": 1.5}]]),
        dict(header, runs=[*entries[:-1], [*entries[-1][:5], {"timeout": -1}]]),
        dict(header, runs=[*entries[:-1], [*entries[-1][:5], {"other": 1}]]),
        dict(header, runs=[*entries[:-1], [-1, *entries[-1][1:]]]),
        dict(header, runs=[*entries[:-1], [True, *entries[-1][1:]]]),
        dict(header, runs=[*entries[:-1], [*entries[-1][:3], "text", *entries[-1][4:]]]),
    ]
    for h in bad_headers:
        assert batch_of(ex, h, frames) is None, h
    raws = [good[:k] for k in range(len(good))] + [good + b"\xc0", b"\x81\xa2op\xa4runs",
                                                   b"\x83\xa2op\xa4runs\xa4runs\xdd\xff\xff\xff\xff"]
    for _ in range(3000):
        b = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        raws.append(bytes(b))
    taken = 0
    for raw in raws:
        batch = runs_batch(bytearray(raw), list(frames), ex.funcs, ex, _worker.enter, _worker.leave,
                           executor._unpack_entry)
        try:
            h = _wire.unpack_header(raw)
            split = split_runs(h, list(frames)) if h.get("op") == "runs" else None
        except Exception:  # noqa: BLE001 - refused by the Python path
            split = None
        if batch is None:
            continue
        taken += 1
        assert split is not None, raw
        assert [tuple(batch.take()[1:3]) for _ in range(batch.left)] == [(e, f) for e, f in split]
    assert taken > 0


def test_run_keys_are_taken_only_when_they_are_utf8() -> None:
    """A key with a multi-byte character anywhere in it is taken and handed on as that key; one
    with bytes that are not UTF-8 leaves the message to split_runs, which refuses it."""
    rng = random.Random(13)
    ex = Executor(None)  # type: ignore[arg-type]
    ex.funcs[FH] = first
    ex.funcs["c" * 64] = concat
    ex.funcs["r" * 64] = refuses_none
    for n in range(1, 20):
        for at in range(n):
            header, frames, entries = plain_batch(1, rng)
            key = "k" * at + "ü" + "k" * (n - at - 1)
            entries[0][1] = key
            batch = batch_of(ex, header, frames)
            assert batch is not None
            assert batch.take()[1][1] == key
            raw = bytearray(_wire.pack_header(dict(header, runs=[[*entries[0][:1], "k" * n, *entries[0][2:]]])))
            i = raw.index(b"k" * n) + at
            raw[i] = 0xff  # never in UTF-8
            assert runs_batch(raw, list(frames), ex.funcs, ex, _worker.enter, _worker.leave,
                              executor._unpack_entry) is None
            with pytest.raises(Exception):  # noqa: B017 - whatever msgpack raises for it
                split_runs(_wire.unpack_header(raw), list(frames))


def test_dones_header_encodes_as_pack_header() -> None:
    replies = [{"op": "done", "id": i, "items": [{"key": f"k{i}", "encoding": "msgpack", "nframes": 1,
                                                   "nbytes": 1}], "start": 1, "stop": 2} for i in range(20)]
    counts = [1] * 20
    as_map = dones_header(replies, counts)
    assert isinstance(as_map, dict)
    mixed = [_wire.pack_header(r) if i % 2 else r for i, r in enumerate(replies)]
    assert dones_header(mixed, counts) == _wire.pack_header(as_map)
    grouped = group_answers([(r, [b"\x01"]) for r in mixed])
    assert len(grouped) == 1 and grouped[0][1] == [b"\x01"] * 20
    assert msgpack.unpackb(grouped[0][0], raw=False) == as_map


def test_an_executor_process_runs_a_seceding_plain_call_in_a_batch() -> None:
    """A plain call that secedes in the middle of a runs message: the worker gets the earlier
    answers, the secede, then the rest's, in order, as with the Python path."""
    from shoal import _keys

    def seceding(a: int, b: int) -> int:
        from shoal import secede
        secede()
        return a + b

    worker = FakeWorker()
    try:
        msgs = list(plain_runs(worker, 6))
        data = _keys.dumps_callable(seceding)
        fh = _keys.func_hash(data)
        msgs[2][0].update(func=fh, func_data=data)
        worker.send_runs(msgs)
        answers = [a for g in worker.answers(6) for a in g]
        assert [h["id"] for h, _ in answers] == [h["id"] for h, _ in msgs]
        assert [h["op"] for h, _ in answers] == ["done", "done", "secede", "done", "done", "done"]
        assert [result_of(answers[i]) for i in (0, 1, 3, 4, 5)] == [100, 101, 103, 104, 105]
        # the function is known now: the next batch's seceding run is a compiled one
        msgs = list(plain_runs(worker, 4))
        msgs[1][0]["func"] = fh
        worker.send_runs(msgs)
        answers = [a for g in worker.answers(4) for a in g]
        assert [h["op"] for h, _ in answers] == ["done", "secede", "done", "done"]
        assert [result_of(answers[i]) for i in (0, 2, 3)] == [100, 102, 103]
    finally:
        worker.close()


def test_an_error_is_answered_before_the_task_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    """As Executor.call does, the error answer is made while the task still runs (its message
    may ask which task it is), and a builtin's error carries no executor frame on either path."""

    class Told(Exception):
        def __str__(self) -> str:
            task = _worker.current()
            return f"in {task.key}" if task is not None else "outside a task"

    def tells() -> None:
        raise Told()

    compiled, python, taken = both(tells, entry([]), [], monkeypatch)
    assert taken == 1
    same_error(compiled, python)
    assert compiled[0]["error"]["message"] == "in k-1"
    assert _worker.current() is None

    import operator

    compiled, python, taken = both(operator.add, entry([1, None]), [], monkeypatch)
    assert taken == 1
    same_error(compiled, python)
    assert compiled[0]["error"]["traceback"].startswith("TypeError"), compiled[0]["error"]["traceback"]


class _Wire:
    """A Connection's sending half that keeps the bytes it would send."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.limits = _wire.DEFAULT_LIMITS

    def sendall(self, b: Any) -> None:
        self.sent += b


def wire_of(held: list[Any]) -> bytes:
    """What send_many(group_answers(held)) writes."""
    sock = _Wire()
    conn = _wire.Connection(sock)  # type: ignore[arg-type]
    conn.send_many(group_answers(held))
    return bytes(sock.sent)


def test_answers_wire_writes_what_the_python_path_writes() -> None:
    """answers_wire frames and groups encoded answers byte for byte as send_many(group_answers)
    does: groups of at most 64 answers and 64 KiB of frames, a larger answer alone, one answer
    as its own message; anything not encoded is left to the Python path."""
    from shoal._speedups import answers_wire

    rng = random.Random(3)
    limit = _wire.DEFAULT_LIMITS.max_header

    def answer(i: int, size: int) -> tuple[bytes, list[bytes]]:
        frame = bytes(rng.randrange(256) for _ in range(min(size, 64))) * (size // 64 + 1)
        frame = frame[:size]
        h = {"op": "done", "id": i, "items": [{"key": f"k{i}" * rng.randrange(1, 5), "encoding": "msgpack",
                                                "nframes": 1, "nbytes": size}], "start": 1, "stop": 2}
        return _wire.pack_header(h), [frame]

    for _ in range(200):
        n = rng.choice([1, 2, 3, 63, 64, 65, 130])
        held = [answer(i, rng.choice([1, 2, 9, 1000, 40_000, 70_000])) for i in range(n)]
        if rng.random() < 0.2:
            held[rng.randrange(n)][1].append(b"")  # two frames
        got = answers_wire(held, limit)
        assert got == wire_of(held)
    header, frames = answer(1, 1)
    assert answers_wire([({"op": "done"}, frames), (header, frames)], limit) is None
    assert answers_wire([(header, [bytearray(b"x")]), (header, frames)], limit) is None
    assert answers_wire([(header, frames)] * 3, len(header)) is None  # the dones would be over


def test_a_batch_leaves_large_results_and_wide_buffers_to_python() -> None:
    """A scalar result of a segment's size or more is answered by the Python path (which may
    send it in a segment), and a header in a buffer of items wider than a byte, which msgpack
    refuses, is not batched."""
    import array

    ex = Executor(None, segments=True)  # type: ignore[arg-type]
    ex.funcs[FH] = lambda n: "x" * n
    header = {"op": "runs", "runs": [[1, "big", FH, _refs.literal_payload([1 << 20], [], PACK), [], None],
                                     [2, "small", FH, _refs.literal_payload([3], [], PACK), [], None]],
              "nframes": [0, 0]}
    batch = batch_of(ex, header, [])
    big = batch.next()
    assert big[0] == 2 and big[1] == "x" * (1 << 20) and big[2] == (1, "big", False)
    assert len(batch.next()) == 2
    raw = _wire.pack_header(header)
    raw += b"\xc0" * (-len(raw) % 4)  # (a header of whole 4-byte items: nil padding after the map)
    wide = array.array("i", raw)
    assert runs_batch(wide, [], ex.funcs, ex, _worker.enter, _worker.leave, executor._unpack_entry) is None


def test_a_function_lookup_survives_a_batch_run_from_inside_it() -> None:
    """Looking a function up may run a key's __eq__ (funcs holding a key that is not a str),
    which may run the batch's next run meanwhile, as a seceded server's thread would."""
    a, b = "f" * 64, "g" * 64
    box: list[Any] = []

    class Collides:
        def __init__(self, first: bool) -> None:
            self.first = first

        def __hash__(self) -> int:
            return hash(a)

        def __eq__(self, other: object) -> bool:
            if self.first and box:
                box.pop().next()  # runs the next run: the cached name changes
            return False

    header = {"op": "runs", "runs": [[1, "k0", a, _refs.literal_payload([0], [], PACK), [], None],
                                     [2, "k1", b, _refs.literal_payload([1], [], PACK), [], None]],
              "nframes": [0, 0]}
    funcs = {Collides(True): 1, Collides(False): 2, a: lambda x: x + 10, b: lambda x: x + 20}
    ex = Executor(None)  # type: ignore[arg-type]
    batch = runs_batch(bytearray(_wire.pack_header(header)), [], funcs, ex, _worker.enter, _worker.leave,
                       executor._unpack_entry)
    box.append(batch)
    h, frames = batch.next()
    assert msgpack.unpackb(h)["items"][0]["key"] == "k0" and msgpack.unpackb(frames[0]) == 10
    assert batch.left == 0


@pytest.mark.parametrize("compiled", [False, True])
def test_each_thread_knows_its_task(compiled: bool) -> None:
    """enter, leave and current, in Python and in C: the task is per thread, current gives the
    same object for the whole run (secede sets its conn), a token leaves only its own run, and
    nothing a run named stays referenced after it leaves."""
    if compiled:
        sp = pytest.importorskip("shoal._speedups")
        enter, leave, current = sp.task_enter, sp.task_leave, sp.task_current
    else:
        enter, leave, current = _worker._enter, _worker._leave, _worker._current
    ex = object()
    key = "k-" + str(7)  # made at run time, as a decoded key is
    refs = sys.getrefcount(key), sys.getrefcount(ex)
    assert current() is None
    token = enter(ex, 7, key)
    task = current()
    assert task is not None and (task.executor, task.id, task.key) == (ex, 7, "k-7")
    assert current() is task
    elsewhere: list[Any] = []
    t = threading.Thread(target=lambda: elsewhere.append(current()))
    t.start()
    t.join()
    assert elsewhere == [None]
    leave(object())
    assert current() is task, "a token of no run left the running task"
    del task
    token2 = enter(ex, 8, "k-" + str(8))  # the next run, without the first leaving
    leave(token)
    nxt = current()
    assert nxt is not None and nxt.id == 8, "the first run's token left the second run"
    del nxt
    leave(token2)
    assert current() is None
    del token, token2
    assert (sys.getrefcount(key), sys.getrefcount(ex)) == refs


@pytest.mark.parametrize("compiled", [False, True])
def test_a_thread_that_ends_lets_go_of_its_task(compiled: bool) -> None:
    """A thread's task storage ends with the thread (an executor makes a thread per seceding
    task): what a run named is let go when its thread ends, left or not, and a new thread
    starts with no task."""
    if compiled:
        sp = pytest.importorskip("shoal._speedups")
        enter, leave, current = sp.task_enter, sp.task_leave, sp.task_current
    else:
        enter, leave, current = _worker._enter, _worker._leave, _worker._current

    class Named:
        pass

    seen: list[Any] = []

    def run(ex: Named, left: bool) -> None:
        token = enter(ex, 1, "k-" + str(len(seen)))
        seen.append(current() is not None)  # the _Task made and kept for the run
        if left:
            leave(token)

    for left in (False, True):
        ex = Named()
        gone = weakref.ref(ex)
        t = threading.Thread(target=run, args=(ex, left))
        t.start()
        t.join()
        del ex
        gc.collect()
        assert gone() is None, f"the executor of a run in an ended thread is still held (left={left})"
    assert seen == [True, True]
    fresh: list[Any] = []
    t = threading.Thread(target=lambda: fresh.append(current()))
    t.start()
    t.join()
    assert fresh == [None]


def test_run_many_stops_after_a_run_when_a_task_seceded() -> None:
    """While shoal._worker._seceding is set, run_many hands back each plain answer, unappended,
    for the loop to find whose task seceded; unset, it answers every plain run into held."""
    rng = random.Random(11)
    ex = Executor(None)  # type: ignore[arg-type]
    ex.funcs[FH] = lambda *args: len(args)  # an int: answered in C
    header, frames, entries = plain_batch(5, rng)
    for e in entries:
        e[2] = FH
    batch = batch_of(ex, header, frames)
    held: list[Any] = []
    ran = batch.run_many(held, {"_seceding": 1})
    assert held == [] and len(ran) == 2 and msgpack.unpackb(ran[0])["id"] == 1
    assert batch.left == 4
    assert batch.run_many(held, {"_seceding": 0}) is None
    assert [msgpack.unpackb(h)["id"] for h, _ in held] == [2, 3, 4, 5]
    assert batch.left == 0
    with pytest.raises(TypeError):
        batch.run_many(held, None)
