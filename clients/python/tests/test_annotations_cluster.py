"""Resources and dask.annotate on a real LocalCluster: honoured, or refused by name."""

from __future__ import annotations

import threading
import time
from typing import Any

import dask
import pytest
from dask import delayed

import shoal
from shoal import Client, LocalCluster

from conftest import needs_binary

pytestmark = [needs_binary, pytest.mark.cluster]

_lock = threading.Lock()


def where(_: Any = None) -> str:
    import os

    return str(os.getpid())


def meet(room: str, me: str, other: str, patience: float) -> bool:
    """A rendezvous: mark me as running in room, then wait up to patience seconds for other to
    be running too; whether it was."""
    import os

    open(os.path.join(room, me), "w").close()
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if os.path.exists(os.path.join(room, other)):
            return True
        time.sleep(0.02)
    return False


def span(seconds: float) -> tuple[float, float]:
    """When the task ran: (start, end) on the executor's clock."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


@pytest.fixture(scope="module")
def gpu() -> Any:
    """One worker offers GPU=1 (LocalCluster(resources=...)); every worker of this cluster
    does, so two tasks each needing the GPU on 2 workers may run at once, but not 2 on one."""
    with LocalCluster(n_workers=1, threads_per_worker=2, resources={"GPU": 1}, dashboard_port=None) as cluster, \
            Client(cluster) as client:
        yield cluster, client


def test_resources_limit_concurrency(gpu: Any, tmp_path: Any) -> None:
    _, client = gpu
    info = next(iter(client.scheduler_info()["workers"].values()))
    assert info["resources"] == {"GPU": 1.0}
    # Two tasks that each wait for the other to be running. Two threads, one GPU: tasks needing
    # it run one at a time, so the first gives up waiting, and only the second sees the other.
    room = tmp_path / "gpu"
    room.mkdir()
    fs = [client.submit(meet, str(room), a, b, 2.0, resources={"GPU": 1}, pure=False)
          for a, b in (("x", "y"), ("y", "x"))]
    assert sorted(client.gather(fs)) == [False, True], "tasks needing the one GPU ran at the same time"
    # without the resource they run at the same time: both meet (however slow executors start)
    room = tmp_path / "free"
    room.mkdir()
    fs = [client.submit(meet, str(room), a, b, 60.0, pure=False) for a, b in (("x", "y"), ("y", "x"))]
    assert client.gather(fs) == [True, True], "two threads ran two tasks one after the other"


def test_dask_annotate_resources_and_retries(gpu: Any) -> None:
    _, client = gpu
    with dask.annotate(resources={"GPU": 1}):
        xs = [delayed(span)(0.4, dask_key_name=f"held-{i}") for i in range(2)]
    first, second = sorted(dask.compute(*xs, scheduler=client.get))
    assert second[0] >= first[1], "annotated tasks did not wait for the GPU"
    # a resource no worker has makes a task wait, so submit with it must not silently run
    with dask.annotate(resources={"TPU": 1}):
        f = client.submit(where, pure=False)
    with pytest.raises(shoal.TimeoutError):
        f.result(timeout=1)
    client.cancel(f)


def flaky(path: str) -> str:
    with open(path, "a+") as fh:
        fh.seek(0)
        n = len(fh.read())
        fh.write("x")
    if n < 2:
        raise RuntimeError(f"attempt {n + 1} fails")
    return "ok"


def test_dask_annotate_retries_on_submit_and_graphs(gpu: Any, tmp_path: Any) -> None:
    _, client = gpu
    with dask.annotate(retries=2):
        f = client.submit(flaky, str(tmp_path / "a"), pure=False)
        d = delayed(flaky)(str(tmp_path / "b"))
    assert f.result(timeout=30) == "ok"
    assert client.compute(d).result(timeout=30) == "ok"
    f = client.submit(flaky, str(tmp_path / "c"), pure=False)  # no annotation: no retries
    with pytest.raises(RuntimeError, match="attempt 1"):
        f.result(timeout=30)


def test_unknown_annotations_and_bad_resources_are_refused(gpu: Any) -> None:
    _, client = gpu
    with dask.annotate(colour="blue"):
        with pytest.raises(ValueError, match="colour"):
            client.submit(where, pure=False)
        with pytest.raises(ValueError, match="colour"):
            dask.compute(delayed(where)(), scheduler=client.get)
    with pytest.raises(ValueError, match="resources"):
        LocalCluster(n_workers=1, resources={"G,PU": 1})
