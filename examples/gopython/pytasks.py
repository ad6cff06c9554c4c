"""Python task functions that examples/gopython calls from Go by name.

The workers' Python executors import this module, so it must be on their ``PYTHONPATH``
(the Go driver sets it to this directory before it starts its cluster).
"""

from __future__ import annotations

import statistics
from typing import Any

import pandas as pd


def describe(values: list[float]) -> str:
    """A one-line summary of some numbers, computed in Python."""
    return (f"n={len(values)} mean={statistics.fmean(values):.3f} "
            f"stdev={statistics.stdev(values):.3f} median={statistics.median(values):.3f}")


def frame(columns: dict[str, list[Any]]) -> pd.DataFrame:
    """A pandas DataFrame with a derived column; it travels to Go as Arrow."""
    df = pd.DataFrame(columns)
    df["ratio"] = df["hits"] / df["trials"]
    return df.sort_values("ratio", ascending=False).reset_index(drop=True)


def scale(x: float, factor: float) -> float:
    return x * factor
