"""TPC-H data for the benchmarks: DuckDB's ``dbgen`` at a scale factor, written as parquet, and
DuckDB's own answers to the 22 queries, to check every dask.dataframe answer against.

    .venv/bin/python -m benchmarks.tpch.datagen --sf 1      # benchmarks/tpch/data/sf1/

The data goes to ``benchmarks/tpch/data/sf<SF>/<table>/part-*.parquet`` (ignored by git), made
once per scale factor and reused (``.complete`` marks a finished directory). Dates are written
as timestamps and decimals as doubles, as a dask.dataframe user's data would be (pandas has no
decimal dtype and turns Arrow dates into Python objects); DuckDB answers the queries from these
same files, so both sides compute from identical inputs. Each table is split into files of about
``FILE_BYTES``, the partitions dask.dataframe reads (SF 1: lineitem in 8 or so).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
TABLES = ["lineitem", "orders", "customer", "part", "partsupp", "supplier", "nation", "region"]
FILE_BYTES = "24MB"


def sf_name(sf: float) -> str:
    return f"sf{sf:g}"


def data_dir(sf: float) -> Path:
    return DATA / sf_name(sf)


def connect() -> Any:
    """A DuckDB connection with the tpch extension loaded: the copy packaged for pip (DuckDB's
    signed build, matched to the installed DuckDB) if present, else DuckDB's own installer."""
    import duckdb

    con = duckdb.connect()
    found = []
    try:
        import duckdb_extension_tpch

        base = os.path.dirname(duckdb_extension_tpch.__file__)
        found = glob.glob(os.path.join(base, "extensions", f"v{duckdb.__version__}", "tpch.duckdb_extension"))
    except ImportError:
        pass
    if found:
        con.execute(f"LOAD '{found[0]}'")
    else:
        con.execute("INSTALL tpch")
        con.execute("LOAD tpch")
    return con


def _select(con: Any, table: str) -> str:
    """SELECT of a table with DATE columns as TIMESTAMP and DECIMAL columns as DOUBLE."""
    cols = []
    for name, typ in con.execute(f"SELECT column_name, data_type FROM information_schema.columns "
                                 f"WHERE table_name = '{table}' ORDER BY ordinal_position").fetchall():
        if typ == "DATE":
            cols.append(f"CAST({name} AS TIMESTAMP) AS {name}")
        elif typ.startswith("DECIMAL"):
            cols.append(f"CAST({name} AS DOUBLE) AS {name}")
        else:
            cols.append(name)
    return f"SELECT {', '.join(cols)} FROM {table}"


def views(con: Any, root: Path) -> None:
    """Make each table a view over its parquet files."""
    for t in TABLES:
        con.execute(f"CREATE OR REPLACE VIEW {t} AS SELECT * FROM read_parquet('{root / t}/*.parquet')")


def generate(sf: float, force: bool = False, quiet: bool = False) -> Path:
    """Generate the data and DuckDB's answers at scale factor ``sf`` unless already there."""
    root = data_dir(sf)
    if (root / ".complete").exists() and not force:
        return root
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    con = connect()
    con.execute(f"CALL dbgen(sf={sf})")
    for t in TABLES:
        (root / t).mkdir()
        con.execute(f"COPY ({_select(con, t)}) TO '{root / t}' (FORMAT parquet, FILE_SIZE_BYTES '{FILE_BYTES}', "
                    f"FILENAME_PATTERN 'part-{{i}}', COMPRESSION snappy)")
    queries = {n: q for n, q in con.execute("SELECT query_nr, query FROM tpch_queries()").fetchall()}
    con.close()
    # the answers, from the parquet files just written
    con = connect()
    views(con, root)
    (root / "answers").mkdir()
    for n, sql in queries.items():
        con.execute(f"COPY ({sql.strip().rstrip(';')}) TO '{root / 'answers'}/q{n}.parquet' (FORMAT parquet)")
        (root / "answers" / f"q{n}.sql").write_text(sql)
    con.close()
    (root / ".complete").write_text(f"{time.perf_counter() - t0:.1f}s\n")
    if not quiet:
        print(f"TPC-H SF {sf:g}: {root} in {time.perf_counter() - t0:.1f}s")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sf", type=float, default=1.0)
    ap.add_argument("--force", action="store_true", help="generate again even if present")
    args = ap.parse_args()
    generate(args.sf, args.force)


if __name__ == "__main__":
    main()
