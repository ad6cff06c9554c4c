"""Tasks that submit tasks on a real LocalCluster: get_client, secede/rejoin, worker_client,
get_worker, with 1 thread per worker (where waiting without seceding would deadlock)."""

from __future__ import annotations

from typing import Any

import pytest

import shoal
from shoal import Client, LocalCluster, get_client, get_worker, rejoin, secede, wait, worker_client

from conftest import needs_binary

pytestmark = [needs_binary, pytest.mark.cluster]


def fib(n: int) -> int:
    if n < 2:
        return n
    client = get_client()
    a, b = client.submit(fib, n - 1, pure=False), client.submit(fib, n - 2, pure=False)
    secede()
    out = a.result() + b.result()
    rejoin()
    return int(out)


def fib_wc(n: int) -> int:
    if n < 2:
        return n
    with worker_client() as client:
        a, b = client.submit(fib_wc, n - 1, pure=False), client.submit(fib_wc, n - 2, pure=False)
        return int(a.result() + b.result())


def fanout(n: int) -> int:
    client = get_client()
    fs = client.map(lambda i: i * 2, range(n), pure=False)
    secede()
    return int(sum(client.gather(fs)))


def whoami() -> tuple[str, str, int]:
    import os

    w = get_worker()
    return w.address, get_client().scheduler_address, os.getpid()


@pytest.fixture(scope="module")
def one_thread() -> Any:
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_port=None) as cluster, Client(cluster) as client:
        yield client


def test_fib_by_recursive_submission(one_thread: Client) -> None:
    # 1,973 tasks, each waiting on two it submitted: 2 threads in all
    assert one_thread.submit(fib, 15, pure=False).result(timeout=120) == 610


def test_fib_with_worker_client(one_thread: Client) -> None:
    assert one_thread.submit(fib_wc, 12, pure=False).result(timeout=120) == 144


def test_a_task_fanning_out_ten_thousand_children(one_thread: Client) -> None:
    assert one_thread.submit(fanout, 10_000, pure=False).result(timeout=120) == 2 * sum(range(10_000))


def test_task_client_and_worker(one_thread: Client) -> None:
    workers = set(one_thread.scheduler_info()["workers"])
    got = one_thread.run(whoami)
    assert got is not None
    pids = set()
    for addr, (address, sched, pid) in got.items():
        assert address == addr and address in workers
        assert sched.split("://")[-1] == one_thread.scheduler_address.split("://")[-1]
        pids.add(pid)
    assert len(pids) == 2


def test_outside_a_task(one_thread: Client) -> None:
    assert get_client() is one_thread  # the default client
    with pytest.raises(ValueError, match="task"):
        secede()
    with pytest.raises(ValueError, match="task"):
        get_worker()
    rejoin()  # nothing to do


def test_a_failing_child_fails_the_parent(one_thread: Client) -> None:
    def parent() -> int:
        c = get_client()
        f = c.submit(lambda: 1 / 0, pure=False)
        secede()
        return int(f.result())

    with pytest.raises(ZeroDivisionError):
        one_thread.submit(parent, pure=False).result(timeout=60)
    assert shoal.default_client() is one_thread


def sleep_then(x: str, delay: float) -> str:
    import time

    time.sleep(delay)
    return x


def write_to(path: str) -> str:
    with open(path, "w") as f:
        f.write("done")
    return path


def test_fire_and_forget_runs_after_the_client_closes(tmp_path: Any) -> None:
    import time

    target = tmp_path / "fired"
    with LocalCluster(n_workers=1, dashboard_port=None) as cluster:
        with Client(cluster, set_as_default=False) as c:
            # write_to starts only after its input, a second later: by then the client is gone
            # and, without fire_and_forget, the task would have been released unstarted
            f = c.submit(write_to, c.submit(sleep_then, str(target), 1.0, pure=False), pure=False)
            shoal.fire_and_forget(f)
            key = f.key
            del f
        # the client is gone; the task still runs, and is forgotten once done
        deadline = time.monotonic() + 30
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert target.read_text() == "done"
        with Client(cluster, set_as_default=False) as other:
            deadline = time.monotonic() + 10
            while other.story(key, on_error="ignore") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert other.story(key, on_error="ignore") == [], "the task was kept after it ended"


def submit_and_return(x: int) -> Any:
    client = get_client()
    return {"inner": client.submit(inc_slowly, x, pure=False), "plain": x}


def inc_slowly(x: int) -> int:
    import time

    time.sleep(0.2)
    return x + 1


def test_futures_returned_from_tasks_stay_valid(one_thread: Client) -> None:
    """A task returns a future it submitted: the task's own client lets go of it when the task
    ends, but the scheduler keeps it while the result holding it lives, and the client reading
    the result gets a Future it can use."""
    import gc
    import time

    outer = one_thread.submit(submit_and_return, 41, pure=False)
    wait(outer)
    time.sleep(6.0)  # the task's own client has let go of inner by now (it keeps it 5 s)
    got = outer.result(timeout=60)
    inner = got["inner"]
    assert isinstance(inner, shoal.Future) and got["plain"] == 41
    assert inner.result(timeout=60) == 42
    key = inner.key
    del outer, got, inner
    gc.collect()
    deadline = time.monotonic() + 20  # the executor keeps it 5 s after the task (shoal._worker.retain)
    while one_thread.story(key, on_error="ignore") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert one_thread.story(key, on_error="ignore") == [], "the returned future was never let go"


def test_a_returned_future_belongs_to_the_client_that_reads_it(one_thread: Client) -> None:
    assert one_thread.cluster is not None
    with Client(one_thread.cluster, set_as_default=False) as other:
        got = other.submit(submit_and_return, 1, pure=False).result(timeout=60)
        assert got["inner"].client is other  # not the default client
        assert got["inner"].result(timeout=60) == 2
