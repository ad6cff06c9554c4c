"""The Client against an in-process fake scheduler/worker (no Go binary needed)."""

from __future__ import annotations

import concurrent.futures
import gc
import time
import traceback
from operator import add
from typing import Any, Callable, Iterator

import dask
import dask.array as da
import numpy as np
import pyarrow as pa
import pytest

import shoal
from shoal import AuthenticationError, CancelledError, Client, CommClosedError, FutureLostError
from shoal.exceptions import RemoteTraceback

from fakecluster import FakeCluster


@pytest.fixture()
def fake() -> Iterator[FakeCluster]:
    f = FakeCluster(token="s3cret")
    yield f
    f.close()


@pytest.fixture(params=["memory", "tcp"])
def client(fake: FakeCluster, request: pytest.FixtureRequest) -> Iterator[Client]:
    """A client over the in-memory transport, and one over real sockets (the same fake)."""
    if request.param == "memory":
        c = Client(fake.mem_address, token="s3cret", timeout=5, set_as_default=False, transport=fake.transport())
    else:
        c = Client(fake.scheduler_address, token="s3cret", timeout=5, set_as_default=False)
    with c:
        yield c


def mem_client(fake: FakeCluster, **kwargs: Any) -> Client:
    kwargs.setdefault("reconnect_timeout", 30)
    return Client(fake.mem_address, token="s3cret", timeout=5, set_as_default=False, transport=fake.transport(),
                  **kwargs)


def wait_until(cond: Callable[[], bool], what: str) -> None:
    """Poll ``cond`` (bounded: a hang fails the test instead of blocking it)."""
    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def inc(x: int) -> int:
    return x + 1


def test_submit_map_gather(client: Client, fake: FakeCluster) -> None:
    assert client.submit(inc, 1).result(timeout=5) == 2
    futures = client.map(inc, range(50))
    assert client.gather(futures) == list(range(1, 51))
    assert client.submit(sum, futures).result(timeout=5) == sum(range(1, 51))
    graphs = [m for m in fake.received if m["op"] == "update_graph"]
    # the function crossed the wire once
    assert sum(1 for g in graphs for h in (g.get("funcs") or {}) if h == graphs[0]["tasks"][0]["func"]) == 1
    t = graphs[-1]["tasks"][0]
    assert t["kind"] == "py" and len(t["deps"]) == 50 and t["key"].startswith("sum-")
    assert client.dashboard_link == "http://x/status"


def test_errors(client: Client) -> None:
    def divide_by_zero() -> float:
        return 1 / 0

    f = client.submit(divide_by_zero)
    with pytest.raises(ZeroDivisionError) as info:
        f.result(timeout=5)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    # The remote traceback reaches the caller: it names the task's function and its error.
    # (Not its source line: cloudpickle decides the file name that a function pickled by value
    # reports, "<dynamic-code>" since 3.1.3, so the worker cannot show the line.)
    text = str(info.value.__cause__)
    assert "in divide_by_zero" in text and "ZeroDivisionError: division by zero" in text
    # Future.traceback() is a traceback object with the worker's frames (see test_dask_compat_cluster.py)
    assert "in divide_by_zero" in "".join(traceback.format_tb(f.traceback()))
    g = client.submit(inc, f)
    assert isinstance(g.exception(timeout=5), ZeroDivisionError)
    assert client.gather([client.submit(inc, 1), f], errors="skip") == [2]


def test_scatter_and_go(client: Client) -> None:
    arr = np.arange(100)
    f = client.scatter(arr)
    assert client.submit(np.sum, f).result(timeout=5) == arr.sum()
    t = client.scatter(pa.table({"x": [1, 2, 3]}))
    assert client.submit_go("row_count", t).result(timeout=5) == 3
    assert client.submit_go("inc", 1).result(timeout=5) == 2


def test_dask_get(client: Client) -> None:
    x = da.ones((10, 10), chunks=5)
    assert (x + 1).sum().compute(scheduler=client.get) == 200
    assert dask.compute({"a": dask.delayed(add)(1, 2)}, scheduler=client.get) == ({"a": 3},)
    fut = client.compute(x.sum())
    assert fut.result(timeout=5) == 100
    xp = client.persist(x + 1)
    assert (xp * 2).sum().compute(scheduler=client.get) == 400


def test_release_and_cancel(client: Client, fake: FakeCluster) -> None:
    f = client.submit(inc, 99)
    key = f.key
    f.result(timeout=5)
    del f
    gc.collect()
    deadline = time.time() + 5
    while not any(m["op"] == "release_keys" and key in m["keys"] for m in fake.received):
        assert time.time() < deadline
        time.sleep(0.02)
    g = client.submit(inc, 1000)
    client.cancel([g])
    with pytest.raises(CancelledError):
        g.result(timeout=5)


def test_info(client: Client) -> None:
    info = client.scheduler_info()
    (addr,) = info["workers"]
    assert info["workers"][addr]["nthreads"] == 1


def test_bad_token(fake: FakeCluster) -> None:
    with pytest.raises(AuthenticationError):
        Client(fake.scheduler_address, token="nope", timeout=5)


def test_bad_token_in_memory(fake: FakeCluster) -> None:
    with pytest.raises(AuthenticationError):
        Client(fake.mem_address, token="nope", timeout=5, transport=fake.transport())


# ---------------------------------------------------------------------------------------------
# reconnecting (docs/python.md, "Reconnecting"): the fake breaks its connections as a scheduler
# killed with -9 does, and comes back with (or without) what it knew


def test_reconnect_resumes_the_session(fake: FakeCluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="shoal")
    with mem_client(fake) as client:
        first_id = client.id
        done = client.submit(inc, 10)
        assert done.result(timeout=5) == 11
        fake.paused = True
        f = client.submit(inc, 1)
        wait_until(lambda: any(t["key"] == f.key for t in fake.held), "the task reached the scheduler")
        dials = len(client._transport.dials)  # type: ignore[attr-defined]
        fake.drop(down=True)
        wait_until(lambda: client.status == "connecting", "the client noticed")
        assert not f.done()
        g = client.submit(inc, 2)  # while disconnected: sent after the resume
        wait_until(lambda: len(client._transport.dials) > dials + 1, "a retry")  # type: ignore[attr-defined]
        fake.down = False
        wait_until(lambda: client.status == "running", "reconnected")

        def after_resume() -> list[dict[str, Any]]:
            ops = [m["op"] for m in fake.received]
            return fake.received[ops.index("resume"):] if "resume" in ops else []

        wait_until(lambda: any(m["op"] == "update_graph" for m in after_resume()), "the queue was sent")
        resume, *after = after_resume()
        assert resume["client"] == first_id
        assert f.key in resume["keys"] and done.key in resume["keys"]
        assert g.key not in resume["keys"], "a graph sent after the resume is not resumed"
        assert [m for m in after if m["op"] == "update_graph"][0]["wanted"] == [g.key]
        fake.run_held()
        assert f.result(timeout=5) == 2
        assert g.result(timeout=5) == 3
        assert done.result(timeout=5) == 11
        assert client.id == first_id
    text = caplog.text
    assert "lost the connection to the scheduler" in text and "reconnected to the scheduler" in text


def test_reconnect_to_a_scheduler_that_forgot(fake: FakeCluster) -> None:
    """A scheduler restarted without a journal answers every key with state lost."""
    with mem_client(fake) as client:
        f = client.submit(inc, 1)
        assert f.result(timeout=5) == 2
        fake.paused = True
        pending = client.submit(inc, 5)
        wait_until(lambda: bool(fake.held), "the task reached the scheduler")
        fake.forget()  # restarted without a journal: it knows nothing when the client comes back
        fake.drop(down=False)
        with pytest.raises(FutureLostError):
            pending.result(timeout=5)
        wait_until(lambda: f.status == "lost", "the finished key was lost too")
        fake.paused = False
        # the client goes on: functions are sent again to the scheduler that forgot them
        assert client.submit(inc, 41).result(timeout=5) == 42
        assert client.status == "running"


def test_graphs_the_scheduler_never_read_are_sent_again(fake: FakeCluster) -> None:
    """A graph still in flight when the scheduler died is sent again after the resume (the
    scheduler's resumed says which it read last), before what was submitted while the client
    was away (which may depend on it); a key no kept graph defines is lost."""
    with mem_client(fake) as client:
        assert client.submit(inc, 1).result(timeout=5) == 2
        fake.mute.update({"update_graph", "release_keys"})  # received, never read
        f = client.submit(inc, 10)
        dropped = client.submit(inc, 30)
        dropped_key = dropped.key
        del dropped
        gc.collect()
        wait_until(lambda: any(m["op"] == "release_keys" and dropped_key in m["keys"] for m in fake.received),
                   "the dropped future was released")
        fake.mute.clear()
        fake.drop(down=True)
        wait_until(lambda: client.status == "connecting", "the client noticed")
        later = client.submit(inc, f)  # queued while away; needs f, whose graph was not read
        fake.down = False
        assert later.result(timeout=5) == 12
        assert f.result(timeout=5) == 11
        resume = next(m for m in fake.received if m["op"] == "resume")
        assert resume["n"] > fake.graph_seq - 2 >= 1, "resume names the last graph sent"
        wait_until(lambda: any(m["op"] == "release_keys" for m in fake.received[fake.received.index(resume):]),
                   "the unheld key was released again")
        after = fake.received[fake.received.index(resume):]
        assert [m["op"] for m in after if m["op"] in ("update_graph", "wanted", "release_keys")] == [
            "update_graph", "update_graph", "wanted", "release_keys", "update_graph"]
        assert [m["wanted"] for m in after if m["op"] == "update_graph"][-1] == [later.key]
        assert [m["keys"] for m in after if m["op"] == "release_keys"] == [[dropped_key]]
        # a graph no longer kept: its key is reported lost, not waited for forever
        fake.mute.add("update_graph")
        g = client.submit(inc, 20)
        wait_until(lambda: any(g.key in (m.get("wanted") or ()) for m in fake.received), "the graph was sent")
        fake.mute.discard("update_graph")
        client._comm._sent_graphs.clear()  # type: ignore[attr-defined]
        fake.drop(down=False)
        with pytest.raises(FutureLostError):
            g.result(timeout=5)


def test_an_encoded_graph_never_read_is_sent_again(fake: FakeCluster) -> None:
    """A graph of plain calls goes as the bytes the compiled conversion wrote (no task dicts,
    shoal._speedups); it is kept as any graph is, and sent again, the same bytes, after a
    resume when the scheduler had not read it."""
    from shoal import _dask, _wire

    if _dask._speedups is None:
        pytest.skip("shoal._speedups is not built")
    dsk = {"a": (inc, 1), "b": (inc, "a"), "c": (add, "a", "b")}
    with mem_client(fake) as client:
        assert client.submit(inc, 1).result(timeout=5) == 2
        fake.mute.add("update_graph")
        (c,) = client.get(dsk, ["c"], sync=False)
        wait_until(lambda: any(c.key in (m.get("wanted") or ()) for m in fake.received), "the graph was sent")
        kept = [h for h, _ in client._comm._sent_graphs]  # type: ignore[attr-defined]
        assert type(kept[-1]) is _wire.Encoded and len(kept[-1]["tasks"]) == 3
        first = next(m for m in fake.received if c.key in (m.get("wanted") or ()))
        fake.mute.clear()
        fake.drop(down=False)
        assert c.result(timeout=5) == 5
        resume = next(m for m in fake.received if m["op"] == "resume")
        again = [m for m in fake.received[fake.received.index(resume):] if m["op"] == "update_graph"]
        assert again and again[0] == first
        assert [t["key"] for t in again[0]["tasks"]] == ["a", "b", "c"]
        assert again[0]["tasks"][2]["deps"] == ["a", "b"]


def test_resume_refused_fails_pending_futures(fake: FakeCluster) -> None:
    fake.paused = True
    fake.resume_error = {"code": "protocol-error", "message": "no such session"}
    with mem_client(fake) as client:
        f = client.submit(inc, 1)
        wait_until(lambda: bool(fake.held), "the task reached the scheduler")
        fake.drop(down=False)
        with pytest.raises(shoal.ProtocolError, match="no such session"):
            f.result(timeout=5)


def test_reconnect_gives_up_after_reconnect_timeout(fake: FakeCluster) -> None:
    fake.paused = True
    with mem_client(fake, reconnect_timeout=0.3) as client:
        f = client.submit(inc, 1)
        wait_until(lambda: bool(fake.held), "the task reached the scheduler")
        fake.drop(down=True)
        with pytest.raises(CommClosedError, match="could not reconnect"):
            f.result(timeout=10)
        assert client.status == "closed"
        dials = client._transport.dials  # type: ignore[attr-defined]
        assert len(dials) >= 3, "it retried, with backoff, before giving up"
        with pytest.raises(CommClosedError):
            client.submit(inc, 2)


def test_reconnect_disabled(fake: FakeCluster) -> None:
    fake.paused = True
    with mem_client(fake, reconnect_timeout=0) as client:
        f = client.submit(inc, 1)
        wait_until(lambda: bool(fake.held), "the task reached the scheduler")
        fake.drop(down=False)  # a scheduler is there again: still not dialled
        with pytest.raises(CommClosedError, match="lost the connection"):
            f.result(timeout=5)
        assert client._transport.dials == [fake.mem_address]  # type: ignore[attr-defined]
        assert client.status == "closed"


def test_requests_in_flight_when_the_connection_breaks(fake: FakeCluster) -> None:
    """A read-only request is sent again after the reconnect; another fails with
    CommClosedError (the scheduler may or may not have acted on it)."""
    import concurrent.futures

    with mem_client(fake) as client, concurrent.futures.ThreadPoolExecutor(2) as pool:
        fake.mute = {"info", "event_set"}
        info = pool.submit(client.scheduler_info)
        event = pool.submit(shoal.Event("e", client=client).set)
        wait_until(lambda: {"info", "event_set"} <= {m["op"] for m in fake.received}, "both were sent")
        fake.mute = set()
        fake.drop(down=False)
        with pytest.raises(CommClosedError, match="may or may not"):
            event.result(timeout=10)
        assert list(info.result(timeout=10)["workers"]) == [fake.mem_data_address]
        assert sum(m["op"] == "info" for m in fake.received) == 2


def test_reconnect_reads_the_scheduler_file_again(fake: FakeCluster, tmp_path: Any) -> None:
    import json

    path = tmp_path / "scheduler.json"
    path.write_text(json.dumps({"address": fake.mem_address, "token": "s3cret"}))
    fake.paused = True
    with Client(scheduler_file=str(path), timeout=5, set_as_default=False, transport=fake.transport()) as client:
        f = client.submit(inc, 1)
        wait_until(lambda: bool(fake.held), "the task reached the scheduler")
        fake.drop(down=True)
        wait_until(lambda: client.status == "connecting", "the client noticed")
        fake.mem_address = "mem-scheduler:moved"  # restarted elsewhere
        fake.down = False
        path.write_text(json.dumps({"address": fake.mem_address, "token": "s3cret"}))
        wait_until(lambda: client.status == "running", "reconnected")
        assert client.scheduler_address == "mem-scheduler:moved"
        fake.run_held()
        assert f.result(timeout=5) == 2


def test_close_while_reconnecting(fake: FakeCluster) -> None:
    client = mem_client(fake)
    fake.paused = True
    f = client.submit(inc, 1)
    wait_until(lambda: bool(fake.held), "the task reached the scheduler")
    fake.drop(down=True)
    wait_until(lambda: client.status == "connecting", "the client noticed")
    client.close()
    assert client.status == "closed"
    with pytest.raises(CancelledError):
        f.result(timeout=5)


# ---------------------------------------------------------------------------------------------
# asyncio: coroutines on the caller's loop, no thread per call


def test_asyncio_calls_start_no_threads(fake: FakeCluster) -> None:
    import asyncio
    import threading

    from shoal import AsyncClient, as_completed, wait

    def boom(x: int) -> int:
        raise ValueError(f"boom {x}")

    async def main() -> None:
        transport = fake.transport()
        async with Client(fake.mem_address, token="s3cret", timeout=5, asynchronous=True,
                          transport=transport) as client:
            assert isinstance(client, AsyncClient)

            async def calls(i: int) -> None:
                f = client.submit(inc, i, pure=False)
                assert await f == i + 1
                fs = client.map(inc, range(i, i + 5), pure=False)
                assert await client.gather(fs) == list(range(i + 1, i + 6))
                done, not_done = await wait(fs)
                assert len(done) == 5 and not not_done
                seen = [g async for g in as_completed(fs)]
                assert sorted(g.key for g in seen) == sorted(g.key for g in fs)
                [s] = await client.scatter([i * 10], hash=False)
                assert await client.submit(inc, s) == i * 10 + 1
                assert await client.gather({"a": s, "b": [f]}) == {"a": i * 10, "b": [i + 1]}
                assert list((await client.scheduler_info())["workers"]) == [fake.mem_data_address]
                assert set(await client.who_has(fs)) == {g.key for g in fs}
                bad = client.submit(boom, i, pure=False)
                with pytest.raises(ValueError, match=f"boom {i}"):
                    await bad
                assert await client.gather([f, bad], errors="skip") == [i + 1]

            await calls(0)  # warm up: connections made
            before = threading.active_count()
            started: list[threading.Thread] = []
            real_start = threading.Thread.start

            def counting_start(self: threading.Thread) -> None:
                started.append(self)
                real_start(self)

            asyncio.get_running_loop().set_default_executor(NoExecutor())  # to_thread would fail
            threading.Thread.start = counting_start  # type: ignore[method-assign]
            try:
                for i in range(1, 30):
                    await calls(i)
            finally:
                threading.Thread.start = real_start  # type: ignore[method-assign]
            assert not started, f"calls started threads: {started}"
            assert threading.active_count() <= before
            assert transport.async_conns == 1, "one data connection, reused by every fetch"

    asyncio.run(main())


class NoExecutor(concurrent.futures.ThreadPoolExecutor):
    """A loop's default executor that refuses work: nothing may run in a thread."""

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a call ran in a thread: {args[:1]}")


# ---------------------------------------------------------------------------------------------
# data connections


class _BarrierStream:
    """A data connection whose answers wait until ``barrier`` has as many requests waiting."""

    def __init__(self, barrier: Any) -> None:
        self.barrier, self.closed, self.last = barrier, False, 0

    def send(self, header: dict[str, Any], frames: Any = ()) -> None:
        self.last = header["id"]

    def recv(self) -> tuple[dict[str, Any], list[bytearray]]:
        self.barrier.wait()
        return {"op": "data", "id": self.last, "items": []}, []

    def settimeout(self, timeout: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_data_pool_serves_concurrent_requests_on_several_connections() -> None:
    """Threads fetching from one worker at once each get a connection (a seceded task's fetch
    never queues behind another's), up to MAX_PER_WORKER; idle ones are reused."""
    import threading

    from shoal._data import DataPool

    n = 3
    barrier = threading.Barrier(n, timeout=10)  # broken (BrokenBarrierError) if they were serialised
    dials: list[str] = []

    class T:
        def connect(self, address: str, token: str, timeout: float, io_timeout: Any = None) -> Any:
            dials.append(address)
            return _BarrierStream(barrier)

    pool = DataPool(T(), lambda: "", 5, 5)  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            assert pool.request("w:1", {"op": "get_data", "keys": []})[0]["op"] == "data"
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    for _round in range(2):
        threads = [threading.Thread(target=fetch) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
    assert len(dials) == n, "the second round reused the first round's connections"
    pool.MAX_PER_WORKER = 1
    pool.drop("w:1")
    barrier2 = threading.Barrier(1)
    pool.transport = type("T1", (), {"connect": lambda self, *a, **k: _BarrierStream(barrier2)})()
    out = [pool.request("w:1", {"op": "get_data", "keys": []}) for _ in range(3)]
    assert len(out) == 3


def test_asyncio_futures_survive_a_reconnect(fake: FakeCluster) -> None:
    import asyncio

    async def main() -> None:
        async with Client(fake.mem_address, token="s3cret", timeout=5, asynchronous=True,
                          transport=fake.transport()) as client:
            fake.paused = True
            f = client.submit(inc, 1)
            wait_until(lambda: bool(fake.held), "the task reached the scheduler")
            fake.drop(down=True)
            while client.status != "connecting":
                await asyncio.sleep(0.005)
            fake.down = False
            while client.status != "running":
                await asyncio.sleep(0.005)
            fake.run_held()
            assert await asyncio.wait_for(f, 10) == 2
            assert (await client.scheduler_info())["workers"]

    asyncio.run(main())


def test_timeout_bounds_the_welcome_not_an_idle_connection(fake: FakeCluster) -> None:
    """``timeout`` bounds connecting; a client idle for longer keeps its connection."""
    transport = fake.transport()
    with Client(fake.mem_address, token="s3cret", timeout=0.2, set_as_default=False, transport=transport) as client:
        time.sleep(0.6)
        assert client.submit(inc, 1).result(timeout=5) == 2
        assert transport.dials.count(fake.mem_address) == 1, "it did not reconnect"


def test_scatter_timeout_is_honoured(fake: FakeCluster) -> None:
    with mem_client(fake) as client:
        assert client.gather(client.scatter([1, 2], timeout=5)) == [1, 2]
        fake.mute = {"info"}  # the scheduler does not answer: the timeout ends the call
        with pytest.raises(shoal.TimeoutError):
            client.scatter([3], timeout=0.2)


def test_async_data_pool_serves_concurrent_requests_on_several_connections() -> None:
    import asyncio

    from shoal._data import AsyncDataPool

    n = 3

    class S:
        def __init__(self, barrier: Any) -> None:
            self.barrier, self.closed, self.last = barrier, False, 0

        async def send(self, header: dict[str, Any], frames: Any = ()) -> None:
            self.last = header["id"]

        async def recv(self) -> tuple[dict[str, Any], list[bytearray]]:
            await asyncio.wait_for(self.barrier.wait(), 10)  # times out if the requests were serialised
            return {"op": "data", "id": self.last, "items": []}, []

        def close(self) -> None:
            self.closed = True

    async def main() -> None:
        barrier = asyncio.Barrier(n)
        dials: list[str] = []

        class T:
            async def connect_async(self, address: str, token: str, timeout: float) -> S:
                dials.append(address)
                return S(barrier)

        pool = AsyncDataPool(T(), lambda: "", 5, 5)  # type: ignore[arg-type]
        for _round in range(2):
            replies = await asyncio.gather(*(pool.request("w:1", {"op": "get_data", "keys": []}) for _ in range(n)))
            assert [r[0]["op"] for r in replies] == ["data"] * n
        assert len(dials) == n, "the second round reused the first round's connections"
        pool.close()

    asyncio.run(main())


def test_a_value_the_scheduler_places_where_it_is_not_is_asked_for_with_backoff() -> None:
    """A result the scheduler still says is on the worker that did not have it (and nowhere
    else): the client asks ``who_has`` again less and less often until ``fetch_timeout``,
    then raises FutureLostError. (The key's state stays finished, so its event is set, and
    the wait on it used to return at once: a request as fast as the scheduler answered.)"""
    from shoal.futures import KeyState

    asked: list[float] = []

    class Stub:
        fetch_timeout = 1.0

        def _request(self, msg: dict[str, Any]) -> dict[str, Any]:
            assert msg["op"] == "who_has"
            asked.append(time.monotonic())
            return {"who_has": {k: ["tcp://w1:1"] for k in msg["keys"]}}

    st = KeyState("k")
    st.finish("tcp://w1:1")
    t0 = time.monotonic()
    with pytest.raises(FutureLostError, match="no worker holds"):
        Client._relocate(Stub(), {"k": st}, 1)  # type: ignore[arg-type]
    took = time.monotonic() - t0
    assert 1.0 <= took < 3.0
    assert 3 <= len(asked) <= 8, f"{len(asked)} who_has requests in {took:.2f} s"
    gaps = [b - a for a, b in zip(asked, asked[1:])]
    assert gaps == sorted(gaps), "the polls grow apart"


def test_the_async_client_asks_for_a_misplaced_value_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """As above, for the asynchronous client's ``relocate``."""
    import asyncio

    from shoal import _async
    from shoal.futures import KeyState

    asked: list[float] = []

    async def fake_request(client: Any, header: dict[str, Any], timeout: Any = None) -> dict[str, Any]:
        assert header["op"] == "who_has"
        asked.append(time.monotonic())
        return {"who_has": {k: ["tcp://w1:1"] for k in header["keys"]}}

    class Stub:
        fetch_timeout = 1.0

    monkeypatch.setattr(_async, "request", fake_request)
    st = KeyState("k")
    st.finish("tcp://w1:1")
    with pytest.raises(FutureLostError, match="no worker holds"):
        asyncio.run(_async.relocate(Stub(), {"k": st}, 1))  # type: ignore[arg-type]
    assert 3 <= len(asked) <= 8, f"{len(asked)} who_has requests"
