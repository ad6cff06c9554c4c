"""Reports on a real LocalCluster: the task stream (method and context manager), the
statistical profile of Python tasks, and performance_report's self-contained HTML page."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Iterator

import pytest

import shoal
from shoal import Client, LocalCluster

from conftest import needs_binary

pytestmark = [needs_binary, pytest.mark.cluster]

def inc(x: int) -> int:
    return x + 1


def busy(ms: int) -> int:
    """Python work the profiler can see: a loop in a function of its own."""
    deadline = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < deadline:
        n += spin()
    return n


def spin() -> int:
    return sum(range(200))


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with LocalCluster(n_workers=2, threads_per_worker=2, dashboard_port=0) as cluster, \
            Client(cluster, timeout=30) as c:
        yield c


def test_task_stream_context_manager_sees_every_task_of_the_block(client: Client) -> None:
    client.gather(client.map(inc, range(50), key=[f"before-{i}" for i in range(50)]))
    with shoal.get_task_stream(client) as ts:
        futs = client.map(inc, range(300), key=[f"inc-{i}" for i in range(300)])
        assert client.gather(futs) == list(range(1, 301))
    keys = {t["key"] for t in ts.data}
    assert keys == {f"inc-{i}" for i in range(300)}, "every task of the block, and only those"
    t = ts.data[0]
    assert t["group"] == "inc" and t["status"] == "OK"
    (ss,) = t["startstops"]
    assert ss["action"] == "compute" and ss["start"] <= ss["stop"]
    assert {x["worker"] for x in ts.data} <= set(client.scheduler_info()["workers"])


def test_get_task_stream_reads_the_recording(client: Client) -> None:
    with shoal.get_task_stream(client):
        client.gather(client.map(inc, range(40), key=[f"rec-{i}" for i in range(40)]))
    got = client.get_task_stream(start="10 minutes")
    assert {f"rec-{i}" for i in range(40)} <= {t["key"] for t in got}
    assert len(client.get_task_stream(count=5)) == 5
    with pytest.raises(ValueError):
        client.get_task_stream(start="soon")
    with pytest.raises(NotImplementedError):
        client.get_task_stream(plot=True)


def test_profile_of_a_python_task_group(client: Client) -> None:
    client.start_profiling()
    try:
        client.gather(client.map(busy, [300] * 8, key=[f"busy-{i}" for i in range(8)]))
    finally:
        client.stop_profiling()
    deadline = time.monotonic() + 30
    tree = client.profile(key="busy")
    while tree["count"] == 0 and time.monotonic() < deadline:  # batches arrive about once a second
        time.sleep(0.2)
        tree = client.profile(key="busy")
    assert tree["count"] > 0, "the profiler sampled the busy tasks"
    names: set[str] = set()

    def walk(n: dict) -> None:
        names.add(n["name"])
        for c in n.get("children") or []:
            assert c["count"] <= n["count"]
            walk(c)

    walk(tree)
    assert any("spin" in n for n in names), f"the task's own function is in its stacks: {sorted(names)[:20]}"
    whole = client.profile()
    assert any(c["name"] == "busy" for c in whole["children"])


def test_performance_report_writes_a_self_contained_page(client: Client, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    with shoal.performance_report(filename=str(out)):
        client.gather(client.map(inc, range(200), key=[f"rep-{i}" for i in range(200)]))
    page = out.read_text()
    m = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', page, re.S)
    assert m, "the page embeds its data"
    data = json.loads(m.group(1))
    keys = {t["key"] for t in data["recording"]["tasks"]}
    assert {f"rep-{i}" for i in range(200)} <= keys
    assert data["recording"]["workers"], "the worker table's data"
    assert not re.search(r'<(script|link|img)[^>]+(src|href)=', page, re.I), "nothing is loaded from elsewhere"
