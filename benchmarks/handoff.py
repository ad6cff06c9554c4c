"""A 200 MB numpy array made by a task on worker A and used by a task pinned to worker B, on one
machine: which of the two figures in issue 19 (71 GB/s in `make bench`'s 4a, 4.7 GB/s measured
task to task) is the hand-off a user gets, and why they differ.

    .venv/bin/python benchmarks/handoff.py [--system shoal|dask] [--reps 5] [--nbytes 200000000]

Each line is one timed step, from submitting the consumer to its result (as 4a), in GB/s of the
array's size, with the consumer's own time inside its task and the machine's shared memory
growth during the step (Shmem in /proc/meminfo: a copy of the array into new shared memory
shows as +200 MB):

- ``cold``: the first consumer on B of a fresh cluster whose workers ran nothing yet (no
  warm-up: B's Python executor starts for this task) — reads ``a.nbytes`` only;
- ``first``: the first hand-off to B after a small task started both executors (4a's first
  repetition); ``again``: a second consumer of the same array on B (B holds it by then);
- ``nbytes``: 4a as ``make bench`` runs it, warm executors on both workers, ``a.nbytes``;
- ``sum``: the consumer reads every element (``a.sum()``), so every page of the mapping is
  touched; ``sum-local`` is the same consumer on A, where the value already is: the difference
  is what the hand-off adds once the data is actually used;
- ``graph``: the ``nbytes`` consumer as a node of a dask graph (``client.get``) over the future.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def make(nbytes: int, seed: int) -> Any:
    import numpy as np

    a = np.arange(nbytes // 8, dtype=np.float64)
    a[0] = seed
    return a


def use_nbytes(a: Any) -> tuple[int, float]:
    t0 = time.perf_counter()
    return int(a.nbytes), time.perf_counter() - t0


def use_sum(a: Any) -> tuple[int, float]:
    t0 = time.perf_counter()
    s = float(a.sum())
    return int(a.nbytes) + 0 * int(s != s), time.perf_counter() - t0


def shmem() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    return 0


def cluster(system: str) -> tuple[Any, Any]:
    if system == "shoal":
        os.environ.setdefault("SHOAL_BIN", str(ROOT / "bin" / "shoal"))
        from shoal import Client, LocalCluster

        c = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_port=None)
    else:
        from distributed import Client, LocalCluster  # type: ignore[no-redef]

        c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    return c, Client(c)


def _wait(system: str) -> Any:
    if system == "shoal":
        from shoal import wait
    else:
        from distributed import wait  # type: ignore[no-redef]
    return wait


def step(client: Any, a: Any, fn: Any, worker: str, nbytes: int) -> tuple[float, float, int]:
    s0 = shmem()
    t0 = time.perf_counter()
    n, inside = client.submit(fn, a, workers=[worker], pure=False).result()
    el = time.perf_counter() - t0
    assert n == nbytes // 8 * 8
    return el, inside, shmem() - s0


def step_graph(client: Any, a: Any, worker: str, nbytes: int, rep: int) -> tuple[float, float, int]:
    """The consumer as a dask graph node (a legacy task tuple) over the future, pinned to B."""
    s0 = shmem()
    t0 = time.perf_counter()
    n, inside = client.get({f"use-{rep}": (use_nbytes, a)}, f"use-{rep}", workers=[worker])
    el = time.perf_counter() - t0
    assert n == nbytes // 8 * 8
    return el, inside, shmem() - s0


def print_rows(system: str, nb: int, reps: int, rows: dict[str, list[tuple[float, float, int]]]) -> None:
    print(f"{system}: {nb / 1e6:.0f} MB float64, A -> B on one machine, {reps} repetitions (cold: 1)")
    print("| step | median s | GB/s | consumer's own s | shared memory growth MB |")
    print("|---|---:|---:|---:|---:|")
    for name, rs in rows.items():
        el = statistics.median(r[0] for r in rs)
        inside = statistics.median(r[1] for r in rs)
        grow = statistics.median(r[2] for r in rs)
        print(f"| {name} | {el:.4f} | {nb / el / 1e9:.1f} | {inside:.4f} | {grow / 1e6:+.0f} |")


def run_ray(nb: int, reps: int) -> int:
    """The same steps on Ray (``pip install ray``; not in the project's lock): two actors on one
    node stand for workers A and B, the array goes through Ray's shared-memory object store.
    There is no dask graph step. Each actor is started with a trivial call before the
    ``cold`` step, so cold here is the first hand-off to a started process."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=1)
    class Worker:
        def make(self, nbytes: int, seed: int) -> Any:
            return make(nbytes, seed)

        def use(self, a: Any, how: str) -> tuple[int, float]:
            return use_sum(a) if how == "sum" else use_nbytes(a)

        def ping(self) -> int:
            return 0

    wa, wb = Worker.remote(), Worker.remote()  # type: ignore[attr-defined]
    ray.get([wa.ping.remote(), wb.ping.remote()])

    def ray_step(ref: Any, how: str, w: Any) -> tuple[float, float, int]:
        s0 = shmem()
        t0 = time.perf_counter()
        n, inside = ray.get(w.use.remote(ref, how))
        el = time.perf_counter() - t0
        assert n == nb // 8 * 8
        return el, inside, shmem() - s0

    rows: dict[str, list[tuple[float, float, int]]] = {}
    try:
        ref = wa.make.remote(nb, 1)
        ray.wait([ref])
        rows["cold"] = [ray_step(ref, "nbytes", wb)]
        rows["again"] = [ray_step(ref, "nbytes", wb)]
        del ref
        for rep in range(reps):
            ref = wa.make.remote(nb, rep + 2)
            ray.wait([ref])
            for name, how, w in (("nbytes", "nbytes", wb), ("sum-local", "sum", wa), ("sum", "sum", wb)):
                rows.setdefault(name, []).append(ray_step(ref, how, w))
            del ref
            time.sleep(0.3)
        print_rows(f"ray {ray.__version__}", nb, reps, rows)
    finally:
        ray.shutdown()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", default="shoal", choices=("shoal", "dask", "ray"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--nbytes", type=int, default=200_000_000)
    args = ap.parse_args()
    nb = args.nbytes
    if args.system == "ray":
        return run_ray(nb, args.reps)
    cl, client = cluster(args.system)
    try:
        wa, wb = sorted(client.scheduler_info()["workers"])
        rows: dict[str, list[tuple[float, float, int]]] = {}
        # cold: nothing has run on B yet
        wait = _wait(args.system)
        a = client.submit(make, nb, 1, workers=[wa], pure=False)
        wait([a])
        rows["cold"] = [step(client, a, use_nbytes, wb, nb)]
        del a
        # first: both workers' executors started by a small task, then the first hand-off
        # (what 4a's first repetition measures: make bench's cluster is warmed up this way)
        wait([client.submit(use_nbytes, make(8, 0), workers=[w], pure=False) for w in (wa, wb)])
        a = client.submit(make, nb, 1, workers=[wa], pure=False)
        wait([a])
        rows["first"] = [step(client, a, use_nbytes, wb, nb)]
        rows["again"] = [step(client, a, use_nbytes, wb, nb)]  # B holds it now
        del a
        for rep in range(args.reps):
            a = client.submit(make, nb, rep + 2, workers=[wa], pure=False)
            wait([a])
            for name, fn, w in (("nbytes", use_nbytes, wb), ("sum-local", use_sum, wa), ("sum", use_sum, wb)):
                rows.setdefault(name, []).append(step(client, a, fn, w, nb))
            rows.setdefault("graph", []).append(step_graph(client, a, wb, nb, rep))
            del a
            time.sleep(0.3)
        print_rows(args.system, nb, args.reps, rows)
    finally:
        client.close()
        cl.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
