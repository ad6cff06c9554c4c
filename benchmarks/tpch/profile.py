"""Where a TPC-H query's time goes, on Shoal and on dask.distributed (2 workers x 1 thread each).

    .venv/bin/python -m benchmarks.tpch.profile --sf 1 --queries 1,3,11,15 [--out /tmp/tpch-prof]

For each system in turn (a fresh cluster each), each query runs once untimed, then once timed
inside ``get_task_stream``; printed per query: the wall time, and per task group (the key's
prefix) the tasks, their summed compute time, transfer time (dask's ``transfer`` startstops;
Shoal reports none apart from compute), and how busy the two worker slots were (summed task
time / (2 x wall): the rest is idle time: placement, round trips, the client).

On Shoal, profiles of every process go to ``--out``: the scheduler's and each worker's Go CPU
profile (``go tool pprof -top bin/shoal OUT/scheduler.pprof``), each Python executor's cProfile
(``SHOAL_EXECUTOR_CPROFILE``: ``OUT/executors/executor-<pid>.prof``) and the client's
(``OUT/client-<system>.prof``); ``--top N`` prints the executors' merged top entries.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def group(key: Any) -> str:
    k = key[0] if isinstance(key, tuple) else str(key)
    k = str(k)
    # dask's names end in a token: "read_parquet-fused-assign-3f2a..." -> drop the token
    head, _, tail = k.rpartition("-")
    return head if head and len(tail) >= 8 else k


def summarize(tasks: list[dict[str, Any]], wall: float) -> tuple[list[tuple[str, int, float, float]], float]:
    per: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
    busy = 0.0
    for t in tasks:
        g = per[group(t["key"])]
        g[0] += 1
        for ss in t.get("startstops", []):
            d = float(ss["stop"]) - float(ss["start"])
            if ss["action"] == "compute":
                g[1] += d
                busy += d
            elif ss["action"] == "transfer":
                g[2] += d
    rows = sorted(((k, int(v[0]), v[1], v[2]) for k, v in per.items()), key=lambda r: -r[2])
    return rows, busy / (2 * wall) if wall else 0.0


def run_system(system: str, sf: float, queries: list[int], out: Path) -> dict[int, Any]:
    import dask

    from .datagen import data_dir
    from .queries import QUERIES, Tables

    root = data_dir(sf)
    if system == "shoal":
        os.environ.setdefault("SHOAL_BIN", str(ROOT / "bin" / "shoal"))
        os.environ["SHOAL_EXECUTOR_CPROFILE"] = str(out / "executors")
        from shoal import Client, LocalCluster, get_task_stream

        if os.environ.get("SHOAL_BENCH_FUSE") == "linear":  # as in run.py: linear chains only
            import shoal._dask as _sd

            _sd.fuse_partitions = _sd.fuse_linear  # type: ignore[assignment]

        cluster: Any = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_port=None,
                                    extra_args=["--cpu-profile", str(out / "scheduler.pprof"),
                                                "--worker-cpu-profile", str(out / "worker")])
        client: Any = Client(cluster)
        cfg: dict[str, Any] = {"scheduler": client.get}
    else:
        from distributed import Client, LocalCluster, get_task_stream  # type: ignore[no-redef]

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        cfg = {}
    res: dict[int, Any] = {}
    prof = cProfile.Profile()
    try:
        with dask.config.set(cfg):
            for q in queries:
                QUERIES[q](Tables(root))  # untimed: the cluster's first use of this query
                with get_task_stream(client) as ts:
                    prof.enable()
                    t0 = time.perf_counter()
                    QUERIES[q](Tables(root))
                    wall = time.perf_counter() - t0
                    prof.disable()
                res[q] = (wall, *summarize(ts.data, wall))
    finally:
        prof.dump_stats(str(out / f"client-{system}.prof"))
        client.close()
        cluster.close()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sf", type=float, default=1.0)
    ap.add_argument("--queries", default="1,3,11,15")
    ap.add_argument("--out", default="/tmp/tpch-profile")
    ap.add_argument("--systems", default="shoal,dask")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    from .datagen import generate

    generate(args.sf)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    queries = [int(q) for q in args.queries.split(",")]
    results = {s: run_system(s, args.sf, queries, out) for s in args.systems.split(",")}
    for q in queries:
        print(f"\n## Q{q} (SF {args.sf:g})")
        for s, r in results.items():
            wall, rows, busy = r[q]
            print(f"{s}: {wall:.2f}s wall, worker slots {100 * busy:.0f}% busy")
            print("   tasks  compute_s  transfer_s  group")
            for name, n, comp, tr in rows[:8]:
                print(f"   {n:5d}  {comp:9.3f}  {tr:10.3f}  {name}")
    execs = sorted((out / "executors").glob("*.prof")) if (out / "executors").exists() else []
    if execs and args.top:
        print(f"\n## Shoal executors, cProfile merged over {len(execs)} processes (top {args.top} by tottime)")
        st = pstats.Stats(*map(str, execs), stream=sys.stdout)
        st.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
