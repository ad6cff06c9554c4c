"""Compare a query's dask.dataframe answer with DuckDB's (``answers/qN.parquet``).

Columns are compared by position (the names are the SQL's, but a dask user may name them
otherwise), rows in order after both are sorted on every column (ties in an ORDER BY may come
out in either order), numbers to a relative 1e-6 (DuckDB sums decimals exactly, pandas floats),
dates and timestamps by their calendar day, integers and strings exactly.

    .venv/bin/python -m benchmarks.tpch.check --sf 0.01 [--queries 1,3]   # dask's sync scheduler
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _norm(s: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        return s.dt.strftime("%Y-%m-%d")
    if s.dtype == object and len(s) and hasattr(s.iloc[0], "isoformat"):
        return s.map(lambda d: d.isoformat()[:10])
    if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
        return s.astype("float64")
    if s.dtype == object and len(s) and not isinstance(s.iloc[0], str):  # DuckDB decimals
        return s.astype("float64")
    return s.astype(str)


def _frame(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({i: _norm(df.iloc[:, i].reset_index(drop=True)) for i in range(df.shape[1])})
    return out.sort_values(list(out.columns), kind="stable").reset_index(drop=True)


def mismatch(got: pd.DataFrame, want: pd.DataFrame) -> str:
    """'' if ``got`` answers like ``want``, else what differs."""
    if got.shape != want.shape:
        return f"shape {got.shape}, want {want.shape}"
    g, w = _frame(got), _frame(want)
    for i in range(g.shape[1]):
        a, b = g[i], w[i]
        if a.dtype == np.float64 and b.dtype == np.float64:
            ok = np.isclose(a.to_numpy(), b.to_numpy(), rtol=1e-6, atol=1e-6, equal_nan=True)
        else:
            ok = (a.to_numpy() == b.to_numpy())
        if not ok.all():
            r = int(np.argmin(ok))
            return (f"column {i} ({got.columns[i]!r}) row {r}: got {a.iloc[r]!r}, want {b.iloc[r]!r}"
                    f" ({int((~ok).sum())} rows differ)")
    return ""


def answer(root: Path, q: int) -> pd.DataFrame:
    return pd.read_parquet(root / "answers" / f"q{q}.parquet")


def main() -> int:
    import dask

    from .datagen import generate
    from .queries import QUERIES, Tables

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sf", type=float, default=0.01)
    ap.add_argument("--queries", default="", help="comma-separated query numbers (default all 22)")
    args = ap.parse_args()
    root = generate(args.sf)
    qs = [int(x) for x in args.queries.split(",")] if args.queries else list(QUERIES)
    bad = 0
    with dask.config.set(scheduler="sync"):
        for q in qs:
            t0 = time.perf_counter()
            got: Any = QUERIES[q](Tables(root))
            el = time.perf_counter() - t0
            why = mismatch(got, answer(root, q))
            bad += bool(why)
            print(f"q{q:<2} {el:6.2f}s {'ok' if not why else 'WRONG: ' + why}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
