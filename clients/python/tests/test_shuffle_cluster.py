"""The "shoal" shuffle method (shoal._shuffle) on a real cluster, checked against pandas, and
its pieces on their own: split/gather against dask's shuffle_group/_concat, the lowering and
the import hook."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from shoal import _shuffle

from conftest import needs_binary


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "k": rng.integers(0, n // 3 + 1, n),
        "x": rng.random(n),
        "s": pd.array([f"s{i}" if i % 11 else None for i in rng.integers(0, 50, n)], dtype=object),
    }, index=pd.Index(rng.permutation(n) + 1000, name="row"))


def canon(df: pd.DataFrame, index: bool = True) -> pd.DataFrame:
    """Rows in one order (by index, then values), so that frames with the same rows compare
    equal; without ``index`` the index is dropped first."""
    flat = df.reset_index(drop=not index)
    return flat.sort_values(list(flat.columns), na_position="first").reset_index(drop=True)


def test_split_and_gather_match_dask_shuffle_group() -> None:
    from dask.dataframe.core import _concat
    from dask.dataframe.shuffle import partitioning_index, shuffle_group

    parts = [frame(300, i) for i in range(3)]
    for df in parts:
        df["_partitions"] = partitioning_index(df[["k"]], 5)
    for ignore_index in (False, True):
        splits = [_shuffle.split(df, "_partitions", 5, ignore_index) for df in parts]
        groups = [shuffle_group(df, "_partitions", 0, 5, 5, ignore_index, 5) for df in parts]
        for j in range(5):
            got = _shuffle.gather(splits, j, ignore_index)
            want = _concat([g[j] for g in groups], ignore_index).drop(columns="_partitions")
            pd.testing.assert_frame_equal(got, want)
    # hashing other columns than the _partitions one: the same rows end up together
    splits = [_shuffle.split(df.drop(columns="_partitions"), ["k"], 4, False) for df in parts]
    seen: dict[Any, int] = {}
    for j in range(4):
        for k in _shuffle.gather(splits, j, False)["k"]:
            assert seen.setdefault(k, j) == j, f"key {k} in partitions {seen[k]} and {j}"
    assert sum(len(_shuffle.gather(splits, j, False)) for j in range(4)) == 900


def test_lowering_uses_the_shoal_shuffle() -> None:
    _shuffle.install()
    assert _shuffle.available()
    a = dd.from_pandas(frame(200, 1), npartitions=4)
    b = dd.from_pandas(frame(200, 2), npartitions=3)
    with dask.config.set({"dataframe.shuffle.method": "shoal"}):
        graph = dict(a.merge(b, on="k").__dask_graph__())
        names = {type(e).__name__ for e in a.shuffle(on="k").optimize().walk()}
    assert "ShoalShuffle" in names
    splits = [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("shoal-split-")]
    assert len(splits) == 4 + 3, "one split task per input partition of each side"
    # any other method is dask's own
    with dask.config.set({"dataframe.shuffle.method": "tasks"}):
        names = {type(e).__name__ for e in a.shuffle(on="k").optimize().walk()}
    assert "TaskShuffle" in names and "ShoalShuffle" not in names


def test_install_before_dask_dataframe_is_imported() -> None:
    """The import hook patches dask's shuffle module when it is first imported later."""
    code = ("import sys; from shoal import _shuffle; _shuffle.install();"
            "assert 'dask.dataframe' not in sys.modules;"
            "import dask, dask.dataframe as dd, pandas as pd;"
            "from dask.dataframe.dask_expr import _shuffle as m;"
            "assert m.Shuffle._lower.__name__ == '_lower' and hasattr(m.Shuffle._lower, '__wrapped__');"
            "df = dd.from_pandas(pd.DataFrame({'k': range(40)}), npartitions=4);"
            "dask.config.set({'dataframe.shuffle.method': 'shoal'});"
            "out = df.shuffle(on='k').compute(scheduler='sync');"
            "assert sorted(out.k) == list(range(40)); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@needs_binary
def test_shoal_shuffle_on_a_cluster(client: Any) -> None:
    """Each shuffling operation gives on Shoal what dask's own task shuffle gives in-process
    (strings become dask's string dtype in both) and pandas' answer where order is defined."""
    pa_, pb_ = frame(3000, 1), frame(2000, 2).rename(columns={"x": "y", "s": "t"})
    a = dd.from_pandas(pa_, npartitions=6)
    b = dd.from_pandas(pb_, npartitions=4)
    assert dask.config.get("dataframe.shuffle.method") == "shoal", "the client's default here"
    cases = {
        "inner merge": a.merge(b, on="k", how="inner"),
        "left merge": a.merge(b, on="k", how="left", shuffle_method="shoal"),
        "shuffle to fewer, ignore_index": a.shuffle(on="k", npartitions=2, ignore_index=True),
        "groupby split_out": a.groupby("k").x.sum(split_out=3),
        "set_index": a.set_index("x"),
        "sort_values": a.sort_values("x"),
    }
    shuffled = a.shuffle(on="k", npartitions=5)
    with dask.config.set(scheduler=client.get):
        got = dask.compute(*cases.values())
        parts = [shuffled.get_partition(i).compute() for i in range(5)]
    with dask.config.set({"scheduler": "sync", "dataframe.shuffle.method": "tasks"}):
        want = dask.compute(*cases.values())
        whole = a.compute()
    for name, g, w in zip(cases, got, want):
        if isinstance(g, pd.Series):
            pd.testing.assert_series_equal(g.sort_index(), w.sort_index(), obj=name)
        else:
            pd.testing.assert_frame_equal(canon(g, index=name != "shuffle to fewer, ignore_index"),
                                          canon(w, index=name != "shuffle to fewer, ignore_index"),
                                          obj=name)
    assert len(got[0]) == len(pa_.merge(pb_, on="k", how="inner"))
    pd.testing.assert_series_equal(got[3].sort_index(), pa_.groupby("k").x.sum(), check_names=False)
    pd.testing.assert_frame_equal(got[5][["k", "x"]], pa_.sort_values("x")[["k", "x"]])
    assert got[2].index.max() < 1000 <= pa_.index.min(), "ignore_index: fresh indexes"
    # a shuffle keeps every row (and its index) and puts each key in exactly one partition
    pd.testing.assert_frame_equal(canon(pd.concat(parts)), canon(whole))
    owners = [set(p.k) for p in parts]
    assert all(not (owners[i] & owners[j]) for i in range(5) for j in range(i + 1, 5))
    assert "_partitions" not in parts[0].columns


@needs_binary
def test_a_failing_partition_fails_the_shuffle_with_its_error(client: Any) -> None:
    def part(i: int) -> pd.DataFrame:
        if i == 2:
            raise ValueError("partition 2 is bad")
        return pd.DataFrame({"k": np.arange(10) + 10 * i})

    df = dd.from_map(part, range(4), meta=pd.DataFrame({"k": np.array([], np.int64)}),
                     enforce_metadata=False)
    with dask.config.set(scheduler=client.get):
        with pytest.raises(ValueError, match="partition 2 is bad"):
            df.shuffle(on="k").compute()
        # and the cluster goes on
        assert len(df.partitions[[0, 1, 3]].shuffle(on="k").compute()) == 30
