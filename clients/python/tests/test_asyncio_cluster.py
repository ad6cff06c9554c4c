"""Native asyncio on a real cluster: await future, await wait, async for over as_completed,
async with LocalCluster(asynchronous=True) and Client(..., asynchronous=True)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import pytest

import shoal
from shoal import Client, LocalCluster, as_completed, wait

from conftest import needs_binary

pytestmark = [needs_binary, pytest.mark.cluster]


def inc(x: int) -> int:
    return x + 1


def slow(x: int, delay: float) -> int:
    import time

    time.sleep(delay)
    return x


def test_asyncio_end_to_end() -> None:
    async def main() -> None:
        async with LocalCluster(n_workers=2, dashboard_port=None, asynchronous=True) as cluster:
            assert cluster.scheduler_address
            async with Client(cluster, asynchronous=True) as client:
                f = client.submit(inc, 1)
                assert await f == 2
                fs = client.map(inc, range(5))
                done, not_done = await wait(fs)
                assert len(done) == 5 and not not_done
                order = []
                # two workers, one thread each: both run at once, the short one ends first
                async for g in as_completed([client.submit(slow, 0, 1.0, pure=False),
                                             client.submit(slow, 1, 0.1, pure=False)]):
                    order.append(await g)
                assert order == [1, 0], "yielded as they finished"
                assert await client.gather(fs) == [1, 2, 3, 4, 5]
                with pytest.raises(shoal.TimeoutError):
                    await wait([client.submit(slow, 0, 5, pure=False)], timeout=0.2)
                # the loop is not blocked while waiting: a ticker runs meanwhile
                ticks = 0

                async def ticker() -> None:
                    nonlocal ticks
                    while True:
                        await asyncio.sleep(0.01)
                        ticks += 1

                t = asyncio.ensure_future(ticker())
                await wait([client.submit(slow, 1, 0.5, pure=False)])
                t.cancel()
                assert ticks > 10
                await no_thread_per_call(client)
        assert cluster.pids() == []

    asyncio.run(main())


async def no_thread_per_call(client: Any) -> None:
    """Many calls of every kind: none starts a thread or runs in the loop's executor."""
    import threading

    async def calls(i: int) -> None:
        f = client.submit(inc, i, pure=False)
        assert await f == i + 1
        fs = client.map(inc, range(i, i + 20), pure=False)
        done, _ = await wait(fs)
        assert len(done) == 20
        assert sorted([await g async for g in as_completed(fs)]) == list(range(i + 1, i + 21))
        assert await client.gather(fs) == list(range(i + 1, i + 21))
        [s] = await client.scatter([bytes(i)], hash=False)
        assert await client.gather(s) == bytes(i)
        assert len((await client.scheduler_info())["workers"]) == 2

    await calls(0)  # connections to both workers made
    await calls(1)
    loop = asyncio.get_running_loop()
    started: list[threading.Thread] = []
    real_start = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(self)
        real_start(self)

    class NoExecutor(concurrent.futures.ThreadPoolExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"a call ran in a thread: {args[:1]}")

    before = threading.active_count()
    loop.set_default_executor(NoExecutor())
    threading.Thread.start = counting_start  # type: ignore[method-assign]
    try:
        for i in range(2, 40):
            await calls(i)
    finally:
        threading.Thread.start = real_start  # type: ignore[method-assign]
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor())  # closing may use one
    assert not started, f"calls started threads: {started}"
    assert threading.active_count() <= before


def test_client_without_address_owns_its_cluster() -> None:
    async def main() -> None:
        async with Client(asynchronous=True, n_workers=1, dashboard_port=None) as client:
            assert await client.submit(inc, 1) == 2
            cluster = client.sync.cluster
            assert cluster is not None and cluster.pids()
        assert cluster.pids() == []

    asyncio.run(main())


def test_awaiting_a_cluster() -> None:
    async def main() -> None:
        cluster = await LocalCluster(n_workers=1, dashboard_port=None, asynchronous=True)
        try:
            client = await Client(cluster, asynchronous=True)
            assert await client.submit(inc, 41) == 42
            await client.close()
        finally:
            cluster.close()

    asyncio.run(main())


@pytest.mark.skipif(__import__("shutil").which("openssl") is None, reason="needs the openssl command")
def test_asyncio_over_tls(tmp_path: Any) -> None:
    """The asyncio data connections speak TLS too (Client(tls=...))."""
    import json
    import os
    import signal
    import ssl
    import subprocess
    import sys
    import time

    from shoal.cluster import find_binary
    from test_tls_cluster import _pki

    ca, cert, key = _pki(tmp_path)
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [find_binary(), "local", "--workers", "1", "--nthreads", "1", "--port", "0", "--gossip-port", "0",
         "--dashboard-port", "-1", "--ready-file", str(ready), "--tls-cert", str(cert), "--tls-key", str(key),
         "--tls-ca", str(ca), "--python", sys.executable, "--log-level", "warn"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the cluster did not start"
            time.sleep(0.05)
        addr = json.loads(ready.read_text())["scheduler"]
        ctx = ssl.create_default_context(cafile=str(ca))

        async def main() -> None:
            async with Client(addr, tls=ctx, timeout=20, asynchronous=True) as client:
                assert await client.submit(inc, 41) == 42
                [s] = await client.scatter([b"x" * 1000], hash=False)
                assert await client.gather(s) == b"x" * 1000

        asyncio.run(main())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
