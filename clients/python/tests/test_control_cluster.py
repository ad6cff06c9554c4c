"""Cluster control on a real LocalCluster: restart, retire_workers, replicate, rebalance,
processing, logs, scale and adapt (dask.distributed's names and semantics)."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import pytest

import shoal
from shoal import Client, LocalCluster

from conftest import needs_binary

pytestmark = [needs_binary, pytest.mark.cluster]


def inc(x: int) -> int:
    return x + 1


def slow(x: int, delay: float) -> int:
    time.sleep(delay)
    return x


def executor_pid() -> int:
    return os.getpid()


def until(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def local() -> Any:
    with LocalCluster(n_workers=2, dashboard_port=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=30)
        yield cluster, client


def test_restart_drops_work_and_restarts_processes(local: Any) -> None:
    cluster, client = local
    done = client.submit(inc, 1)
    assert done.result(timeout=30) == 2
    before = client.run(executor_pid)
    assert before is not None
    running = client.submit(slow, 1, 30, pure=False)
    until(lambda: any(client.processing().values()), what="the slow task running")
    worker_pids = {w["pid"] for w in client.scheduler_info()["workers"].values()}

    client.restart(timeout=30)

    # every future, finished or not, is cancelled with the reason
    for f in (done, running):
        with pytest.raises(shoal.CancelledError, match="restarted"):
            f.result(timeout=10)
    assert len(client.scheduler_info()["workers"]) == 2
    # the same worker processes (re-executed in place, as a supervisor sees no exit) ...
    assert {w["pid"] for w in client.scheduler_info()["workers"].values()} == worker_pids
    # ... holding nothing, with new executors
    assert not any(client.has_what().values())
    after = client.run(executor_pid)
    assert after is not None and set(after.values()).isdisjoint(set(before.values()))
    assert client.submit(inc, 10).result(timeout=30) == 11


def test_retire_workers_keeps_results(local: Any) -> None:
    cluster, client = local
    addrs = sorted(client.scheduler_info()["workers"])
    fs = [client.submit(inc, i, workers=[addrs[0]], pure=False) for i in range(5)]
    client.gather(fs)
    assert {w for ws in client.who_has(fs).values() for w in ws} == {addrs[0]}

    retired = client.retire_workers(workers=[addrs[0]])

    assert list(retired) == [addrs[0]]
    assert list(client.scheduler_info()["workers"]) == [addrs[1]]
    assert all(ws == [addrs[1]] for ws in client.who_has(fs).values())
    assert client.gather(fs) == [1, 2, 3, 4, 5]
    time.sleep(1)  # LocalCluster does not start the retired worker again
    assert len(cluster.workers) == 1


def test_replicate_and_rebalance(local: Any) -> None:
    cluster, client = local
    addrs = sorted(client.scheduler_info()["workers"])
    fs = [client.submit(inc, i, workers=[addrs[0]], pure=False) for i in range(8)]
    client.gather(fs)

    client.replicate(fs[:2])
    until(lambda: all(len(ws) == 2 for ws in client.who_has(fs[:2]).values()), what="two copies")

    client.rebalance(fs[2:])
    def spread() -> bool:
        wh = client.who_has(fs[2:])
        on = [ws[0] for ws in wh.values() if len(ws) == 1]
        return len(on) == 6 and on.count(addrs[1]) >= 2
    until(spread, what="values moved to the second worker, each dropped from the first")
    assert client.gather(fs) == list(range(1, 9))


def test_processing_and_logs(local: Any) -> None:
    cluster, client = local
    f = client.submit(slow, 1, 5, pure=False)
    busy = until(lambda: {a: ks for a, ks in client.processing().items() if ks}, what="processing")
    assert list(busy.values()) == [[f.key]]
    client.cancel(f)

    logs = client.get_worker_logs()
    assert sorted(logs) == sorted(client.scheduler_info()["workers"])
    for entries in logs.values():
        assert any("registered with the scheduler" in line for _, line in entries)
        assert all(level in ("DEBUG", "INFO", "WARN", "ERROR") for level, _ in entries)
    assert len(next(iter(client.get_worker_logs(n=2).values()))) == 2
    sched = client.get_scheduler_logs()
    assert any("worker joined" in line for _, line in sched)
    with pytest.raises(NotImplementedError, match="nanny"):
        client.get_worker_logs(nanny=True)


def test_scale_up_and_down_keeps_results(local: Any) -> None:
    cluster, client = local
    fs = client.map(inc, range(20))
    client.gather(fs)
    cluster.scale(3)
    assert len(client.scheduler_info()["workers"]) == 3 == len(cluster.workers)
    cluster.scale(1)
    assert len(client.scheduler_info()["workers"]) == 1
    assert sum(client.gather(fs)) == sum(range(1, 21))
    with pytest.raises(ValueError, match="n="):
        cluster.scale(-1)
    with pytest.raises(NotImplementedError, match="memory"):
        cluster.scale(memory="4GB")


def test_adapt_scales_on_pending_work() -> None:
    with LocalCluster(n_workers=1, dashboard_port=None) as cluster, Client(cluster) as client:
        adaptive = cluster.adapt(minimum=1, maximum=3, target_duration="1s", interval=0.2, wait_count=3)
        client.gather(client.map(slow, range(2), delay=0.3, pure=False))  # teaches the group's duration
        fs = client.map(slow, range(40), delay=0.3, pure=False)
        until(lambda: len(client.scheduler_info()["workers"]) == 3, what="scaling up to the maximum")
        assert client.gather(fs) == list(range(40))
        until(lambda: len(client.scheduler_info()["workers"]) == 1, what="scaling back down to the minimum")
        ups = [t for f, t in adaptive.log if t > f]
        downs = [t for f, t in adaptive.log if t < f]
        assert ups and max(ups) == 3 and downs and downs[-1] == 1
        cluster.scale(2)  # a manual scale stops adapting
        time.sleep(1.5)
        assert len(client.scheduler_info()["workers"]) == 2


def test_adapt_refuses_bad_bounds(local: Any) -> None:
    cluster, _ = local
    with pytest.raises(ValueError, match="minimum"):
        cluster.adapt(minimum=3, maximum=1)
    with pytest.raises(ValueError, match="target_duration"):
        cluster.adapt(target_duration="soon")
    with pytest.raises(NotImplementedError, match="maximum_memory"):
        cluster.adapt(maximum_memory="1GB")


def test_restart_workers_recomputes_and_story(local: Any) -> None:
    cluster, client = local
    f = client.submit(inc, 5, pure=False)
    assert f.result(timeout=30) == 6
    holder = client.who_has(f)[f.key][0]
    addrs = [holder] + [a for a in client.scheduler_info()["workers"] if a != holder]
    pids = {a: w["pid"] for a, w in client.scheduler_info()["workers"].items()}

    assert client.restart_workers([addrs[0]], timeout=30) == {addrs[0]: "OK"}

    infos = client.scheduler_info()["workers"]
    assert len(infos) == 2
    assert addrs[1] in infos and pids[addrs[1]] in {w["pid"] for w in infos.values()}
    # the future stays valid: its value was on the restarted worker, so it is computed again
    assert client.gather(f) == 6
    story = client.story(f)
    steps = [(start, finish) for _, start, finish, _, _ in story]
    assert ("processing", "memory") in steps and steps.count(("processing", "memory")) >= 2, story
    assert {k for k, *_ in story} == {f.key}
    assert any(ev == "worker-left" for *_, ev, _ in story)
    with pytest.raises(KeyError, match="never"):
        client.story("no-such-key")
    assert client.story("no-such-key", on_error="ignore") == []
