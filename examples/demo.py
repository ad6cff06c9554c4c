"""Shoal from Python, in about a minute: what `make demo` runs.

A local cluster (a scheduler and two worker processes, started from the Go binary), then what a
dask.distributed user does every day, unchanged: futures with map/submit/gather, a
dask.dataframe groupby, and an Arrow table made by a Go task that arrives here as a
pyarrow.Table. The cluster's own logs go to a file in its temporary directory, not to this
terminal.

    python examples/demo.py           # runs, prints, stops the cluster
    python examples/demo.py --keep    # then keeps the cluster (and its dashboard) until Enter
"""

from __future__ import annotations

import argparse
import time

import dask
import pyarrow as pa
import pyarrow.compute as pc

from shoal import Client, LocalCluster


def square(x: int) -> int:
    return x * x


def mean_x(table: pa.Table) -> float:
    """Runs on a worker, in Python, on the table a Go task made there (or fetched)."""
    return float(pc.mean(table["x"]).as_py())


def step(title: str, code: str) -> float:
    print(f"\n{title}")
    for line in code.strip().splitlines():
        print(f"  >>> {line}")
    return time.perf_counter()


def indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def done(start: float) -> None:
    print(f"  ({time.perf_counter() - start:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true",
                        help="keep the cluster and its dashboard running until Enter")
    args = parser.parse_args()

    t = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        print(f"LocalCluster: scheduler {cluster.scheduler_address}, {cluster.n_workers} workers"
              f" ({time.perf_counter() - t:.2f} s to start)")
        print(f"Dashboard:    {client.dashboard_link}")

        t = step("1. Futures: client.map, client.submit, client.gather", """
squares = client.map(square, range(1000))
total = client.submit(sum, squares)""")
        squares = client.map(square, range(1000))               # 1,000 tasks
        total = client.submit(sum, squares)                       # depends on all of them
        print("  first squares:  ", client.gather(squares[:5]))
        print("  sum of squares: ", total.result())              # 332833500
        done(t)

        t = step("2. dask.dataframe: a groupby on generated data, computed by Shoal", """
df = dask.datasets.timeseries(start="2000-01-01", end="2000-01-11", freq="1s", seed=42)
df.groupby("name").agg({"x": "mean", "y": "max", "id": "count"}).compute()""")
        # Client(...) made itself dask's scheduler, so .compute() runs on the cluster.
        df = dask.datasets.timeseries(start="2000-01-01", end="2000-01-11", freq="1s",
                                      partition_freq="1D", seed=42)
        stats = df.groupby("name").agg({"x": "mean", "y": "max", "id": "count"}).compute()
        print(f"  {df.npartitions} partitions, {int(stats['id'].sum()):,} rows, {len(stats)} names;"
              " the 5 most frequent:")
        print(indent(stats.sort_values("id", ascending=False).head(5).round(4).to_string()))
        done(t)

        t = step("3. Arrow from Go: a table made by a Go task, read here as a pyarrow.Table", """
go_table = client.submit_go("arrow_table", 1_000_000, 7)
sums = client.submit_go("groupby_sum", go_table, "key", "x")
mean = client.submit(mean_x, go_table)
table = go_table.result()""")
        go_table = client.submit_go("arrow_table", 1_000_000, 7)   # built in Go on a worker
        sums = client.submit_go("groupby_sum", go_table, "key", "x")  # a Go aggregation of it
        mean = client.submit(mean_x, go_table)                    # a Python task reads it too
        table = go_table.result()
        assert isinstance(table, pa.Table)
        schema = ", ".join(f"{f.name}: {f.type}" for f in table.schema)
        print(f"  a pyarrow.Table of {table.num_rows:,} rows, {table.nbytes / 1e6:.0f} MB ({schema});"
              " its first rows:")
        print(indent(table.slice(0, 3).to_pandas().to_string()))
        by_key = sums.result()
        print(f"  groupby_sum (Go) gives {by_key.num_rows} keys; mean_x (Python, on a worker) gives"
              f" {mean.result():.4f}")
        done(t)

        if args.keep:
            input(f"\nThe cluster is running; its dashboard is {client.dashboard_link}\n"
                  "Press Enter to stop it. ")
    print("\nCluster stopped; nothing is left running.")


if __name__ == "__main__":
    main()
