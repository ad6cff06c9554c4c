"""The compute floor of workload 15's array jobs (issue 19): how fast could any scheduler run
them on this machine's 2 worker threads?

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/array_floor.py

Each job of ``run.py``'s ``wl_array`` (same sizes, same expressions) is computed by dask's
synchronous scheduler in this one process, one thread, BLAS limited to one thread as the
executors limit it: no scheduler, no transfer, no serialization. Half of that time is what 2
workers x 1 thread would need with perfect parallelism and zero overhead, so ``dask's time /
(serial / 2)`` bounds the ratio any system can reach against dask in ``make bench`` on this
machine; with ``--contended`` a second copy runs alongside, so that each job pays for the
caches and memory bandwidth the two cores share, as two workers do (a lower bound). Printed:
each job's serial seconds (median of ``--reps``), its floor, and the bound against the dask
times given with ``--dask`` (default: those of ``benchmarks/results/20261205-142849.json``).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import dask
import dask.array as da

from run import FULL, smooth  # type: ignore[import-not-found]

# dask.distributed's medians in make bench (2026-12-05 14:28, 20261205-142849.json), seconds
DASK = {"arr_matmul": 3.19, "arr_diff": 4.32, "arr_overlap": 2.90, "arr_rechunk": 2.90, "arr_reduce": 2.23}


def jobs(p: dict[str, Any]) -> list[tuple[str, Any]]:
    def rnd(n: int, m: int, chunks: Any) -> Any:
        return da.random.default_rng(42).random((n, m), chunks=chunks)

    n, c = p["matmul"]
    x = rnd(n, n, (c, c))
    out = [("arr_matmul", (x @ x.T).sum())]
    n, c = p["diff"]
    x = rnd(n, n, (c, c))
    out.append(("arr_diff", (da.diff(x, n=2, axis=0)[:, 1:-1] - da.diff(x, n=2, axis=1)[1:-1, :]).std()))
    out.append(("arr_overlap", x.map_overlap(smooth, depth=1, boundary="reflect").sum()))
    n, c = p["rechunk"]
    x = rnd(n, n, (n, c))
    with dask.config.set({"array.rechunk.method": "tasks"}):  # P2P needs a distributed cluster
        out.append(("arr_rechunk", x.rechunk((c, n)).map_blocks(lambda blk: blk[:1, :1] * 0 + blk.sum(),
                                                               chunks=(1, 1)).sum()))
    size, c = p["reduce"]
    v = da.random.default_rng(7).random(size, chunks=c)
    out.append(("arr_reduce", da.stack([v.sum(), v.std(), v.max()]).sum()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="worker threads the floor divides by")
    ap.add_argument("--only", default="", help="comma-separated jobs to run (default: all)")
    ap.add_argument("--contended", action="store_true",
                    help="run a second copy at the same time (its output discarded), so that each job's "
                         "serial time is that of one of two busy cores, as a worker's is")
    args = ap.parse_args()
    other = None
    if args.contended:
        cmd = [sys.executable, os.path.abspath(__file__), "--reps", str(args.reps + 1)]
        if args.only:
            cmd += ["--only", args.only]
        other = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, cwd=os.path.dirname(os.path.abspath(__file__)))
    bounds = []
    print(f"{'job':<12} {'serial s':>9} {'floor s':>8} {'dask s':>7} {'bound':>6}")
    for name, expr in jobs(FULL["array"]):
        if args.only and name not in args.only.split(","):
            continue
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            expr.compute(scheduler="sync")
            times.append(time.perf_counter() - t0)
        serial = statistics.median(times)
        floor = serial / args.workers
        bound = DASK[name] / floor
        bounds.append(bound)
        print(f"{name:<12} {serial:9.2f} {floor:8.2f} {DASK[name]:7.2f} {bound:5.2f}x", flush=True)
    geo = math.exp(sum(math.log(b) for b in bounds) / len(bounds))
    print(f"geometric mean of the bounds: {geo:.2f}x")
    if other is not None:
        other.kill()
        other.wait()


if __name__ == "__main__":
    main()
