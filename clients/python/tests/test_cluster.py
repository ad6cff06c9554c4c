"""End-to-end tests against a real LocalCluster (the Go binary); skipped without it."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
import time
import traceback
from operator import add
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import shoal
from shoal import (
    AuthenticationError,
    CancelledError,
    Client,
    ConnectError,
    KilledWorker,
    LocalCluster,
    as_completed,
    wait,
)
from shoal.cluster import children_of
from shoal.exceptions import RemoteTraceback

from conftest import needs_binary

pytestmark = [needs_binary]


def inc(x: int) -> int:
    return x + 1


def slow_inc(x: int, delay: float = 0.2) -> int:
    time.sleep(delay)
    return x + 1


class MyError(ValueError):
    pass


def fail(x: int) -> int:
    raise MyError(f"bad {x}")


def test_submit_map_gather(client: Client) -> None:
    assert client.submit(lambda x: x + 1, 10).result(timeout=30) == 11
    futures = client.map(inc, range(100))
    assert client.gather(futures) == list(range(1, 101))
    total = client.submit(sum, futures)
    assert total.result(timeout=30) == sum(range(1, 101))
    nested = client.gather({"a": futures[0], "b": [futures[1], (futures[2], 7)]})
    assert nested == {"a": 1, "b": [2, (3, 7)]}


def test_pure_keys_and_impure(client: Client) -> None:
    a, b = client.submit(inc, 1), client.submit(inc, 1)
    assert a.key == b.key and a.key.startswith("inc-")
    c, d = client.submit(inc, 1, pure=False), client.submit(inc, 1, pure=False)
    assert c.key != d.key
    assert client.submit(inc, 5, key="my-key").key == "my-key"


def test_futures_as_arguments(client: Client) -> None:
    x = client.submit(inc, 1)
    y = client.submit(add, x, 10)
    z = client.submit(lambda d: d["v"][0] * 2, {"v": [y]})
    assert z.result(timeout=30) == 24


def test_scatter(client: Client) -> None:
    arr = np.arange(10_000.0)
    [f] = client.scatter([arr])
    assert client.submit(np.sum, f).result(timeout=30) == arr.sum()
    np.testing.assert_array_equal(f.result(timeout=30), arr)
    d = client.scatter({"xs": [1, 2, 3]})
    assert client.submit(len, d["xs"]).result(timeout=30) == 3
    b = client.scatter(42, broadcast=True)
    assert b.result(timeout=30) == 42


def test_exception_type_and_traceback(client: Client) -> None:
    f = client.submit(fail, 3)
    with pytest.raises(MyError, match="bad 3") as info:
        f.result(timeout=30)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    text = str(info.value.__cause__)
    assert "in fail" in text and "MyError: bad 3" in text
    assert "in fail" in "".join(traceback.format_tb(f.traceback()))
    assert isinstance(f.exception(), MyError)
    assert f.status == "error"
    # dependents fail too
    g = client.submit(inc, f)
    with pytest.raises(MyError):
        g.result(timeout=30)


def test_retries(client: Client, tmp_path: Any) -> None:
    marker = tmp_path / "count"

    def flaky() -> str:
        n = int(marker.read_text()) if marker.exists() else 0
        marker.write_text(str(n + 1))
        if n < 2:
            raise RuntimeError("flaky")
        return "ok"

    assert client.submit(flaky, retries=3, pure=False).result(timeout=60) == "ok"


def test_cancel(client: Client) -> None:
    f = client.submit(time.sleep, 30, pure=False)
    g = client.submit(inc, f)
    f.cancel()
    with pytest.raises(CancelledError):
        f.result(timeout=10)
    with pytest.raises((CancelledError, shoal.ShoalError)):
        g.result(timeout=10)
    assert f.status == "cancelled"


def test_a_task_released_while_it_runs_and_submitted_again_gives_its_result() -> None:
    """The scheduler cancels the run on the release and gives the worker the task again: the
    worker's run under way becomes the new run, whose result is kept (a report of the
    cancelled run, or the worker skipping the second compute as a repeat, left the future
    without a value or without a run)."""
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster) as client:
        for round in range(3):
            f = client.submit(slow_inc, round, 0.6)
            key = f.key
            deadline = time.monotonic() + 30
            while key not in sum(client.processing().values(), []):
                assert time.monotonic() < deadline, "the task never started"
                time.sleep(0.02)
            time.sleep(0.2)  # running in the executor
            f.release()
            while key in sum(client.processing().values(), []):  # the release reached the scheduler
                assert time.monotonic() < deadline, "the release was not seen"
                time.sleep(0.01)
            g = client.submit(slow_inc, round, 0.6)
            assert g.key == key
            assert g.result(timeout=30) == round + 1
            assert client.gather(g) == round + 1
            del g


def test_wait_and_as_completed(client: Client) -> None:
    futures = client.map(slow_inc, range(6), delay=0.05)
    done, not_done = wait(futures, timeout=60)
    assert len(done) == 6 and not not_done
    futures = client.map(slow_inc, range(10, 16), delay=0.05)
    results = sorted(r for _, r in as_completed(futures, with_results=True))
    assert results == list(range(11, 17))
    first = wait([client.submit(time.sleep, 0.01, pure=False), client.submit(time.sleep, 20, pure=False)],
                 return_when="FIRST_COMPLETED", timeout=30)
    assert len(first.done) >= 1


def test_done_callback(client: Client) -> None:
    seen: list[str] = []
    f = client.submit(inc, 100)
    f.add_done_callback(lambda fut: seen.append(fut.status))
    f.result(timeout=30)
    deadline = time.time() + 10
    while not seen and time.time() < deadline:
        time.sleep(0.01)
    assert seen == ["finished"]


def test_executor_crash(client: Client) -> None:
    """An executor dying under a task is a worker death to the scheduler: the task runs again
    and after three deaths fails with KilledWorker, as a task killing dask workers does."""
    f = client.submit(os._exit, 7, pure=False)
    with pytest.raises(KilledWorker, match="3 workers .*died"):
        f.result(timeout=60)
    # the worker keeps serving Python tasks
    assert client.submit(inc, 1000).result(timeout=60) == 1001


def test_dask_delayed_array_dataframe(client: Client) -> None:
    import dask
    import dask.array as da
    import dask.dataframe as dd

    @dask.delayed
    def double(x: int) -> int:
        return 2 * x

    total = dask.delayed(sum)([double(i) for i in range(20)])
    assert total.compute(scheduler=client.get) == total.compute(scheduler="sync")

    x = da.random.RandomState(0).random((400, 400), chunks=(100, 100))
    y = (x @ x.T).mean()
    assert np.isclose(y.compute(scheduler=client.get), y.compute(scheduler="sync"))

    rng = np.random.default_rng(0)
    pdf = pd.DataFrame({"k": rng.integers(0, 10, 1000), "v": rng.random(1000)})
    names = pd.DataFrame({"k": range(10), "name": [f"n{i}" for i in range(10)]})
    df = dd.from_pandas(pdf, npartitions=8)
    with dask.config.set(scheduler=client.get):
        g = df.groupby("k").v.sum().compute()
        m = df.merge(dd.from_pandas(names, npartitions=2), on="k").compute()
        s = df.set_index("v").compute()
    pd.testing.assert_series_equal(g, df.groupby("k").v.sum().compute(scheduler="sync"))
    want_m = df.merge(dd.from_pandas(names, npartitions=2), on="k").compute(scheduler="sync")
    pd.testing.assert_frame_equal(m.sort_values(["k", "v"]).reset_index(drop=True),
                                  want_m.sort_values(["k", "v"]).reset_index(drop=True))
    pd.testing.assert_frame_equal(s, df.set_index("v").compute(scheduler="sync"))

    # compute / persist return futures and persisted collections
    fut = client.compute(y)
    assert np.isclose(fut.result(timeout=60), y.compute(scheduler="sync"))
    xp = client.persist(x)
    assert np.isclose(xp.sum().compute(scheduler=client.get), x.sum().compute(scheduler="sync"))


def test_arrow_round_trip_through_go(client: Client) -> None:
    table = client.submit(lambda n: pa.table({"x": list(range(n))}), 123)
    rows = client.submit_go("row_count", table)
    assert rows.result(timeout=30) == 123
    df = client.submit(lambda: pd.DataFrame({"a": [1, 2, 3]}))
    assert client.submit_go("row_count", df).result(timeout=30) == 3
    go_table = client.submit_go("arrow_table", 5)
    back = client.submit(lambda t: t.num_rows, go_table)
    assert back.result(timeout=30) >= 0
    assert isinstance(go_table.result(timeout=30), (pa.Table, pd.DataFrame))
    assert client.submit_go("inc", 41).result(timeout=30) == 42


def test_scheduler_info(client: Client) -> None:
    info = client.scheduler_info()
    assert len(info["workers"]) == 2
    for addr, w in info["workers"].items():
        assert ":" in addr and w["nthreads"] == 2 and "memory_limit" in w


def test_release_on_gc(client: Client) -> None:
    f = client.submit(inc, 12345)
    key = f.key
    f.result(timeout=30)
    del f
    gc.collect()
    deadline = time.time() + 5
    while key in client._states and time.time() < deadline:
        time.sleep(0.02)
    assert key not in client._states


def test_async_client(cluster: LocalCluster) -> None:
    async def main() -> None:
        async with Client(cluster, asynchronous=True) as client:
            assert await client.submit(inc, 1) == 2
            futures = client.map(inc, range(5))
            assert await client.gather(futures) == [1, 2, 3, 4, 5]

    asyncio.run(main())


def test_wrong_token_and_address(cluster: LocalCluster) -> None:
    with pytest.raises(AuthenticationError):
        Client(cluster.scheduler_address, token="wrong", timeout=5)
    with pytest.raises(ConnectError):
        Client("127.0.0.1:1", timeout=5)


def test_no_token() -> None:
    with LocalCluster(n_workers=1, token="", dashboard_port=None) as cluster:
        assert not os.path.exists(cluster._token_file)
        with Client(cluster.scheduler_address, timeout=20) as client:  # presents no token
            assert client.submit(inc, 1).result(timeout=30) == 2


def test_worker_killed_midway() -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_port=None) as cluster, \
            Client(cluster, timeout=20) as client:
        futures = client.map(slow_inc, range(20), delay=0.3)
        time.sleep(1.0)
        pids = _worker_pids(cluster, client)
        assert pids, "could not find worker processes"
        os.kill(pids[0], signal.SIGKILL)
        assert client.gather(futures) == list(range(1, 21))


def _worker_pids(cluster: LocalCluster, client: Client) -> list[int]:
    info = client.scheduler_info()
    pids = [int(w["pid"]) for w in info["workers"].values() if w.get("pid")]
    if pids:
        return pids
    out = []
    for pid in children_of(cluster.proc.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) > 1 and argv[1] == b"worker":
            out.append(pid)
    return out


def test_local_cluster_leaves_nothing_behind() -> None:
    cluster = LocalCluster(n_workers=2, dashboard_port=None)
    with Client(cluster) as client:
        client.submit(inc, 1).result(timeout=30)  # starts executors too
    pgid = cluster.pgid
    assert len(cluster.pids()) >= 3
    cluster.close()
    assert cluster.pids() == []
    assert not any(_in_group(p, pgid) for p in os.listdir("/proc") if p.isdigit())


def test_workers_start_python_before_the_first_task() -> None:
    """LocalCluster's workers start their executors as they join (start_python, the default),
    before any task; with start_python=False none starts until a Python task asks for one. The
    executor imports none of the client's modules (shoal's names are imported on first use)."""
    with LocalCluster(n_workers=2, dashboard_port=None) as cluster:
        deadline = time.monotonic() + 30
        while len(executors_of(cluster.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(executors_of(cluster.proc.pid)) == 2, "no executor started ahead of a task"
        with Client(cluster) as client:
            # (a function of this module would import it, and shoal's client with it)
            mods = client.submit(eval, "sorted(__import__('sys').modules)", pure=False).result(timeout=30)
        assert "shoal._wire" in mods and "shoal.client" not in mods and "dask" not in mods
    with LocalCluster(n_workers=1, dashboard_port=None, start_python=False) as cluster:
        time.sleep(0.5)  # (started ahead, one is up in ~0.1 s)
        assert executors_of(cluster.proc.pid) == []
        with Client(cluster) as client:
            assert client.submit(inc, 1, pure=False).result(timeout=30) == 2
        assert len(executors_of(cluster.proc.pid)) == 1


def test_close_stops_running_tasks() -> None:
    """Closing a local cluster does not wait for the tasks its workers run: the scheduler stops
    right after them, so no one would get the results. (Each worker gave its running tasks its
    --shutdown-grace, 10 s, so a close waited that long for a long Go task; `shoal local` now
    passes 0. A Python task's executor gets the process group's SIGTERM and is gone at once.)"""
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_port=None)
    client = Client(cluster)
    try:
        nap = client.submit_go("sleep", 60.0, pure=False)
        deadline = time.monotonic() + 30
        while nap.key not in {k for per in client.call_stack().values() for k in per}:
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.02)
        t0 = time.monotonic()
        cluster.close()
        took = time.monotonic() - t0
        assert cluster.pids() == []
        # a behaviour, not a speed: waiting out the old grace took 10 s, the task itself 60
        assert took < 10, f"the close waited {took:.1f} s for a running task"
    finally:
        client.close()


def _in_group(pid: str, pgid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[-1].split()
        return rest[0] != "Z" and int(rest[2]) == pgid
    except OSError:
        return False


def test_client_owns_cluster_when_no_address() -> None:
    with Client() as client:
        assert client.submit(inc, 1).result(timeout=30) == 2
        cluster = client.cluster
    assert cluster is not None and cluster.pids() == []


def test_get_split_into_many_update_graph_messages(client: Client, monkeypatch: Any) -> None:
    """A graph too big for one message is sent in batches; every wanted key of every batch
    survives until the last batch arrives (a regression: earlier batches' wanted keys were
    dropped and the last batch was refused as missing-dependency)."""
    import shoal.client as client_mod

    monkeypatch.setattr(client_mod, "_UPDATE_BATCH_BYTES", 2000)
    dsk: dict[str, Any] = {f"ind-{i}": (inc, i) for i in range(200)}
    keys = list(dsk)  # independent: no later batch needs an earlier batch's keys
    assert len(client_mod._split_batches([{"key": k} for k in keys])) > 5
    result = client.get(dsk, keys)
    assert list(result) == [i + 1 for i in range(200)]


def test_map_split_into_many_messages_keeps_results(client: Client, monkeypatch: Any) -> None:
    """client.map of a batch too big for one message: results of every batch stay wanted
    (releasing the temporarily held keys must not drop the client's own wants)."""
    import shoal.client as client_mod

    monkeypatch.setattr(client_mod, "_UPDATE_BATCH_BYTES", 2000)
    futures = client.map(inc, range(300))
    assert client.gather(futures) == [i + 1 for i in range(300)]
    time.sleep(0.3)  # a wrongly released key would be forgotten by now
    assert client.gather(futures) == [i + 1 for i in range(300)]


def hold_then_sum(*arrays: Any) -> float:
    held = np.stack(arrays)  # the executor's own copy of every input, on top of the stored ones
    time.sleep(2)  # keep it alive while the memory monitor (every 50 ms) looks
    return float(held.sum())


def test_memory_limit_counts_the_executor() -> None:
    # 6 × 32 MiB results = 192 MiB: under the store's own target (0.6 × 600 MiB = 360 MiB),
    # but while the last task holds a copy of all of them in the executor, the worker and its
    # executor together (192 MiB stored + 192 MiB copied + the processes themselves) are above
    # the spill threshold (0.7 × 600 MiB = 420 MiB), so the memory monitor must spill results
    # even though the store alone never asked for it. (With 8 results and no copy the margin
    # was the executor's own size, and under load the monitor sometimes stayed under.)
    n = 4 << 20  # float64 values per array: 32 MiB
    with LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="600MiB",
                      dashboard_port=None) as cluster, Client(cluster) as client:
        parts = [client.submit(np.full, n, float(i), pure=False) for i in range(6)]
        wait(parts, timeout=60)
        total = client.submit(hold_then_sum, *parts, pure=False)
        assert total.result(timeout=60) == float(sum(i * n for i in range(6)))
        deadline = time.monotonic() + 10  # spill figures arrive with the next heartbeat
        spilled = 0
        while time.monotonic() < deadline and not spilled:
            (w,) = client.scheduler_info()["workers"].values()
            spilled = int(w["spilled"])
            time.sleep(0.2)
        assert spilled > 0, cluster.logs(tail=40)
        # spilled results still come back intact
        assert float(client.gather(parts[3]).sum()) == 3.0 * n


def test_memory_limit_zero_means_no_limit() -> None:
    from shoal.cluster import total_memory

    with LocalCluster(n_workers=1, memory_limit=0, dashboard_port=None) as cluster, \
            Client(cluster) as client:
        # "0" reaches the workers, which then never spill or pause (cli/worker_test.go)
        assert cluster.args[cluster.args.index("--memory-limit") + 1] == "0"
        (w,) = client.scheduler_info()["workers"].values()
        assert int(w["memory_limit"]) == total_memory() == cluster.memory_limit
        assert client.submit(inc, 1).result(timeout=30) == 2


def test_memory_fractions_reach_the_workers() -> None:
    # memory_spill_fraction=False turns the process-memory monitor off, as in dask; with a
    # tiny pause fraction the worker would then pause only on stored results, so a task that
    # stores nothing still runs. Bad fractions are refused with the flag's name.
    with LocalCluster(n_workers=1, dashboard_port=None, memory_target_fraction=0.5,
                      memory_spill_fraction=False, memory_pause_fraction=0.9) as cluster:
        assert cluster.args[cluster.args.index("--memory-spill") + 1] == "0.0"
        assert cluster.args[cluster.args.index("--memory-target") + 1] == "0.5"
        with Client(cluster) as client:
            assert client.submit(inc, 1).result(timeout=30) == 2
    with pytest.raises(Exception, match="--memory-pause 1.5"):
        LocalCluster(n_workers=1, dashboard_port=None, memory_pause_fraction=1.5, timeout=20)


def getenv(name: str) -> Any:
    return os.environ.get(name)


def test_executors_run_numerical_libraries_single_threaded(monkeypatch: Any) -> None:
    """A task slot is one core: executors get OMP/MKL/OpenBLAS at one thread each (each
    executor's BLAS on every core oversubscribed them), unless the environment says otherwise."""
    with LocalCluster(n_workers=1, dashboard_port=None) as cluster, Client(cluster) as client:
        got = client.gather([client.submit(getenv, v, pure=False)
                             for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")])
        assert got == ["1", "1", "1"]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with LocalCluster(n_workers=1, dashboard_port=None) as cluster, Client(cluster) as client:
        assert client.submit(getenv, "OMP_NUM_THREADS", pure=False).result() == "3"


def environ_of(pid: int) -> dict[str, str]:
    """The environment process pid was executed with."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(kv.decode().partition("=")[::2] for kv in f.read().split(b"\0") if kv)


def test_go_processes_keep_the_runtime_monitor_awake(monkeypatch: Any) -> None:
    """The scheduler and the workers run with GODEBUG=schedtrace=<2^31-1 ms> added to the
    caller's GODEBUG (cli/sysmon.go: the Go runtime's monitor thread otherwise polls every
    20 µs after each idle spell), by re-executing themselves; what they start, executors and
    so the tasks, gets the caller's GODEBUG back. A caller that names schedtrace keeps its own."""
    monkeypatch.setenv("GODEBUG", "madvdontneed=1")
    with LocalCluster(n_workers=2, dashboard_port=None) as cluster, Client(cluster) as client:
        procs = [cluster.proc.pid, *_worker_pids(cluster, client)]
        assert len(procs) == 3, procs  # `shoal local` (the scheduler) and its two workers
        for pid in procs:
            assert environ_of(pid)["GODEBUG"] == "madvdontneed=1,schedtrace=2147483647", pid
        assert client.submit(getenv, "GODEBUG", pure=False).result() == "madvdontneed=1"
        assert client.submit(getenv, "SHOAL_CALLER_GODEBUG", pure=False).result() is None
    monkeypatch.setenv("GODEBUG", "schedtrace=0")
    with LocalCluster(n_workers=1, dashboard_port=None) as cluster, Client(cluster) as client:
        procs = [cluster.proc.pid, *_worker_pids(cluster, client)]
        assert len(procs) == 2, procs
        for pid in procs:
            env = environ_of(pid)
            assert env["GODEBUG"] == "schedtrace=0" and "SHOAL_CALLER_GODEBUG" not in env, pid
        assert client.submit(getenv, "GODEBUG", pure=False).result() == "schedtrace=0"


def rss_mib(pid: str | int = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


def fill_and_free(nbytes: int) -> int:
    """Allocate and touch nbytes in one block, free it, and return this process's RSS after."""
    a = np.ones(nbytes // 8)
    del a
    return rss_mib()


def executors_of(pid: int) -> list[int]:
    """The Python executors among pid's descendants, from one look at /proc."""
    out = []
    for c in children_of(pid):
        try:
            with open(f"/proc/{c}/cmdline", "rb") as f:
                if b"shoal.executor" in f.read():
                    out.append(c)
        except OSError:
            pass
    return out


def test_executors_keep_freed_memory_while_busy(monkeypatch: Any) -> None:
    """An executor's C heap keeps a large freed block for the next allocations (the kernel
    zeroes fresh pages, on VMs slowly), and gives it back once no run started for a while,
    read from /proc without running anything; a user's own MALLOC_ settings are left alone."""
    big = 400 << 20
    monkeypatch.setenv("SHOAL_EXECUTOR_TRIM_IDLE", "0.5")  # (a minute by default)
    with LocalCluster(n_workers=1, dashboard_port=None, memory_limit="8GiB") as cluster, Client(cluster) as client:
        assert client.submit(getenv, "MALLOC_MMAP_MAX_", pure=False).result() is None, \
            "the worker's glibc settings are the executor's, not its tasks' children's"
        base = client.submit(rss_mib, pure=False).result()
        # (8 GiB: one executor keeps 1 GiB, more than the array)
        kept = client.submit(fill_and_free, big, pure=False).result()
        assert kept - base >= (big >> 20) * 3 // 4, (base, kept)
        [pid] = executors_of(cluster.proc.pid)
        deadline = time.monotonic() + 20
        while rss_mib(pid) - base > (big >> 20) // 4:
            assert time.monotonic() < deadline, f"still {rss_mib(pid)} MiB after idling (base {base})"
            time.sleep(0.2)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    with LocalCluster(n_workers=1, dashboard_port=None, memory_limit="8GiB") as cluster, Client(cluster) as client:
        base = client.submit(rss_mib, pure=False).result()
        assert client.submit(fill_and_free, big, pure=False).result() - base < (big >> 20) // 4


def test_client_starts_a_cluster_from_dask_keywords() -> None:
    """Client(n_workers=..., threads_per_worker=...) — the first line of many dask scripts —
    starts a LocalCluster of that shape; options that mean nothing are refused, not ignored."""
    with Client(n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        workers = list(client.scheduler_info()["workers"].values())
        assert [w["nthreads"] for w in workers] == [2]
        assert client.dashboard_link == ""
        assert client.submit(inc, 1).result() == 2
    with pytest.raises(TypeError, match="nonsense"):
        LocalCluster(n_workers=1, nonsense=1)
    with pytest.raises(TypeError, match="n_workers"):
        Client("127.0.0.1:1", n_workers=2)


def held_keys(client: Client) -> set[str]:
    return {k for ks in client.has_what().values() for k in ks}


def test_large_arguments_go_by_the_data_plane(client: Client) -> None:
    """A large argument (bytes, numpy, pandas) is scattered to a worker and passed by
    reference, as dask's auto-scatter does, never in a control message; with a worker on this
    machine it travels as a sealed memfd, and without that, as bytes on the data port."""
    big = np.arange(20_000_000, dtype="u4")  # 80 MB
    # submit lets go of the future of the argument it scatters once the task is submitted (the
    # task holds the value from then on), and has_what lists only keys this client holds: keep
    # the scattered futures, so that whether the value is held does not depend on when that is
    scattered: list[Any] = []
    scatter = client.scatter

    def keep(*args: Any, **kwargs: Any) -> Any:
        f = scatter(*args, **kwargs)
        scattered.append(f)
        return f

    client.scatter = keep  # type: ignore[method-assign]
    try:
        f = client.submit(slow_sum, big, 5.0, pure=False)
    finally:
        del client.scatter
    assert [s.key.split("-")[0] for s in scattered] == ["ndarray"], "the array was not scattered"
    until_held = time.time() + 10
    while scattered[0].key not in held_keys(client) and time.time() < until_held:
        time.sleep(0.02)
    assert scattered[0].key in held_keys(client), "no worker holds the scattered array"
    assert f.result(timeout=60) == int(big.sum())
    assert client.submit(len, b"x" * (65 << 20)).result(timeout=60) == 65 << 20
    df = pd.DataFrame({"x": np.arange(300_000)})
    assert client.submit(lambda d: int(d.x.sum()), df).result(timeout=60) == int(df.x.sum())
    assert not client._no_segments, "the worker refused the client's shared-memory segments"
    # the same over the socket, as for a worker on another machine
    old = shoal.client._segments.available
    shoal.client._segments.available = lambda: False  # type: ignore[assignment]
    try:
        assert client.submit(slow_sum, big + 1, 0, pure=False).result(timeout=60) == int((big + 1).sum())
    finally:
        shoal.client._segments.available = old  # type: ignore[assignment]


def slow_sum(a: Any, delay: float) -> int:
    time.sleep(delay)
    return int(a.sum())


def test_oversized_message_is_refused_and_the_client_goes_on(client: Client) -> None:
    """An argument too large for a message header that is not scattered for you (here, inside
    a list) is refused before it is sent, with advice, and the connection stays usable (once,
    it was closed by the scheduler and every later call failed)."""
    with pytest.raises(shoal.FrameTooLargeError, match="scatter"):
        client.submit(len, [b"x" * (65 << 20)])
    assert client.submit(inc, 41).result(timeout=30) == 42
    big = client.scatter(b"x" * (65 << 20))
    assert client.submit(len, big).result(timeout=60) == 65 << 20


def test_submit_options_are_honoured_or_refused(client: Client) -> None:
    """allow_other_workers=True lets a task restricted to absent workers run elsewhere (it used
    to wait for ever); actor=True is refused instead of reaching the function as a keyword."""
    f = client.submit(inc, 1, workers=["no-such-worker"], allow_other_workers=True, pure=False)
    assert f.result(timeout=30) == 2
    assert client.gather(client.map(inc, [1, 2], workers=["nope"], allow_other_workers=True, pure=False)) == [2, 3]
    with pytest.raises(NotImplementedError, match="actor"):
        client.submit(inc, 1, actor=True)
    with pytest.raises(ValueError, match="allow_other_workers"):
        client.submit(inc, 1, allow_other_workers=True)


def hog(nbytes: int) -> int:
    block = np.ones(nbytes, dtype="u1")  # touched: resident
    time.sleep(10)
    return int(block.sum())


def test_memory_limit_is_enforced() -> None:
    """A task that takes far more memory than its worker's limit has its executor killed over
    the terminate threshold, as dask's nanny kills the worker; it runs again, and after the
    third death fails with KilledWorker naming the cause each time. The worker goes on."""
    with LocalCluster(n_workers=1, memory_limit="300MiB", dashboard_port=None) as cluster, \
            Client(cluster) as client:
        f = client.submit(hog, 600 << 20, pure=False)
        with pytest.raises(KilledWorker) as info:
            f.result(timeout=90)
        msg = str(info.value)
        assert msg.count("exceeded the memory limit of the worker") == 3, msg
        assert re.search(r"\(\d+ MiB used of 300 MiB", msg), msg
        assert client.submit(inc, 1).result(timeout=30) == 2


def test_wait_for_workers_and_has_what(client: Client) -> None:
    client.wait_for_workers(2, timeout=10)
    with pytest.raises(shoal.TimeoutError, match="2 of 3 workers"):
        client.wait_for_workers(3, timeout=0.3)
    addrs = sorted(client.scheduler_info()["workers"])
    f = client.submit(inc, 10, workers=[addrs[1]], pure=False)
    assert f.result(timeout=30) == 11
    held = client.has_what()
    assert sorted(held) == addrs
    assert f.key in held[addrs[1]] and f.key not in held[addrs[0]]
    assert list(client.has_what(workers=addrs[0])) == [addrs[0]]


def boom() -> None:
    raise ValueError("here")


def test_run_on_every_worker(client: Client) -> None:
    addrs = sorted(client.scheduler_info()["workers"])
    pids = client.run(os.getpid)
    assert pids is not None and sorted(pids) == addrs and len(set(pids.values())) == 2
    assert list(client.run(os.getpid, workers=[addrs[0]]) or {}) == [addrs[0]]
    got = client.run(boom, on_error="return") or {}
    assert sorted(got) == addrs and all(isinstance(e, ValueError) for e in got.values())
    assert client.run(boom, on_error="ignore") == {}
    with pytest.raises(ValueError, match="here"):
        client.run(boom)
    with pytest.raises(NotImplementedError, match="Go"):
        client.run_on_scheduler(os.getpid)


def test_versions_reprs_and_progress(client: Client, monkeypatch: Any) -> None:
    v = client.get_versions(check=True)
    assert sorted(v) == ["client", "scheduler", "workers"]
    assert len(v["workers"]) == 2
    assert v["client"]["packages"]["numpy"] == np.__version__
    assert v["scheduler"]["packages"]["shoal"] == shoal.__version__
    monkeypatch.setattr(client, "server_version", "0.0.0-other")
    with pytest.raises(ValueError, match="Mismatched versions found\\nshoal: client"):
        client.get_versions(check=True)
    monkeypatch.undo()

    f = client.submit(inc, 1, pure=False)
    f.result(timeout=30)
    assert f.key in f._repr_html_() and "finished" in f._repr_html_()
    page = client._repr_html_()
    assert "Shoal Client" in page and "<td style='text-align: left'>2</td>" in page
    import io

    out = io.StringIO()
    shoal.progress(f, notebook=False, file=out)
    assert "100% Completed" in out.getvalue()
    bar = shoal.progress(f, notebook=True)  # the Jupyter widget (in a kernel: test_notebook_cluster.py)
    assert bar is not None and bar.finished.wait(30)
    assert [(b.value, b.max, b.bar_style) for b in bar.bars.values()] == [(1, 1, "success")]


def test_local_cluster_repr_html() -> None:
    with LocalCluster(n_workers=1, dashboard_port=None) as cluster:
        page = cluster._repr_html_()
        assert "Shoal LocalCluster" in page and html_escape(cluster.scheduler_address) in page


def html_escape(s: str) -> str:
    import html

    return html.escape(s)


def sleepy() -> int:
    time.sleep(30)
    return 1


def test_executors_die_with_their_worker() -> None:
    """A worker killed with SIGKILL takes its Python executors with it (they would otherwise
    run their task on, holding what it held)."""
    with LocalCluster(n_workers=1, dashboard_port=None, extra_args=["--no-restart"]) as cluster, \
            Client(cluster) as client:
        client.submit(sleepy, pure=False)
        worker = next(iter(client.scheduler_info()["workers"].values()))
        # the executors from one look at /proc (a child seen once may be gone at the next)
        deadline = time.time() + 30
        executors = executors_of(worker["pid"])
        while not executors and time.time() < deadline:
            time.sleep(0.05)
            executors = executors_of(worker["pid"])
        assert executors, "the worker started no Python executor"
        os.kill(worker["pid"], signal.SIGKILL)

        def alive(pid: int) -> bool:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False

        deadline = time.time() + 10
        while any(alive(p) for p in executors) and time.time() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in executors)


def sleep_then(x: Any, seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_tasks_that_turn_out_long_are_stolen() -> None:
    """Tasks placed on a worker while their group's tasks took microseconds (next to their
    100 MB input) are still stolen by an idle worker once they turn out to take a second: the
    scheduler books them again at what the group takes now before it judges whether that
    worker holds enough work to be worth stealing from."""
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_port=None) as cluster, \
            Client(cluster, timeout=20) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        data = client.submit(np.ones, 12_500_000, workers=[a], pure=False)  # 100 MB on a
        wait([data], timeout=30)
        for w in (a, b):  # each executor imports this module (seconds) outside the group below
            assert client.submit(sleep_then, None, 0.0, workers=[w], pure=False).result(timeout=30) == 0.0
        for i in range(5):  # the group's tasks take microseconds
            assert client.submit(sleep_then, None, 0.0, key=f"stalegroup-{i}").result(timeout=30) == 0.0
        slow = [client.submit(sleep_then, data, 1.0, key=f"stalegroup-{i}") for i in range(5, 9)]
        assert client.gather(slow) == [1.0] * 4
        where = client.who_has(slow)
        assert any(b in ws for ws in where.values()), f"no task was stolen from {a}: {where}"
