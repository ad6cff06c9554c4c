"""A million-task dask graph through ``client.get`` (issue 19): end-to-end time and where each
process's CPU went.

    .venv/bin/python benchmarks/million.py [--tasks 1000000] [--system shoal|dask] [--convert-only]
        [--ingest-only] [--python-conversion]

The graph is a hand-written dask graph of legacy tuples, as a user who builds one by hand
writes it: ``tasks/2`` leaves ``(inc, i)`` and a pairwise ``(operator.add, a, b)`` tree over
them, about ``tasks`` nodes in all. It runs on a fresh local cluster of 2 workers x 1 thread and
the answer is checked. ``--convert-only`` starts no cluster: it times the client's conversion
of the graph, up to its first ``update_graph`` chunk (while the cluster has nothing to do) and
then to the last. Printed: the time to build the graph in Python (not part of the
figure), ``client.get``'s wall time and rate, and each process's CPU seconds during it (user +
system, from /proc, read before and after; a process started meanwhile, such as the second
executor, counts whole, and one that ended meanwhile is missing), so that the sum can be set
against 2 cores x the wall time, and the bytes the workers fetched from each other (the
transfers between them: a sum's inputs made on two workers). ``--ingest-only`` times the
submission alone (issue 19's streamed ingest, >= 200,000 tasks/s): the graph sent by
``client.get(..., sync=False)`` to a ``shoal scheduler`` with no worker and no journal, until
the answer to a request sent after it arrives (a connection's messages are read in order),
with the client's and the scheduler's CPU during it. The client converts the graph with
its compiled extension (``shoal._speedups``) when it is built; ``--python-conversion`` hides
it, for comparison, and the output says which ran.
"""

from __future__ import annotations

import argparse
import operator
import os
import time
from typing import Any, Hashable, NamedTuple

from shoal.cluster import children_of


def inc(x: int) -> int:
    return x + 1


def build(leaves: int) -> tuple[dict[Hashable, Any], Hashable]:
    dsk: dict[Hashable, Any] = {}
    layer: list[Hashable] = []
    for i in range(leaves):
        k = ("leaf", i)
        dsk[k] = (inc, i)
        layer.append(k)
    level = 0
    while len(layer) > 1:
        nxt: list[Hashable] = []
        for j in range(0, len(layer) - 1, 2):
            k = ("sum", level, j // 2)
            dsk[k] = (operator.add, layer[j], layer[j + 1])
            nxt.append(k)
        if len(layer) % 2:
            nxt.append(layer[-1])
        layer = nxt
        level += 1
    return dsk, layer[0]


class Usage(NamedTuple):
    """One process's counters from /proc: its command line, CPU seconds in user space and in the
    kernel, minor page faults (first touches of memory, mostly) and peak resident set."""

    cmd: str
    user: float
    system: float
    faults: int
    peak_rss: int  # bytes


def cpu_times() -> dict[int, Usage]:
    """The usage so far of this process and of each live descendant, from /proc: read once
    before the graph and once after it, so that no sampling thread competes with the client for
    its interpreter while it converts the graph (a sampler every 0.2 s was 8 % of the client's
    profile)."""
    hz = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    out: dict[int, Usage] = {}
    for pid in [me, *children_of(me)]:
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
            with open(f"/proc/{pid}/cmdline") as f:
                cmd = f.read().replace("\0", " ").strip()
            with open(f"/proc/{pid}/status") as f:
                hwm = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")), 0)
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()  # fields from the third on: state, ppid, ...
        out[pid] = Usage(cmd, int(fields[11]) / hz, int(fields[12]) / hz, int(fields[7]), hwm)
    return out


def convert(dsk: dict[Hashable, Any], root: Hashable) -> None:
    """Time what Client.get does to the graph before and while it sends it, without sending:
    normalize_graph, then task_chunks up to its first chunk, then the rest."""
    from shoal import _dask
    from shoal._chunk import UPDATE_BATCH_BYTES
    from shoal._keys import dumps_callable, func_hash

    def func_of(fn: Any) -> tuple[str, bytes]:
        data = dumps_callable(fn)
        return func_hash(data), data

    with _dask.paused_gc():  # as Client.get does
        t0 = time.perf_counter()
        graph = _dask.normalize_graph(dsk, fuse=[root])
        t1 = time.perf_counter()
        chunks = _dask.task_chunks(graph, "execute_node", funcs={}, func_of=func_of,
                                   max_bytes=UPDATE_BATCH_BYTES // 2)  # Client.get's chunks
        first, _, _ = next(chunks)
        t2 = time.perf_counter()
        n, tasks = 1, len(first)
        for more, _, _ in chunks:
            n, tasks = n + 1, tasks + len(more)
        t3 = time.perf_counter()
    print(f"converted {tasks:,} tasks in {n} chunks: normalize_graph {t1 - t0:.2f} s, first chunk after"
          f" {t2 - t0:.2f} s, all after {t3 - t0:.2f} s")


def ingest(dsk: dict[Hashable, Any], root: Hashable) -> None:
    """Time client.get's submission of the graph to a scheduler with no worker (see above)."""
    import subprocess

    import shoal
    from shoal.cluster import find_binary

    sched = subprocess.Popen([find_binary(), "scheduler", "--port", "0", "--gossip-port", "0", "--dashboard-port",
                              "-1", "--journal", "none", "--log-level", "warn"], stdout=subprocess.PIPE, text=True)
    try:
        assert sched.stdout is not None
        line = sched.stdout.readline()  # "scheduler at HOST:PORT, gossip at ..."
        if not line.startswith("scheduler at "):
            raise SystemExit(f"shoal scheduler did not start: {line!r}")
        with shoal.Client(line.split()[2].rstrip(",")) as client:
            client.scheduler_info()
            before = cpu_times()
            t0 = time.perf_counter()
            client.get(dsk, root, sync=False)
            sent = time.perf_counter() - t0
            client.scheduler_info()  # answered once every update_graph before it is ingested
            took = time.perf_counter() - t0
            after = cpu_times()
    finally:
        sched.terminate()
        sched.wait()
    print(f"submitted {len(dsk):,} tasks: sent after {sent:.2f} s, ingested after {took:.2f} s"
          f" ({len(dsk) / took:,.0f} tasks/s)")
    report_cpu(before, after, took)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1_000_000, help="about this many tasks (default 1,000,000)")
    ap.add_argument("--system", choices=("shoal", "dask"), default="shoal")
    ap.add_argument("--convert-only", action="store_true",
                    help="time the client's conversion of the graph into update_graph chunks, no cluster")
    ap.add_argument("--ingest-only", action="store_true",
                    help="time the submission alone, to a scheduler with no worker")
    ap.add_argument("--python-conversion", action="store_true",
                    help="convert the graph in Python even when shoal._speedups is built")
    args = ap.parse_args()
    if args.system == "shoal":
        from shoal import _dask

        if args.python_conversion:
            _dask._speedups = None
        print("client conversion:", "compiled (shoal._speedups)" if _dask._speedups is not None else "Python")
    t0 = time.perf_counter()
    dsk, root = build(max(args.tasks // 2, 1))
    print(f"graph of {len(dsk):,} tasks built in {time.perf_counter() - t0:.2f} s", flush=True)
    want = sum(range(1, max(args.tasks // 2, 1) + 1))
    if args.convert_only:
        convert(dsk, root)
        return
    if args.ingest_only:
        ingest(dsk, root)
        return
    if args.system == "shoal":
        import shoal

        with shoal.LocalCluster(n_workers=2, threads_per_worker=1) as cluster, shoal.Client(cluster) as client:
            client.submit(inc, 1).result()  # executors started
            before = cpu_times()
            t1 = time.perf_counter()
            value = client.get(dsk, root)
            took = time.perf_counter() - t1
            after = cpu_times()
            fetched = sum(w.get("bytes_received", 0) for w in client.scheduler_info()["workers"].values())
        print(f"workers fetched {fetched:,} bytes from each other")
    else:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
            before = cpu_times()
            t1 = time.perf_counter()
            value = client.get(dsk, root)
            took = time.perf_counter() - t1
            after = cpu_times()
    if value != want:
        raise SystemExit(f"wrong answer: {value} != {want}")
    print(f"{args.system}: client.get of {len(dsk):,} tasks: {took:.2f} s"
          f" ({len(dsk) / took:,.0f} tasks/s), answer checked")
    report_cpu(before, after, took)


def report_cpu(before: dict[int, Usage], after: dict[int, Usage], took: float) -> None:
    """Print each process's CPU seconds (of them in the kernel), minor page faults and peak
    resident set between the two readings of cpu_times, and the sums."""
    total = 0.0
    zero = Usage("", 0.0, 0.0, 0, 0)
    spent = []
    for pid, u in after.items():
        b = before.get(pid, zero)
        spent.append((u.user - b.user + u.system - b.system, u.system - b.system, u.faults - b.faults, u))
    for cpu, system, faults, u in sorted(spent, key=lambda x: -x[0]):
        if cpu >= 0.05:
            print(f"  {cpu:7.2f} s CPU ({system:5.2f} s kernel, {faults:7,} faults, peak RSS"
                  f" {u.peak_rss / 2**20:6,.0f} MiB)  {u.cmd[:70]}")
        total += cpu
    print(f"  {total:7.2f} s CPU in all ({total / took:.2f} cores busy on average, wall {took:.2f} s)")


if __name__ == "__main__":
    main()
