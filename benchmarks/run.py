#!/usr/bin/env python3
"""Shoal vs dask.distributed, side by side, on this machine, in one run.

    .venv/bin/python benchmarks/run.py            # full suite (long: tens of minutes)
    .venv/bin/python benchmarks/run.py --smoke    # every workload at tiny size, checks results
    .venv/bin/python benchmarks/run.py --only map,chain --reps 5

Every workload runs in a fresh child process per system (``run.py --child WORKLOAD --system
shoal|dask``) with its own cluster: Shoal's ``LocalCluster`` (the Go binary ``shoal local``) or
``distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``. Both children
of a workload are up at once and the parent alternates their repetitions (shoal, dask, dask,
shoal, ...), so that both systems meet the same drifts in the machine's speed. Each child
prints ``RESULT {json}`` at the end; the parent kills a child's whole process tree if it
overruns, so no cluster outlives the run. Results: a markdown table on stdout, the raw figures
in ``benchmarks/results/<timestamp>.json`` (``<timestamp>-smoke.json`` for --smoke, ignored by
git); commit a full run's file when a document cites it.

Workloads (docs/performance.md explains each and what limits it):

1. ``map``: ``client.map(noop, range(20_000))`` then gather — tasks/s
2. ``tree``: binary tree reduction of 2^15 leaves (32,767 add tasks) — tasks/s
3. ``chain``: 1,000 dependent tasks — µs per hop
4. ``transfer``: a 200 MB numpy array and a 200 MB Arrow table made on worker A, used on B — GB/s
5. ``independent``: a graph of 100,000 independent tasks submitted at once — seconds
6. ``dataframe``: dask.dataframe groupby-aggregate and merge of two 10M-row frames — seconds
7. ``memory``: root tasks producing 4× the workers' memory limit, reduced by a tree — peak memory
   (resident pages of every process plus shared memory, counted once)
8. ``gotasks`` (Shoal only): 1,000,000 no-op Go tasks from the Go client
9. ``zeroworkers`` (Shoal only): scheduler CPU per task with 2, 16 and 64 zero-cost workers
14. ``tpch``: the 22 TPC-H queries in dask.dataframe (benchmarks/tpch/) on parquet made by DuckDB's
    dbgen, each answer checked against DuckDB's — seconds per query and their geometric mean
15. ``array``: dask.array matrix product ``x @ x.T``, ``diff``/``map_overlap``, rechunk, a large
    reduction — seconds
16. ``manyworkers`` (Shoal only): as 9, with 1,000 and 10,000 zero-cost workers and a million
    tasks, each against 2 workers in the same repetition (which starts at the next worker
    count each time: a run that follows another inherits the machine's state), and the idle
    scheduler's CPU and heartbeats a second with that many workers registered

``--tpch-sf`` and ``--tpch-queries`` choose the TPC-H scale factor and queries (default SF 1, all
22; smoke SF 0.01 and four queries).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
GOBENCH = HERE / "bin" / "shoalbench"

# --------------------------------------------------------------------------------------------
# sizes

FULL = {
    "map": {"n": 20_000},
    "tree": {"leaves": 2 ** 15},
    "chain": {"n": 1_000},
    "transfer": {"nbytes": 200_000_000},
    "independent": {"n": 100_000},
    "dataframe": {"rows": 10_000_000, "nparts": 20, "nkeys": 1_000},
    "memory": {"limit": 1 << 30, "chunk": 64 << 20, "factor": 4},
    "gotasks": {"n": 1_000_000},
    "zeroworkers": {"n": 200_000, "workers": "2,16,64"},
    "manyworkers": {"n": 1_000_000, "workers": "2,1000,10000"},
    "bigarg": {"nbytes": 500_000_000},
    "control": {},
    "dynamic": {"fib": 16, "fanout": 10_000},
    "tpch": {"sf": 1.0, "queries": list(range(1, 23))},
    "array": {"matmul": (5_000, 1_250), "diff": (12_000, 2_000), "rechunk": (12_000, 1_000),
              "reduce": (400_000_000, 8_000_000)},
}
SMOKE = {
    "map": {"n": 300},
    "tree": {"leaves": 2 ** 7},
    "chain": {"n": 30},
    "transfer": {"nbytes": 4_000_000},
    "independent": {"n": 1_000},
    "dataframe": {"rows": 20_000, "nparts": 4, "nkeys": 50},
    "memory": {"limit": 512 << 20, "chunk": 32 << 20, "factor": 4},
    "gotasks": {"n": 20_000},
    "zeroworkers": {"n": 5_000, "workers": "2,16,64"},
    "manyworkers": {"n": 5_000, "workers": "2,1000"},
    "bigarg": {"nbytes": 20_000_000},
    "control": {},
    "dynamic": {"fib": 7, "fanout": 200},
    "tpch": {"sf": 0.01, "queries": [1, 3, 6, 11]},
    "array": {"matmul": (400, 100), "diff": (800, 200), "rechunk": (800, 100),
              "reduce": (2_000_000, 250_000)},
}

# See wl_independent: N > 0 submits the 100k-task graph as back-to-back get() calls of N keys
# (a workaround for a client bug fixed since); 0, the default, submits it in one get() call.
SHOAL_SPLIT_GRAPH = int(os.environ.get("SHOAL_BENCH_SPLIT_GRAPH", "0"))

WORKLOADS = ["map", "tree", "chain", "transfer", "independent", "dataframe", "memory",
             "gotasks", "zeroworkers", "bigarg", "control", "dynamic", "tpch", "array",
             "manyworkers"]
SHOAL_ONLY = {"gotasks", "zeroworkers", "manyworkers"}

# Targets from issue 4: ratio (>1 means Shoal better) and absolute bounds.
TARGETS: dict[str, dict[str, Any]] = {
    "map": {"ratio": 20},
    "tree": {"ratio": 20},
    "independent": {"ratio": 20},
    "chain": {"ratio": 20},
    "transfer_numpy": {"ratio": 8, "min": 2.0},
    "transfer_arrow": {"ratio": 8, "min": 2.0},
    "df_groupby": {"ratio": 2},
    "df_merge": {"ratio": 2},
    "memory_peak_rss": {"ratio": 1},
    "gotasks_rate": {"min": 100_000},
    "gotasks_bytes_per_task": {"max": 1024},
    "zero_cpu_2": {"max": 5}, "zero_cpu_16": {"max": 5}, "zero_cpu_64": {"max": 5},
    # issue 19: ≤ 5 µs per task and within 20 % of 2 workers
    "many_cpu_1000": {"max": 5}, "many_cpu_10000": {"max": 5},
    "many_ratio_1000": {"max": 1.2}, "many_ratio_10000": {"max": 1.2},
    # issue 15
    "bigarg": {"min": 1.0}, "client_start": {"max": 0.5}, "restart": {"max": 2.0},
    # issue 14
    "dyn_fib": {"ratio": 10}, "dyn_fanout": {"ratio": 10},
    # issue 19: every TPC-H query and array workload at least as fast as dask, the means 1.5×/2.5×
    **{f"tpch_q{q}": {"ratio": 1} for q in range(1, 23)}, "tpch_geomean": {"ratio": 1.5},
    "arr_matmul": {"ratio": 1}, "arr_diff": {"ratio": 1}, "arr_overlap": {"ratio": 1},
    "arr_rechunk": {"ratio": 1}, "arr_reduce": {"ratio": 1},
}

# --------------------------------------------------------------------------------------------
# task functions (pickled by value: this module is __main__ in the child)


def noop(x: Any) -> Any:
    return x


def inc(x: int) -> int:
    return x + 1


def add(x: Any, y: Any) -> Any:
    return x + y


def make_numpy(nbytes: int, seed: int) -> Any:
    import numpy as np

    a = np.arange(nbytes // 8, dtype=np.float64)
    a[0] = seed
    return a


def use_numpy(a: Any) -> tuple[int, float, float]:
    return int(a.nbytes), float(a[0]), float(a[-1])


def make_arrow(nbytes: int, seed: int) -> Any:
    import numpy as np
    import pyarrow as pa

    n = nbytes // 16
    k = np.arange(n, dtype=np.int64)
    k[0] = seed
    return pa.table({"k": k, "x": np.arange(n, dtype=np.float64)})


def use_arrow(t: Any) -> tuple[int, int, int]:
    return int(t.nbytes), int(t.num_rows), int(t.column("k")[0].as_py())


def make_chunk(i: int, nbytes: int) -> Any:
    import numpy as np

    return np.full(nbytes // 8, float(i))


def total(a: Any) -> float:
    return float(a.sum())


def df_part_a(i: int, rows: int, nkeys: int, krange: int) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1000 + i)
    return pd.DataFrame({"k": rng.integers(0, krange, rows, dtype=np.int64),
                         "g": rng.integers(0, nkeys, rows, dtype=np.int64),
                         "x": rng.random(rows)})


def df_part_b(i: int, rows: int) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(5000 + i)
    return pd.DataFrame({"k": np.arange(i * rows, (i + 1) * rows, dtype=np.int64),
                         "v": rng.random(rows)})


# --------------------------------------------------------------------------------------------
# process-tree memory


def _proc_table() -> dict[int, int]:
    """{pid: ppid} of live processes."""
    out: dict[int, int] = {}
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if rest and rest[0] != "Z":
            out[int(e)] = int(rest[1])
    return out


def descendants(pid: int) -> list[int]:
    table = _proc_table()
    kids: dict[int, list[int]] = {}
    for p, pp in table.items():
        kids.setdefault(pp, []).append(p)
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def rss(pid: int) -> int:
    """Resident bytes of ``pid`` that are its own (anonymous) or files' pages: RSS without
    the shared memory it maps, which :func:`shmem` counts once for all processes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            kb = 0
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    kb += int(line.split()[1])
            return kb * 1024
    except (OSError, IndexError, ValueError):
        return 0


def shmem() -> int:
    """The machine's shared memory in bytes (``Shmem`` in /proc/meminfo): memfds and tmpfs,
    mapped by any number of processes or by none (Shoal's result segments, held as
    descriptors, are in no process's RSS)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("Shmem:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


class TreeRSS:
    """Samples the memory of a process and all its descendants every ``every`` seconds: their
    private and file-backed resident pages plus the growth of the machine's shared memory since
    the sampler started (so shared memory counts once, whether mapped by several processes or
    only held as a descriptor)."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid, self.every = pid, every
        self.peak = 0
        self._shm0 = shmem()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def sample(self) -> int:
        own = sum(rss(p) for p in [self.pid, *descendants(self.pid)])
        return own + max(shmem() - self._shm0, 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (children first are collected before killing)."""
    pids = descendants(pid) + [pid]
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# --------------------------------------------------------------------------------------------
# clusters


class Bench:
    """One system's cluster and client inside a child process."""

    def __init__(self, system: str, memory_limit: Any = "auto") -> None:
        self.system = system
        if system == "shoal":
            os.environ.setdefault("SHOAL_BIN", str(ROOT / "bin" / "shoal"))
            from shoal import Client, LocalCluster, wait

            if os.environ.get("SHOAL_BENCH_FUSE") == "linear":
                # the fusion before issue 19 (linear chains only), to measure against
                import shoal._dask as _sd

                _sd.fuse_partitions = _sd.fuse_linear  # type: ignore[assignment]

            self.cluster = LocalCluster(n_workers=2, threads_per_worker=1,
                                        memory_limit=memory_limit, dashboard_port=None)
            self.client = Client(self.cluster)
            self._wait = wait
        else:
            import dask
            from distributed import Client, LocalCluster, wait

            # its own scratch directory, removed in close (dask's default, dask-scratch-space
            # in the temp directory, outlives the cluster)
            self.scratch = tempfile.mkdtemp(prefix="bench-dask-")
            dask.config.set({"distributed.worker.daemon": False,
                             "distributed.admin.tick.limit": "1h",
                             "distributed.scheduler.worker-ttl": None,
                             "temporary-directory": self.scratch})
            self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                        memory_limit=memory_limit, dashboard_address=None)
            self.client = Client(self.cluster)
            self._wait = wait
        self.workers = sorted(self.client.scheduler_info()["workers"])
        if len(self.workers) != 2:
            raise RuntimeError(f"expected 2 workers, got {self.workers}")
        # warm up: start each worker's Python side
        fs = [self.client.submit(inc, i, workers=[w], pure=False) for i, w in enumerate(self.workers)]
        assert self.client.gather(fs) == [1, 2]
        del fs
        # and the graph path (imports dask's graph code in the client and on the workers)
        assert self.client.get({"warm-0": (inc, 1), "warm-1": (inc, "warm-0")}, "warm-1") == 3

    def wait(self, fs: Any) -> None:
        self._wait(fs)

    def get(self, dsk: dict, keys: Any, sync: bool = True) -> Any:
        return self.client.get(dsk, keys, sync=sync)

    def settle(self) -> None:
        """Give released keys time to be forgotten before the next repetition."""
        time.sleep(0.5 if self.system == "dask" else 0.2)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.cluster.close()
            if self.system == "dask":
                shutil.rmtree(self.scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# workloads: each yields (metric, value) per repetition through `record`


Record = Callable[[str, float, dict[str, Any]], None]


def wl_map(b: Bench, p: dict, rep: int, record: Record) -> None:
    n = p["n"]
    t0 = time.perf_counter()
    fs = b.client.map(noop, range(n), pure=False)
    out = b.client.gather(fs)
    el = time.perf_counter() - t0
    check(out == list(range(n)), "map: wrong results")
    del fs
    record("map", n / el, {"seconds": el, "tasks": n})


def tree_graph(leaves: int, rep: int) -> tuple[dict, str, int]:
    dsk: dict[str, Any] = {}
    level = [f"tree-{rep}-0-{i}" for i in range(leaves // 2)]
    for i, k in enumerate(level):
        dsk[k] = (add, 2 * i, 2 * i + 1)
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for i in range(len(level) // 2):
            k = f"tree-{rep}-{depth}-{i}"
            dsk[k] = (add, level[2 * i], level[2 * i + 1])
            nxt.append(k)
        level = nxt
    return dsk, level[0], len(dsk)


def wl_tree(b: Bench, p: dict, rep: int, record: Record) -> None:
    leaves = p["leaves"]
    dsk, root, ntasks = tree_graph(leaves, rep)
    t0 = time.perf_counter()
    out = b.get(dsk, root)
    el = time.perf_counter() - t0
    check(out == leaves * (leaves - 1) // 2, f"tree: got {out}")
    record("tree", ntasks / el, {"seconds": el, "tasks": ntasks})


def wl_chain(b: Bench, p: dict, rep: int, record: Record) -> None:
    n = p["n"]
    dsk: dict[str, Any] = {f"chain-{rep}-0": (inc, 0)}
    for i in range(1, n):
        dsk[f"chain-{rep}-{i}"] = (inc, f"chain-{rep}-{i - 1}")
    t0 = time.perf_counter()
    out = b.get(dsk, f"chain-{rep}-{n - 1}")
    el = time.perf_counter() - t0
    check(out == n, f"chain: got {out}")
    record("chain", el / n * 1e6, {"seconds": el, "tasks": n})


def wl_transfer(b: Bench, p: dict, rep: int, record: Record) -> None:
    nbytes = p["nbytes"]
    wa, wb = b.workers
    for kind, make, use in (("numpy", make_numpy, use_numpy), ("arrow", make_arrow, use_arrow)):
        a = b.client.submit(make, nbytes, rep + 7, workers=[wa], pure=False)
        b.wait([a])
        t0 = time.perf_counter()
        u = b.client.submit(use, a, workers=[wb], pure=False)
        out = u.result()
        el = time.perf_counter() - t0
        where = b.client.who_has([u])
        check(any(wb in ws for ws in where.values()), f"transfer: result not on worker B: {where}")
        if kind == "numpy":
            check(out[0] == nbytes // 8 * 8 and out[1] == rep + 7, f"transfer numpy: got {out}")
        else:
            check(out[1] == nbytes // 16 and out[2] == rep + 7, f"transfer arrow: got {out}")
        record(f"transfer_{kind}", out[0] / el / 1e9, {"seconds": el, "bytes": out[0]})
        del a, u
        b.settle()


def wl_independent(b: Bench, p: dict, rep: int, record: Record) -> None:
    n = p["n"]
    dsk = {f"ind-{rep}-{i}": (inc, i) for i in range(n)}
    keys = list(dsk)
    t0 = time.perf_counter()
    if b.system == "shoal" and SHOAL_SPLIT_GRAPH:
        # Former workaround for a Python-client bug (a graph split into several update_graph
        # messages lost the wanted keys of all but the last message), kept for comparison.
        fs = []
        for i in range(0, n, SHOAL_SPLIT_GRAPH):
            part = keys[i:i + SHOAL_SPLIT_GRAPH]
            fs.extend(b.get({k: dsk[k] for k in part}, part, sync=False))
    else:
        fs = b.get(dsk, keys, sync=False)
    b.wait(fs)
    el = time.perf_counter() - t0
    sample = b.client.gather([fs[0], fs[n // 2], fs[-1]])
    check(sample == [1, n // 2 + 1, n], f"independent: got {sample}")
    del fs
    record("independent", el, {"tasks": n})


def wl_dataframe(b: Bench, p: dict, rep: int, record: Record) -> None:
    from functools import partial

    import dask
    import dask.dataframe as dd
    import numpy as np
    import pandas as pd

    rows, nparts, nkeys = p["rows"], p["nparts"], p["nkeys"]
    per = rows // nparts
    meta_a = pd.DataFrame({"k": np.array([], np.int64), "g": np.array([], np.int64),
                           "x": np.array([], np.float64)})
    meta_b = pd.DataFrame({"k": np.array([], np.int64), "v": np.array([], np.float64)})
    a = dd.from_map(partial(df_part_a, rows=per, nkeys=nkeys, krange=per * nparts), range(nparts),
                    meta=meta_a, enforce_metadata=False)
    bb = dd.from_map(partial(df_part_b, rows=per), range(nparts), meta=meta_b,
                     enforce_metadata=False)
    cfg = {"scheduler": b.client.get} if b.system == "shoal" else {}
    with dask.config.set(cfg):
        t0 = time.perf_counter()
        g = a.groupby("g").agg({"x": ["sum", "count"]}).compute()
        el = time.perf_counter() - t0
        gsum, gcount = float(g[("x", "sum")].sum()), int(g[("x", "count")].sum())
        check(gcount == per * nparts and len(g) == nkeys, f"groupby: {gcount} rows, {len(g)} groups")
        record("df_groupby", el, {"rows": rows, "check": gsum})
        t0 = time.perf_counter()
        m = a.merge(bb, on="k")
        count, vsum = dask.compute(m.k.count(), m.v.sum())
        el = time.perf_counter() - t0
        check(int(count) == per * nparts, f"merge: {count} rows, want {per * nparts}")
        from dask.dataframe.dask_expr._shuffle import get_default_shuffle_method  # type: ignore
        record("df_merge", el, {"rows": rows, "check": float(vsum),
                                "shuffle": str(get_default_shuffle_method())})
    if rows <= 1_000_000:  # small enough to check against pandas here
        pa_ = pd.concat([df_part_a(i, per, nkeys, per * nparts) for i in range(nparts)])
        pb_ = pd.concat([df_part_b(i, per) for i in range(nparts)])
        check(abs(pa_.x.sum() - gsum) < 1e-6 * max(1, abs(gsum)), "groupby: sum differs from pandas")
        want = pa_.merge(pb_, on="k").v.sum()
        check(abs(want - float(vsum)) < 1e-6 * max(1, abs(want)), "merge: sum differs from pandas")


def wl_memory(b: Bench, p: dict, rep: int, record: Record) -> None:
    chunk, limit, factor = p["chunk"], p["limit"], p["factor"]
    nroots = factor * 2 * limit // chunk
    dsk: dict[str, Any] = {}
    level = []
    for i in range(nroots):
        k = f"mem-{rep}-0-{i}"
        dsk[k] = (make_chunk, i, chunk)
        level.append(k)
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for i in range(0, len(level), 2):
            k = f"mem-{rep}-{depth}-{i // 2}"
            dsk[k] = (add, level[i], level[i + 1]) if i + 1 < len(level) else (noop, level[i])
            nxt.append(k)
        level = nxt
    final = f"mem-{rep}-total"
    dsk[final] = (total, level[0])
    sampler = TreeRSS(os.getpid())
    base = sampler.sample()
    t0 = time.perf_counter()
    ok, err = True, ""
    try:
        out = b.get(dsk, final)
        want = float(nroots * (nroots - 1) // 2) * (chunk // 8)
        check(abs(out - want) < 1e-6 * want, f"memory: got {out}, want {want}")
    except AssertionError:
        raise
    except Exception as e:  # a dask KilledWorker or a Shoal error: did not complete
        ok, err = False, f"{type(e).__name__}: {e}"[:300]
    el = time.perf_counter() - t0
    peak = sampler.stop()
    record("memory_peak_rss", peak / 2 ** 20, {
        "completed": ok, "error": err, "seconds": el, "baseline_rss_mib": base / 2 ** 20,
        "roots": nroots, "root_bytes_total": nroots * chunk, "memory_limit_per_worker": limit})


def nbytes_of(a: Any) -> int:
    return int(a.nbytes)


def wl_bigarg(b: Bench, p: dict, rep: int, record: Record) -> None:
    """submit(f, array) with a large numpy array made in the client, timed from the call to the
    result: how fast a big argument reaches a task (Shoal scatters it, on this machine as a
    memfd; dask sends it with the graph, warning about its size)."""
    import warnings

    import numpy as np

    a = np.full(p["nbytes"], rep % 251, dtype="u1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dask's "large object in the graph"
        t0 = time.perf_counter()
        got = b.client.submit(nbytes_of, a, pure=False).result()
        el = time.perf_counter() - t0
    check(got == p["nbytes"], f"bigarg: got {got}")
    record("bigarg", p["nbytes"] / el / 1e9, {"seconds": el, "bytes": p["nbytes"]})


def wl_control(b: Bench, p: dict, rep: int, record: Record) -> None:
    """Client(n_workers=2) to its first result (a fresh cluster), and client.restart() of the
    benchmark's 2-worker cluster until its workers are back."""
    if b.system == "shoal":
        from shoal import Client
    else:
        from distributed import Client
    t0 = time.perf_counter()
    kw: dict[str, Any] = {"dashboard_port": None} if b.system == "shoal" else {"dashboard_address": None}
    with Client(n_workers=2, threads_per_worker=1, **kw) as c:
        check(c.submit(inc, 1, pure=False).result() == 2, "control: wrong result")
        started = time.perf_counter() - t0
    record("client_start", started, {"seconds": started})
    t0 = time.perf_counter()
    b.client.restart()
    el = time.perf_counter() - t0
    check(len(b.client.scheduler_info()["workers"]) == 2, "restart: workers did not come back")
    check(b.client.submit(inc, 2, pure=False).result() == 3, "restart: wrong result after")
    record("restart", el, {"seconds": el})


def _task_api(system: str) -> Any:
    if system == "shoal":
        import shoal as mod
    else:
        import distributed as mod
    return mod


def fib_shoal(n: int) -> int:
    return _fib(n, "shoal")


def fib_dask(n: int) -> int:
    return _fib(n, "dask")


def _fib(n: int, system: str) -> int:
    if n < 2:
        return n
    api = _task_api(system)
    client = api.get_client()
    fn = fib_shoal if system == "shoal" else fib_dask
    a, b = client.submit(fn, n - 1, pure=False), client.submit(fn, n - 2, pure=False)
    api.secede()
    out = a.result() + b.result()
    api.rejoin()
    return int(out)


def fanout(n: int, system: str) -> int:
    api = _task_api(system)
    client = api.get_client()
    fs = client.map(inc, range(n), pure=False)
    api.secede()
    return int(sum(client.gather(fs)))


def wl_dynamic(b: Bench, p: dict, rep: int, record: Record) -> None:
    """Tasks that submit tasks (issue 14): fib(n) by recursive submission with pure=False, and
    one task submitting n children and gathering them; both secede while they wait."""
    n = p["fib"]
    fn = fib_shoal if b.system == "shoal" else fib_dask
    t0 = time.perf_counter()
    got = b.client.submit(fn, n, pure=False).result()
    el = time.perf_counter() - t0
    a, c = 0, 1
    for _ in range(n):
        a, c = c, a + c
    check(got == a, f"dynamic: fib({n}) = {got}, want {a}")
    record("dyn_fib", el, {"seconds": el, "n": n})
    t0 = time.perf_counter()
    got = b.client.submit(fanout, p["fanout"], b.system, pure=False).result()
    el = time.perf_counter() - t0
    check(got == sum(range(1, p["fanout"] + 1)), f"dynamic: fan-out sum {got}")
    record("dyn_fanout", el, {"seconds": el, "children": p["fanout"]})


def wl_tpch(b: Bench, p: dict, rep: int, record: Record) -> None:
    """The TPC-H queries one after the other, each timed from building its dask.dataframe
    expression to its pandas answer, which must match DuckDB's."""
    import dask

    from tpch.check import answer, mismatch
    from tpch.datagen import data_dir
    from tpch.queries import QUERIES, Tables

    root = data_dir(p["sf"])
    # Shoal as dask's scheduler; dask's Client is already dask's default scheduler
    with dask.config.set({"scheduler": b.client.get} if b.system == "shoal" else {}):
        for q in p["queries"]:
            t0 = time.perf_counter()
            got = QUERIES[q](Tables(root))
            el = time.perf_counter() - t0
            why = mismatch(got, answer(root, q))
            check(not why, f"tpch q{q} (SF {p['sf']:g}) differs from DuckDB's answer: {why}")
            record(f"tpch_q{q}", el, {"seconds": el, "sf": p["sf"], "rows": len(got)})


def smooth(block: Any) -> Any:
    """A 5-point stencil over a block (map_overlap's function)."""
    out = block.copy()
    out[1:-1, 1:-1] = (block[:-2, 1:-1] + block[2:, 1:-1] + block[1:-1, :-2] + block[1:-1, 2:]
                       + block[1:-1, 1:-1]) / 5.0
    return out


def wl_array(b: Bench, p: dict, rep: int, record: Record) -> None:
    """dask.array work of the kind dask's benchmark suite runs, each reduced to a scalar so
    that only the computation, not a large gather, is timed: ``(x @ x.T).sum()``, a second
    difference along both axes (``diff``) and a stencil (``map_overlap``), an all-to-all
    ``rechunk`` from row to column blocks, and ``sum``/``std`` of a large array. Small sizes are
    checked against dask's own synchronous scheduler."""
    import dask
    import dask.array as da

    def rnd(n: int, m: int, chunks: Any) -> Any:
        return da.random.default_rng(42 + rep % 5).random((n, m), chunks=chunks)

    n, c = p["matmul"]
    x = rnd(n, n, (c, c))
    jobs = [("arr_matmul", (x @ x.T).sum(), None)]
    n, c = p["diff"]
    x = rnd(n, n, (c, c))
    jobs.append(("arr_diff", (da.diff(x, n=2, axis=0)[:, 1:-1] - da.diff(x, n=2, axis=1)[1:-1, :]).std(), None))
    jobs.append(("arr_overlap", x.map_overlap(smooth, depth=1, boundary="reflect").sum(), None))
    n, c = p["rechunk"]
    x = rnd(n, n, (n, c))
    # (dask rechunks this all-to-all by P2P, which its synchronous scheduler cannot run: the
    # check compares with the plain sum, which the blocks' sums add up to)
    jobs.append(("arr_rechunk", x.rechunk((c, n)).map_blocks(lambda blk: blk[:1, :1] * 0 + blk.sum(),
                                                           chunks=(1, 1)).sum(), x.sum()))
    size, c = p["reduce"]
    v = da.random.default_rng(7 + rep % 5).random(size, chunks=c)
    jobs.append(("arr_reduce", da.stack([v.sum(), v.std(), v.max()]).sum(), None))
    for metric, expr, ref in jobs:
        t0 = time.perf_counter()
        with dask.config.set({"scheduler": b.client.get} if b.system == "shoal" else {}):
            got = float(expr.compute())
        el = time.perf_counter() - t0
        if p["matmul"][0] <= 1000:
            want = float((expr if ref is None else ref).compute(scheduler="sync"))
            check(abs(got - want) <= 1e-9 * max(1.0, abs(want)), f"{metric}: got {got}, want {want}")
        record(metric, el, {"seconds": el, "value": got})


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


PY_WORKLOADS: dict[str, Callable[[Bench, dict, int, Record], None]] = {
    "map": wl_map, "tree": wl_tree, "chain": wl_chain, "transfer": wl_transfer,
    "independent": wl_independent, "dataframe": wl_dataframe, "memory": wl_memory,
    "bigarg": wl_bigarg, "control": wl_control, "dynamic": wl_dynamic, "tpch": wl_tpch,
    "array": wl_array,
}


def child_main(args: argparse.Namespace) -> int:
    """Run one workload on one system, one repetition per ``rep N`` line read from stdin
    (``warm N``: an untimed one).

    Prints ``READY`` once the cluster is up, ``REP {json}`` after each repetition (how long it
    took), and ``RESULT {json}`` (every repetition's figures) after ``end`` or end of input."""
    import logging

    logging.getLogger("distributed").setLevel(logging.ERROR)
    sizes = SMOKE if args.smoke else FULL
    p = sizes[args.child]
    mem = p["limit"] if args.child == "memory" else "auto"
    t0 = time.perf_counter()
    b = Bench(args.system, memory_limit=mem)
    startup = time.perf_counter() - t0
    values: dict[str, list[float]] = {}
    extra: dict[str, list[dict[str, Any]]] = {}

    def record(metric: str, value: float, info: dict[str, Any]) -> None:
        values.setdefault(metric, []).append(value)
        extra.setdefault(metric, []).append(info)
        print(f"  {args.system:5s} {metric:18s} rep {len(values[metric])}: {value:.4g}",
              file=sys.stderr, flush=True)

    try:
        print("READY", flush=True)
        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] not in ("rep", "warm"):
                break
            r0 = time.perf_counter()
            if cmd[0] == "warm":  # untimed: its figures are not recorded
                PY_WORKLOADS[args.child](b, p, -1 - int(cmd[1]), lambda *_: None)
            else:
                PY_WORKLOADS[args.child](b, p, int(cmd[1]), record)
            b.settle()
            print("REP " + json.dumps({"seconds": time.perf_counter() - r0}), flush=True)
    finally:
        b.close()
    print("RESULT " + json.dumps({"values": values, "extra": extra, "notes": [],
                                  "startup_s": startup}), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# parent


class Child:
    """One ``run.py --child`` process: a cluster of one system, driven a repetition at a time."""

    def __init__(self, workload: str, system: str, args: argparse.Namespace, timeout: float) -> None:
        self.system = system
        self.timeout = timeout
        self.left = timeout  # of its own time: waiting for it to start and to run repetitions
        self.t0 = time.time()
        self.error = ""
        self.done = False  # no more repetitions (error, or over the first-repetition budget)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", workload, "--system", system]
        if args.smoke:
            cmd.append("--smoke")
        if args.tpch_sf is not None:
            cmd += ["--tpch-sf", str(args.tpch_sf)]
        if args.tpch_queries:
            cmd += ["--tpch-queries", args.tpch_queries]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "clients" / "python"), env.get("PYTHONPATH", "")])
        env.setdefault("SHOAL_BIN", str(ROOT / "bin" / "shoal"))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                                     text=True, env=env, start_new_session=True)
        self.lines: queue.Queue[Optional[str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str) -> Optional[str]:
        """The rest of the next line starting with prefix, or None (the error is kept)."""
        while not self.error:
            t = time.time()
            try:
                line = self.lines.get(timeout=max(self.left, 0.01))
            except queue.Empty:
                self.fail(f"timed out after {self.timeout:.0f}s")
                return None
            finally:
                self.left -= time.time() - t
            if line is None:
                self.fail(f"exit code {self.proc.wait()}, no {prefix.strip()} line")
                return None
            if line.startswith(prefix):
                return line[len(prefix):]
        return None

    def send(self, line: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except OSError as e:
            self.fail(f"cannot reach the child: {e}")

    def fail(self, msg: str) -> None:
        if not self.error:
            self.error = msg
        self.done = True
        self.kill()

    def kill(self) -> None:
        """Kill the child and its clusters' processes, unless it has exited (closing them)."""
        if self.proc.poll() is None:
            kill_tree(self.proc.pid)
            self.proc.wait()

    def finish(self) -> dict:
        res: dict[str, Any] = {}
        if not self.error:
            self.send("end")
            out = self.expect("RESULT ")
            if out is not None:
                res = json.loads(out)
                if self.proc.wait() != 0:
                    self.error = f"exit code {self.proc.returncode}"
        self.kill()
        if self.error:
            res["error"] = self.error
        res["wall_s"] = time.time() - self.t0
        return res


#: Workloads whose repetitions are short get one untimed repetition per system first: the
#: first graph a fresh cluster runs pays for its processes' first page faults, heaps and
#: caches (Shoal's first tree reduction ran 15-25 % slower than the next ones).
WARMUP = {"map", "tree", "chain"}


def run_children(workload: str, systems: list[str], args: argparse.Namespace,
                 timeout: float) -> dict[str, dict]:
    """Run a workload on each system with both clusters up, alternating their repetitions
    (shoal, dask, then dask, shoal, ...), so that both see the machine at the same times: on a
    shared machine whose speed drifts by tens of percent over minutes, running one system's
    repetitions after the other's compared different machines. Workloads in WARMUP first run
    once untimed on each system. A system whose first repetition takes longer than
    --rep-budget runs only once."""
    children: list[Child] = []
    try:
        for system in systems:
            c = Child(workload, system, args, timeout)
            children.append(c)
            c.expect("READY")
        notes: dict[str, list[str]] = {s: [] for s in systems}
        if workload in WARMUP and not args.smoke:
            for c in children:
                c.send("warm 0")
                c.expect("REP ")
        for rep in range(args.reps):
            for c in children if rep % 2 == 0 else children[::-1]:
                if c.done:
                    continue
                c.send(f"rep {rep}")
                out = c.expect("REP ")
                if out is None:
                    continue
                took = json.loads(out)["seconds"]
                if rep == 0 and args.reps > 1 and took > args.rep_budget:
                    notes[c.system].append(f"{c.system}: first repetition took {took:.0f}s > "
                                           f"{args.rep_budget:.0f}s, so 1 repetition only")
                    c.done = True
        out_all: dict[str, dict] = {}
        for c in children:
            res = c.finish()
            res["notes"] = res.get("notes", []) + notes[c.system]
            out_all[c.system] = res
        return out_all
    finally:
        for c in children:
            c.kill()


def build_gobench() -> None:
    subprocess.run(["go", "build", "-o", str(GOBENCH), "./benchmarks/cmd/shoalbench"], cwd=ROOT,
                   check=True)


def run_go(workload: str, args: argparse.Namespace, timeout: float) -> dict:
    p = (SMOKE if args.smoke else FULL)[workload]
    binary = os.environ.get("SHOAL_BIN", str(ROOT / "bin" / "shoal"))
    reps = args.reps
    values: dict[str, list[float]] = {}
    extra: dict[str, list[Any]] = {}
    t0 = time.time()
    for rep in range(reps):
        if workload == "gotasks":
            cmd = [str(GOBENCH), "gotasks", "--bin", binary, "--tasks", str(p["n"]),
                   "--timeout", f"{int(timeout)}s"]
        else:
            # each repetition starts at the next worker count: none always runs first
            cmd = [str(GOBENCH), "zeroworkers", "--bin", binary, "--tasks", str(p["n"]),
                   "--workers", p["workers"], "--first-rep", str(rep),
                   "--timeout", f"{int(timeout)}s"]
        try:
            cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f}s", "values": values, "extra": extra}
        if cp.returncode != 0:
            return {"error": cp.stderr.strip()[-2000:] or f"exit code {cp.returncode}",
                    "values": values, "extra": extra}
        r = json.loads(cp.stdout)
        if workload == "gotasks":
            check(r["tasks"] == p["n"], "gotasks: wrong task count")
            for m, v in (("gotasks_rate", r["tasks_per_s"]),
                         ("gotasks_bytes_per_task", r["bytes_per_task"]),
                         ("gotasks_peak_rss", r["sched_rss_peak"] / 2 ** 20),
                         ("gotasks_cpu_per_task", r["sched_cpu_us_per_task"])):
                values.setdefault(m, []).append(v)
            extra.setdefault("gotasks_rate", []).append(r)
        else:
            for run in r["runs"]:
                check(run["computes"] >= run["tasks"], f"{workload}: tasks not all dispatched")
                if workload == "zeroworkers":
                    m = f"zero_cpu_{run['workers']}"
                    values.setdefault(m, []).append(run["sched_cpu_us_per_task"])
                    extra.setdefault(m, []).append(run)
                    continue
                w = run["workers"]
                if w == 2:
                    continue  # the baseline each ratio is taken against
                for m, v in ((f"many_cpu_{w}", run["sched_cpu_us_per_task"]),
                             (f"many_ratio_{w}", run["cpu_ratio_to_first"]),
                             (f"many_idle_{w}", run["sched_idle_cpu_pct"]),
                             (f"many_heartbeats_{w}", run["heartbeats_per_s"])):
                    values.setdefault(m, []).append(v)
                extra.setdefault(f"many_cpu_{w}", []).append(run)
        for m, vs in values.items():
            print(f"  shoal {m:22s} rep {len(vs)}: {vs[-1]:.4g}", file=sys.stderr, flush=True)
    return {"values": values, "extra": extra, "wall_s": time.time() - t0, "notes": []}


# metric → (label, unit, better)
METRICS: dict[str, tuple[str, str, str]] = {
    "map": ("1. client.map(noop, 20k) + gather", "tasks/s", "higher"),
    "tree": ("2. tree reduction, 2^15 leaves", "tasks/s", "higher"),
    "chain": ("3. chain of 1,000 tasks", "µs/hop", "lower"),
    "transfer_numpy": ("4a. 200 MB numpy A→B", "GB/s", "higher"),
    "transfer_arrow": ("4b. 200 MB Arrow table A→B", "GB/s", "higher"),
    "independent": ("5. 100k independent tasks", "s", "lower"),
    "df_groupby": ("6a. dataframe groupby-agg, 10M rows", "s", "lower"),
    "df_merge": ("6b. dataframe merge, 2×10M rows", "s", "lower"),
    "memory_peak_rss": ("7. memory pressure: peak memory (RSS + shared)", "MiB", "lower"),
    "gotasks_rate": ("8. 1M no-op Go tasks (Go client)", "tasks/s", "higher"),
    "gotasks_bytes_per_task": ("8. scheduler memory per task", "bytes", "lower"),
    "gotasks_peak_rss": ("8. scheduler peak RSS", "MiB", "lower"),
    "gotasks_cpu_per_task": ("8. scheduler CPU per task", "µs", "lower"),
    "zero_cpu_2": ("9. sched CPU/task, 2 zero-cost workers", "µs", "lower"),
    "zero_cpu_16": ("9. sched CPU/task, 16 zero-cost workers", "µs", "lower"),
    "zero_cpu_64": ("9. sched CPU/task, 64 zero-cost workers", "µs", "lower"),
    "bigarg": ("10. submit(f, 500 MB numpy array)", "GB/s", "higher"),
    "client_start": ("11. Client(n_workers=2) to first result", "s", "lower"),
    "restart": ("12. client.restart(), 2 workers", "s", "lower"),
    "dyn_fib": ("13. fib(16) by recursive submission (3,193 tasks)", "s", "lower"),
    "dyn_fanout": ("13. a task submitting 10,000 children", "s", "lower"),
    **{f"tpch_q{q}": (f"14. TPC-H Q{q}", "s", "lower") for q in range(1, 23)},
    "tpch_geomean": ("14. TPC-H, geometric mean of the queries", "s", "lower"),
    "arr_matmul": ("15. array (x @ x.T).sum()", "s", "lower"),
    "arr_diff": ("15. array diff(n=2) along both axes", "s", "lower"),
    "arr_overlap": ("15. array map_overlap stencil", "s", "lower"),
    "arr_rechunk": ("15. array rechunk rows → columns", "s", "lower"),
    "arr_reduce": ("15. array sum/std/max, large", "s", "lower"),
    **{k: v for w in (1000, 10000) for k, v in (
        (f"many_cpu_{w}", (f"16. sched CPU/task, {w:,} zero-cost workers", "µs", "lower")),
        (f"many_ratio_{w}", (f"16. {w:,} workers' CPU/task over 2 workers'", "×", "lower")),
        (f"many_idle_{w}", (f"16. idle sched CPU, {w:,} workers registered", "% of a core", "lower")),
        (f"many_heartbeats_{w}", (f"16. heartbeats/s, {w:,} workers registered", "1/s", "lower")))},
}


def fmt(v: Optional[float]) -> str:
    if v is None:
        return "—"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def add_geomean(results: dict, prefix: str, metric: str) -> None:
    """Add, for each system, the geometric mean of the medians of the metrics named
    ``prefix*`` that every system has (so that the means cover the same queries)."""
    common = set.intersection(*[{m for m in r if m.startswith(prefix)} for r in results.values()])
    if not common:
        return
    for r in results.values():
        logs = [math.log(statistics.median(r[m])) for m in sorted(common)]
        r[metric] = [math.exp(sum(logs) / len(logs))]


def summarize(results: dict, smoke: bool) -> tuple[list[dict], str]:
    rows = []
    for metric, (label, unit, better) in METRICS.items():
        s = results.get("shoal", {}).get(metric)
        d = results.get("dask", {}).get(metric)
        if s is None and d is None:
            continue
        sm = statistics.median(s) if s else None
        dm = statistics.median(d) if d else None
        ratio = None
        if sm and dm:
            ratio = sm / dm if better == "higher" else dm / sm
        t = TARGETS.get(metric, {})
        met = None
        if sm is not None and t:
            met = True
            if "ratio" in t:
                met = met and ratio is not None and ratio >= t["ratio"]
            if "min" in t:
                met = met and sm >= t["min"]
            if "max" in t:
                met = met and sm <= t["max"]
        tgt = " and ".join(x for x in (
            f"≥{t['ratio']}×" if "ratio" in t else "",
            f"≥{t['min']:,} {unit}" if "min" in t else "",
            f"≤{t['max']:,} {unit}" if "max" in t else "") if x)
        rows.append({"metric": metric, "label": label, "unit": unit, "better": better,
                     "shoal_median": sm, "dask_median": dm, "ratio": ratio,
                     "shoal_n": len(s or []), "dask_n": len(d or []),
                     "target": tgt, "met": met})
    lines = ["| workload | Shoal median | dask median | ratio (>1: Shoal better) | unit | target |"
             " met |", "|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        ratio = f"{r['ratio']:.1f}×" if r["ratio"] is not None else "—"
        met = "" if r["met"] is None or smoke else ("yes" if r["met"] else "**no**")
        dn = f" (n={r['dask_n']})" if r["dask_median"] is not None and r["dask_n"] < 3 and not smoke else ""
        lines.append(f"| {r['label']} | {fmt(r['shoal_median'])} | {fmt(r['dask_median'])}{dn} |"
                     f" {ratio} | {r['unit']} | {r['target']} | {met} |")
    return rows, "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(),
                            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1),
                            "kernel": platform.release(), "python": platform.python_version()}
    try:
        import dask
        import distributed

        info["dask"], info["distributed"] = dask.__version__, distributed.__version__
    except ImportError:
        pass
    try:
        info["go"] = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip()
        info["shoal_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                              capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return info


def parent_main(args: argparse.Namespace) -> int:
    only = [w.strip() for w in args.only.split(",")] if args.only else WORKLOADS
    bad = [w for w in only if w not in WORKLOADS]
    if bad:
        print(f"unknown workload(s) {bad}; choose from {WORKLOADS}", file=sys.stderr)
        return 2
    binary = Path(os.environ.get("SHOAL_BIN", ROOT / "bin" / "shoal"))
    if not binary.exists():
        print(f"{binary} not found: run `make build` first", file=sys.stderr)
        return 2
    if any(w in SHOAL_ONLY for w in only):
        build_gobench()
    started = time.time()
    timeout = 150.0 if args.smoke else args.timeout
    results: dict[str, dict[str, list[float]]] = {"shoal": {}, "dask": {}}
    raw: dict[str, Any] = {}
    errors: list[str] = []
    notes: list[str] = []
    for w in only:
        systems = ["shoal"] if w in SHOAL_ONLY else ["shoal", "dask"]
        systems = [x for x in systems if x in args.systems.split(",")]
        if not systems:
            continue
        print(f"== {w} on {' and '.join(systems)}", file=sys.stderr, flush=True)
        if w == "tpch":
            from tpch.datagen import generate

            generate((SMOKE if args.smoke else FULL)["tpch"]["sf"])
        if w in SHOAL_ONLY:
            by_system = {"shoal": run_go(w, args, timeout)}
        else:
            by_system = run_children(w, systems, args, timeout)
        for system, res in by_system.items():
            raw[f"{w}/{system}"] = res
            if "error" in res:
                msg = f"{w} on {system}: {res['error']}"
                # dask being too slow or failing is a finding, not a failure of the suite
                if system == "dask" and not args.smoke:
                    notes.append(msg)
                else:
                    errors.append(msg)
                print("   " + msg, file=sys.stderr, flush=True)
            notes.extend(res.get("notes", []))
            for metric, vs in (res.get("values") or {}).items():
                results[system].setdefault(metric, []).extend(vs)
            for infos in (res.get("extra") or {}).values():
                for info in infos:
                    if isinstance(info, dict) and info.get("completed") is False:
                        notes.append(f"{w} on {system}: did not complete: {info.get('error')}")
    add_geomean(results, "tpch_q", "tpch_geomean")
    rows, table = summarize(results, args.smoke)
    print()
    print(table)
    if notes:
        print()
        for n in notes:
            print(f"- note: {n}")
    doc = {"started": _dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
           "seconds": time.time() - started, "smoke": args.smoke, "reps": args.reps,
           "machine": machine(), "sizes": SMOKE if args.smoke else FULL, "summary": rows,
           "values": results, "raw": raw, "notes": notes, "errors": errors, "table": table}
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.fromtimestamp(started).strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}{'-smoke' if args.smoke else ''}.json"
        (RESULTS / name).write_text(json.dumps(doc, indent=1, default=str))
        print(f"\nraw results: {RESULTS / name}", file=sys.stderr)
    if errors:
        print("\nFAILED:", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        return 1
    if args.smoke:
        missing = [w for w in only if not any(k.split("/")[0] == w and v.get("values")
                                               for k, v in raw.items())]
        if missing:
            print(f"FAILED: no figures for {missing}", file=sys.stderr)
            return 1
        print(f"smoke: all {len(only)} workloads ran and checked out in "
              f"{time.time() - started:.0f}s", file=sys.stderr)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repetition, check results")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per workload (default 3; smoke 1)")
    ap.add_argument("--rep-budget", type=float, default=180.0,
                    help="if a system's first repetition takes longer than this (s), it runs only once")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="per workload and system: its start-up and repetitions (s)")
    ap.add_argument("--systems", default="shoal,dask", help="run only these systems (shoal, dask)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    ap.add_argument("--tpch-sf", type=float, default=None, help="TPC-H scale factor (default 1; smoke 0.01)")
    ap.add_argument("--tpch-queries", default="", help="TPC-H queries, e.g. 1,3,11 (default all; smoke 1,3,6,11)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--system", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reps is None:
        args.reps = 1 if args.smoke else 3
    for sizes in (FULL, SMOKE):
        if args.tpch_sf is not None:
            sizes["tpch"]["sf"] = args.tpch_sf
        if args.tpch_queries:
            sizes["tpch"]["queries"] = [int(q) for q in args.tpch_queries.split(",")]
    if args.child:
        try:
            return child_main(args)
        except BaseException:
            traceback.print_exc()
            return 1
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
