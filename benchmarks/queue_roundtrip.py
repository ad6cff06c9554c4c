"""Queue put+get round trip between two tasks (issue 14's target: at most 200 µs).

Two tasks on two workers (1 thread each) play ping-pong through two queues: A puts on "ping"
and gets from "pong", B gets from "ping" and puts on "pong". One exchange is two put+get round
trips; the figure is the mean time of one, after a warm-up.

    .venv/bin/python benchmarks/queue_roundtrip.py [--n 2000] [--dask]
"""

from __future__ import annotations

import argparse
import time
from typing import Any


def ping(n: int, warm: int, system: str) -> float:
    Queue = _queue(system)
    out, back = Queue("ping"), Queue("pong")
    for i in range(warm):
        out.put(i)
        back.get()
    t0 = time.perf_counter()
    for i in range(n):
        out.put(i)
        back.get()
    return (time.perf_counter() - t0) / n / 2


def pong(n: int, system: str) -> int:
    Queue = _queue(system)
    inq, out = Queue("ping"), Queue("pong")
    for _ in range(n):
        out.put(inq.get())
    return n


def _queue(system: str) -> Any:
    if system == "dask":
        from distributed import Queue
    else:
        from shoal import Queue
    return Queue


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--warm", type=int, default=200)
    ap.add_argument("--dask", action="store_true", help="also run it on dask.distributed")
    args = ap.parse_args()
    systems = ["shoal"] + (["dask"] if args.dask else [])
    for system in systems:
        if system == "dask":
            from distributed import Client, LocalCluster
            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        else:
            from shoal import Client, LocalCluster
            cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_port=None)
        with cluster, Client(cluster) as client:
            workers = sorted(client.scheduler_info()["workers"])
            for rep in range(3):
                b = client.submit(pong, args.n + args.warm, system, workers=[workers[1]], pure=False)
                a = client.submit(ping, args.n, args.warm, system, workers=[workers[0]], pure=False)
                rt = a.result()
                b.result()
                print(f"{system}: queue put+get round trip between two tasks: {rt * 1e6:.0f} µs "
                      f"(run {rep + 1}, {args.n} exchanges)")


if __name__ == "__main__":
    main()
