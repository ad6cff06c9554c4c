"""Shared state held by the scheduler (Variable, Queue, Lock, Semaphore, Event, datasets) on a
real LocalCluster: from two clients, from tasks, and with a lock holder that dies."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest

from shoal import Client, Event, LimitExceededError, LocalCluster, Lock, Queue, Semaphore, Variable, wait
from shoal import TimeoutError as ShoalTimeout

from conftest import BINARY, needs_binary

pytestmark = needs_binary


@pytest.fixture(scope="module")
def other(cluster: LocalCluster) -> Any:
    """A second client of the same cluster."""
    with Client(cluster, timeout=20, set_as_default=False) as c:
        yield c


def settle(client: Client) -> None:
    """Make the client's dropped futures reach the scheduler before the next request."""
    import gc

    gc.collect()
    client._flush_releases()
    client.scheduler_info()  # a round trip after the release_keys on the same connection


# ---- tasks (module level: pickled by reference) --------------------------------------------

def _client_in_task(addr: str, token: str) -> Client:
    return Client(addr, token=token, timeout=20)


def set_variable(addr: str, token: str, name: str, value: Any) -> str:
    with _client_in_task(addr, token) as c:
        Variable(name, client=c).set(value)
        return "set"


def get_variable(addr: str, token: str, name: str) -> Any:
    with _client_in_task(addr, token) as c:
        v = Variable(name, client=c).get(timeout=30)
        return v.result() if hasattr(v, "result") else v


def consume(addr: str, token: str, name: str, n: int) -> list[int]:
    """Take n futures from the queue and return their values."""
    with _client_in_task(addr, token) as c:
        q = Queue(name, client=c)
        return [q.get(timeout=30).result() for _ in range(n)]


def wait_event(addr: str, token: str, name: str) -> bool:
    with _client_in_task(addr, token) as c:
        return Event(name, client=c).wait(timeout=60)


def with_lock(addr: str, token: str, name: str, i: int) -> tuple[int, int]:
    """Append to a shared list under a lock: no update may be lost."""
    with _client_in_task(addr, token) as c:
        v = Variable(name + "-list", client=c)
        with Lock(name, client=c):
            items = v.get(timeout=30)
            v.set(items + [i])
        return i, len(items)


def hold_lock(addr: str, token: str) -> str:
    """Take the lock, say where we run, and never let go (the test kills our worker)."""
    import time

    c = _client_in_task(addr, token)  # kept open: the lease lives on its connection
    if Event("holder-started", client=c).is_set():
        return "rerun"  # rescheduled after the kill: the lock is the test's now
    lock = Lock("held", client=c, lease_timeout=2)
    assert lock.acquire()
    Event("holder-started", client=c).set()
    Queue("holder", client=c).put([os.getpid(), os.environ["SHOAL_WORKER_ADDRESS"]])
    time.sleep(300)
    return "woke"


def inc(x: int) -> int:
    return x + 1


# ---- Variable ---------------------------------------------------------------------------------

def test_variable_between_clients(client: Client, other: Client) -> None:
    v = Variable("v-clients", client=client)
    v.set({"a": [1, 2.5, "x", b"raw", None, True]})
    assert Variable("v-clients", client=other).get() == {"a": [1, 2.5, "x", b"raw", None, True]}
    v.set((1, 2))  # not msgpack-exact: pickled, so it comes back a tuple
    assert Variable("v-clients", client=other).get() == (1, 2)
    v.delete()
    with pytest.raises(ShoalTimeout):
        Variable("v-clients", client=other).get(timeout=0.1)


def test_variable_get_waits_for_a_first_set(client: Client, other: Client) -> None:
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(Variable("v-wait", client=other).get(timeout=60)))
    t.start()
    Variable("v-wait", client=client).set("hello")
    t.join(60)
    assert got == ["hello"]


def test_variable_holding_a_future_keeps_it_alive(client: Client, other: Client) -> None:
    # scattered data cannot be recomputed: if the scheduler let it go, the getter would see it lost
    f = client.scatter(41)
    Variable("v-future", client=client).set(f)
    key = f.key
    del f
    settle(client)
    g = Variable("v-future", client=other).get()
    assert g.key == key and g.result() == 41
    # the variable lets go when deleted; the getter's own future keeps the value
    Variable("v-future", client=client).delete()
    assert g.result() == 41 and other.who_has([g])[key]


def test_variable_from_tasks(client: Client, cluster: LocalCluster) -> None:
    addr, tok = cluster.scheduler_address, cluster.token
    assert client.submit(set_variable, addr, tok, "v-task", [1, 2, 3], pure=False).result() == "set"
    assert Variable("v-task", client=client).get() == [1, 2, 3]
    Variable("v-task-f", client=client).set(client.submit(inc, 9))
    assert client.submit(get_variable, addr, tok, "v-task-f", pure=False).result() == 10


def test_value_over_the_limit_is_refused(client: Client) -> None:
    with pytest.raises(LimitExceededError, match="scatter it"):
        Variable("v-big", client=client).set(b"x" * (2 << 20))


# ---- Queue ------------------------------------------------------------------------------------

def test_queue_between_clients(client: Client, other: Client) -> None:
    q, r = Queue("q-clients", client=client), Queue("q-clients", client=other)
    for i in range(5):
        q.put(i)
    assert r.qsize() == 5
    assert r.get() == 0
    assert r.get(batch=2) == [1, 2]
    assert r.get(batch=True) == [3, 4]
    assert r.get(batch=True) == []
    with pytest.raises(ShoalTimeout):
        r.get(timeout=0.1)


def test_queue_maxsize_makes_put_wait(client: Client, other: Client) -> None:
    q = Queue("q-max", client=client, maxsize=1)
    q.put("a")
    with pytest.raises(ShoalTimeout):
        q.put("b", timeout=0.1)
    done = threading.Event()

    def put() -> None:
        q.put("c", timeout=60)
        done.set()

    t = threading.Thread(target=put)
    t.start()
    assert Queue("q-max", client=other).get() == "a"
    t.join(60)
    assert done.is_set()
    assert Queue("q-max", client=other).get() == "c"


def test_queue_of_futures_consumed_by_tasks(client: Client, cluster: LocalCluster) -> None:
    addr, tok = cluster.scheduler_address, cluster.token
    q = Queue("q-futures", client=client)
    futures = client.map(inc, range(20))
    wait(futures)  # consumers must not take every thread while their inputs wait for one
    for f in futures:
        q.put(f)
    del futures, f
    settle(client)  # only the queue (then the consumers) hold the keys now
    consumers = [client.submit(consume, addr, tok, "q-futures", 5, pure=False) for _ in range(4)]
    got = [x for c in consumers for x in c.result()]
    assert sorted(got) == list(range(1, 21))
    assert q.qsize() == 0


# ---- Lock and Semaphore ------------------------------------------------------------------------

def test_lock_between_clients(client: Client, other: Client) -> None:
    a, b = Lock("l-clients", client=client), Lock("l-clients", client=other)
    assert a.acquire()
    assert a.locked() and b.locked()
    assert not b.acquire(blocking=False)
    assert not b.acquire(timeout=0.1)
    got = threading.Event()
    t = threading.Thread(target=lambda: b.acquire() and got.set())
    t.start()
    a.release()
    t.join(60)
    assert got.is_set()
    with pytest.raises(RuntimeError, match="Released too often"):
        a.release()
    b.release()
    assert not a.locked()


def test_lock_serialises_tasks(client: Client, cluster: LocalCluster) -> None:
    addr, tok = cluster.scheduler_address, cluster.token
    Variable("l-tasks-list", client=client).set([])
    seen = client.gather([client.submit(with_lock, addr, tok, "l-tasks", i, pure=False) for i in range(8)])
    assert sorted(Variable("l-tasks-list", client=client).get()) == list(range(8))
    assert sorted(n for _, n in seen) == list(range(8))  # each saw the list its predecessor left


def test_semaphore_leases(client: Client, other: Client) -> None:
    s1, s2 = Semaphore(2, "s-clients", client=client), Semaphore(2, "s-clients", client=other)
    assert s1.acquire() and s2.acquire()
    assert s1.get_value() == 2
    assert not s2.acquire(timeout=0.1)
    s1.release()
    with s2:
        assert s1.get_value() == 2
    assert s1.get_value() == 1
    s2.release()
    assert s1.get_value() == 0


def test_lease_freed_when_its_client_closes(cluster: LocalCluster, client: Client) -> None:
    with Client(cluster, timeout=20, set_as_default=False) as gone:
        assert Lock("l-closed", client=gone).acquire()
        assert not Lock("l-closed", client=client).acquire(blocking=False)
    assert Lock("l-closed", client=client).acquire(timeout=30)


def test_lock_freed_when_its_holders_worker_is_killed() -> None:
    assert BINARY is not None
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_port=None) as cluster, \
            Client(cluster, timeout=20) as client:
        held = client.submit(hold_lock, cluster.scheduler_address, cluster.token, pure=False)
        pid, worker = Queue("holder", client=client).get(timeout=60)
        try:
            assert Lock("held", client=client).locked()
            assert not Lock("held", client=client).acquire(blocking=False)
            os.kill(client.scheduler_info()["workers"][worker]["pid"], signal.SIGKILL)
            # freed at once if the task's process died with its worker, else within its lease
            assert Lock("held", client=client).acquire(timeout=2 + 30)
            assert held.result(timeout=60) == "rerun"
        finally:
            try:
                os.kill(pid, signal.SIGKILL)  # the task's process, if it outlived its worker
            except ProcessLookupError:
                pass


# ---- Event ------------------------------------------------------------------------------------

def test_event_between_clients(client: Client, other: Client) -> None:
    e = Event("e-clients", client=client)
    assert not e.is_set() and not e.wait(0.1)
    woke: list[bool] = []
    t = threading.Thread(target=lambda: woke.append(Event("e-clients", client=other).wait()))
    t.start()
    e.set()
    t.join(60)
    assert woke == [True]
    assert Event("e-clients", client=other).is_set()
    e.clear()
    assert not Event("e-clients", client=other).is_set()


def test_event_wakes_tasks(client: Client, cluster: LocalCluster) -> None:
    addr, tok = cluster.scheduler_address, cluster.token
    waiters = [client.submit(wait_event, addr, tok, "e-tasks", pure=False) for _ in range(2)]
    Event("e-tasks", client=client).set()
    assert client.gather(waiters) == [True, True]


# ---- datasets ---------------------------------------------------------------------------------

def test_datasets(client: Client, other: Client) -> None:
    [f] = client.scatter([[1, 2, 3]])
    key = f.key
    client.publish_dataset(f, name="ds-list")
    client.publish_dataset(plain={"x": 1}, nested=[f, 5])
    del f
    settle(client)  # the published future keeps its value
    assert other.list_datasets() == sorted(["ds-list", "nested", "plain"])
    assert other.get_dataset("ds-list").result() == [1, 2, 3]
    nested = other.get_dataset("nested")
    assert nested[0].key == key and nested[0].result() == [1, 2, 3] and nested[1] == 5
    assert other.get_dataset("plain") == {"x": 1}
    with pytest.raises(KeyError):
        client.publish_dataset(plain=1)
    client.publish_dataset(plain=2, override=True)
    assert other.datasets["plain"] == 2
    with pytest.raises(KeyError):
        other.get_dataset("missing")
    assert other.get_dataset("missing", default=None) is None
    other.datasets["m"] = 7
    assert "m" in client.datasets and len(client.datasets) == 4
    assert sorted(client.datasets) == ["ds-list", "m", "nested", "plain"]
    del client.datasets["m"]
    with pytest.raises(KeyError):
        del client.datasets["m"]
    for name in ("ds-list", "nested", "plain"):
        client.unpublish_dataset(name)
    assert client.list_datasets() == []
