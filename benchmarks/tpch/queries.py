"""The 22 TPC-H queries as a dask.dataframe user writes them: read the parquet tables, filter,
merge, group and aggregate lazily, ``compute()`` the (small) aggregate, then order and limit it in
pandas. The parameters are the specification's validation values, the ones in DuckDB's
``tpch_queries()``, whose answers :mod:`check` compares against.

Each ``qN(t)`` takes a :class:`Tables` and returns a pandas DataFrame whose columns are, in order,
the SQL query's output columns. Whatever scheduler dask is configured with runs the graphs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pandas as pd


class Tables:
    """The eight tables as lazy dask DataFrames over ``root/<table>/*.parquet``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __getattr__(self, name: str) -> Any:
        import dask.dataframe as dd

        if name.startswith("_"):
            raise AttributeError(name)
        df = dd.read_parquet(str(self.root / name))
        setattr(self, name, df)
        return df


def ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s)


def q1(t: Tables) -> pd.DataFrame:
    li = t.lineitem
    li = li[li.l_shipdate <= ts("1998-09-02")]
    li = li.assign(disc_price=li.l_extendedprice * (1 - li.l_discount))
    li = li.assign(charge=li.disc_price * (1 + li.l_tax))
    g = li.groupby(["l_returnflag", "l_linestatus"]).agg(
        sum_qty=("l_quantity", "sum"), sum_base_price=("l_extendedprice", "sum"),
        sum_disc_price=("disc_price", "sum"), sum_charge=("charge", "sum"),
        avg_qty=("l_quantity", "mean"), avg_price=("l_extendedprice", "mean"),
        avg_disc=("l_discount", "mean"), count_order=("l_orderkey", "size"))
    return g.compute().reset_index().sort_values(["l_returnflag", "l_linestatus"])


def q2(t: Tables) -> pd.DataFrame:
    region = t.region[t.region.r_name == "EUROPE"]
    nation = t.nation.merge(region, left_on="n_regionkey", right_on="r_regionkey")
    supp = t.supplier.merge(nation, left_on="s_nationkey", right_on="n_nationkey")
    ps = t.partsupp.merge(supp, left_on="ps_suppkey", right_on="s_suppkey")
    part = t.part[(t.part.p_size == 15) & t.part.p_type.str.endswith("BRASS")]
    j = part.merge(ps, left_on="p_partkey", right_on="ps_partkey")
    mincost = ps.groupby("ps_partkey").ps_supplycost.min().reset_index().rename(
        columns={"ps_supplycost": "min_cost"})
    j = j.merge(mincost, on="ps_partkey")
    j = j[j.ps_supplycost == j.min_cost]
    out = j[["s_acctbal", "s_name", "n_name", "p_partkey", "p_mfgr", "s_address", "s_phone",
             "s_comment"]].compute()
    return out.sort_values(["s_acctbal", "n_name", "s_name", "p_partkey"],
                           ascending=[False, True, True, True]).head(100)


def q3(t: Tables) -> pd.DataFrame:
    day = ts("1995-03-15")
    c = t.customer[t.customer.c_mktsegment == "BUILDING"]
    o = t.orders[t.orders.o_orderdate < day]
    li = t.lineitem[t.lineitem.l_shipdate > day]
    j = c.merge(o, left_on="c_custkey", right_on="o_custkey")
    j = li.merge(j, left_on="l_orderkey", right_on="o_orderkey")
    j = j.assign(revenue=j.l_extendedprice * (1 - j.l_discount))
    g = j.groupby(["l_orderkey", "o_orderdate", "o_shippriority"]).revenue.sum().reset_index()
    out = g.compute().sort_values(["revenue", "o_orderdate"], ascending=[False, True]).head(10)
    return out[["l_orderkey", "revenue", "o_orderdate", "o_shippriority"]]


def q4(t: Tables) -> pd.DataFrame:
    o = t.orders[(t.orders.o_orderdate >= ts("1993-07-01")) & (t.orders.o_orderdate < ts("1993-10-01"))]
    li = t.lineitem[t.lineitem.l_commitdate < t.lineitem.l_receiptdate]
    late = li[["l_orderkey"]].drop_duplicates()
    j = o.merge(late, left_on="o_orderkey", right_on="l_orderkey")
    g = j.groupby("o_orderpriority").o_orderkey.count().rename("order_count").reset_index()
    return g.compute().sort_values("o_orderpriority")


def q5(t: Tables) -> pd.DataFrame:
    r = t.region[t.region.r_name == "ASIA"]
    n = t.nation.merge(r, left_on="n_regionkey", right_on="r_regionkey")
    s = t.supplier.merge(n, left_on="s_nationkey", right_on="n_nationkey")
    o = t.orders[(t.orders.o_orderdate >= ts("1994-01-01")) & (t.orders.o_orderdate < ts("1995-01-01"))]
    j = t.lineitem.merge(o, left_on="l_orderkey", right_on="o_orderkey")
    j = j.merge(t.customer, left_on="o_custkey", right_on="c_custkey")
    j = j.merge(s, left_on=["l_suppkey", "c_nationkey"], right_on=["s_suppkey", "s_nationkey"])
    j = j.assign(revenue=j.l_extendedprice * (1 - j.l_discount))
    g = j.groupby("n_name").revenue.sum().reset_index()
    return g.compute().sort_values("revenue", ascending=False)


def q6(t: Tables) -> pd.DataFrame:
    li = t.lineitem
    li = li[(li.l_shipdate >= ts("1994-01-01")) & (li.l_shipdate < ts("1995-01-01"))
            & (li.l_discount >= 0.05) & (li.l_discount <= 0.07) & (li.l_quantity < 24)]
    revenue = (li.l_extendedprice * li.l_discount).sum().compute()
    return pd.DataFrame({"revenue": [revenue]})


def q7(t: Tables) -> pd.DataFrame:
    n = t.nation[t.nation.n_name.isin(["FRANCE", "GERMANY"])]
    li = t.lineitem[(t.lineitem.l_shipdate >= ts("1995-01-01")) & (t.lineitem.l_shipdate <= ts("1996-12-31"))]
    s = t.supplier.merge(n, left_on="s_nationkey", right_on="n_nationkey")[["s_suppkey", "n_name"]]
    s = s.rename(columns={"n_name": "supp_nation"})
    c = t.customer.merge(n, left_on="c_nationkey", right_on="n_nationkey")[["c_custkey", "n_name"]]
    c = c.rename(columns={"n_name": "cust_nation"})
    j = li.merge(s, left_on="l_suppkey", right_on="s_suppkey")
    j = j.merge(t.orders, left_on="l_orderkey", right_on="o_orderkey")
    j = j.merge(c, left_on="o_custkey", right_on="c_custkey")
    j = j[j.supp_nation != j.cust_nation]
    j = j.assign(l_year=j.l_shipdate.dt.year, volume=j.l_extendedprice * (1 - j.l_discount))
    g = j.groupby(["supp_nation", "cust_nation", "l_year"]).volume.sum().rename("revenue").reset_index()
    return g.compute().sort_values(["supp_nation", "cust_nation", "l_year"])


def q8(t: Tables) -> pd.DataFrame:
    r = t.region[t.region.r_name == "AMERICA"]
    n1 = t.nation.merge(r, left_on="n_regionkey", right_on="r_regionkey")[["n_nationkey"]]
    n2 = t.nation[["n_nationkey", "n_name"]]
    p = t.part[t.part.p_type == "ECONOMY ANODIZED STEEL"][["p_partkey"]]
    o = t.orders[(t.orders.o_orderdate >= ts("1995-01-01")) & (t.orders.o_orderdate <= ts("1996-12-31"))]
    c = t.customer.merge(n1, left_on="c_nationkey", right_on="n_nationkey")[["c_custkey"]]
    j = t.lineitem.merge(p, left_on="l_partkey", right_on="p_partkey")
    j = j.merge(o, left_on="l_orderkey", right_on="o_orderkey")
    j = j.merge(c, left_on="o_custkey", right_on="c_custkey")
    j = j.merge(t.supplier, left_on="l_suppkey", right_on="s_suppkey")
    j = j.merge(n2, left_on="s_nationkey", right_on="n_nationkey")
    volume = j.l_extendedprice * (1 - j.l_discount)
    j = j.assign(o_year=j.o_orderdate.dt.year, volume=volume, brazil=volume.where(j.n_name == "BRAZIL", 0.0))
    g = j.groupby("o_year")[["brazil", "volume"]].sum().compute()
    out = (g.brazil / g.volume).rename("mkt_share").reset_index()
    return out.sort_values("o_year")


def q9(t: Tables) -> pd.DataFrame:
    p = t.part[t.part.p_name.str.contains("green")][["p_partkey"]]
    j = t.lineitem.merge(p, left_on="l_partkey", right_on="p_partkey")
    j = j.merge(t.partsupp, left_on=["l_suppkey", "l_partkey"], right_on=["ps_suppkey", "ps_partkey"])
    j = j.merge(t.supplier, left_on="l_suppkey", right_on="s_suppkey")
    j = j.merge(t.orders, left_on="l_orderkey", right_on="o_orderkey")
    j = j.merge(t.nation, left_on="s_nationkey", right_on="n_nationkey")
    j = j.assign(nation=j.n_name, o_year=j.o_orderdate.dt.year,
                 amount=j.l_extendedprice * (1 - j.l_discount) - j.ps_supplycost * j.l_quantity)
    g = j.groupby(["nation", "o_year"]).amount.sum().rename("sum_profit").reset_index()
    return g.compute().sort_values(["nation", "o_year"], ascending=[True, False])


def q10(t: Tables) -> pd.DataFrame:
    o = t.orders[(t.orders.o_orderdate >= ts("1993-10-01")) & (t.orders.o_orderdate < ts("1994-01-01"))]
    li = t.lineitem[t.lineitem.l_returnflag == "R"]
    j = li.merge(o, left_on="l_orderkey", right_on="o_orderkey")
    j = j.merge(t.customer, left_on="o_custkey", right_on="c_custkey")
    j = j.merge(t.nation, left_on="c_nationkey", right_on="n_nationkey")
    j = j.assign(revenue=j.l_extendedprice * (1 - j.l_discount))
    keys = ["c_custkey", "c_name", "c_acctbal", "c_phone", "n_name", "c_address", "c_comment"]
    g = j.groupby(keys).revenue.sum().reset_index().compute()
    g = g.sort_values(["revenue", "c_custkey"], ascending=[False, True]).head(20)
    return g[["c_custkey", "c_name", "revenue", "c_acctbal", "n_name", "c_address", "c_phone", "c_comment"]]


def q11(t: Tables) -> pd.DataFrame:
    n = t.nation[t.nation.n_name == "GERMANY"]
    s = t.supplier.merge(n, left_on="s_nationkey", right_on="n_nationkey")[["s_suppkey"]]
    ps = t.partsupp.merge(s, left_on="ps_suppkey", right_on="s_suppkey")
    ps = ps.assign(value=ps.ps_supplycost * ps.ps_availqty)
    total = ps.value.sum() * 0.0001
    g = ps.groupby("ps_partkey").value.sum().reset_index()
    g, total = g.compute(), total.compute()
    g = g[g.value > total]
    return g.sort_values("value", ascending=False)


def q12(t: Tables) -> pd.DataFrame:
    li = t.lineitem
    li = li[li.l_shipmode.isin(["MAIL", "SHIP"]) & (li.l_commitdate < li.l_receiptdate)
            & (li.l_shipdate < li.l_commitdate) & (li.l_receiptdate >= ts("1994-01-01"))
            & (li.l_receiptdate < ts("1995-01-01"))]
    j = li.merge(t.orders, left_on="l_orderkey", right_on="o_orderkey")
    high = j.o_orderpriority.isin(["1-URGENT", "2-HIGH"])
    j = j.assign(high_line_count=high.astype("int64"), low_line_count=(~high).astype("int64"))
    g = j.groupby("l_shipmode")[["high_line_count", "low_line_count"]].sum().reset_index()
    return g.compute().sort_values("l_shipmode")


def q13(t: Tables) -> pd.DataFrame:
    o = t.orders[~t.orders.o_comment.str.contains("special.*requests", regex=True)]
    j = t.customer[["c_custkey"]].merge(o[["o_custkey", "o_orderkey"]], left_on="c_custkey",
                                        right_on="o_custkey", how="left")
    per = j.groupby("c_custkey").o_orderkey.count().rename("c_count").reset_index()
    g = per.groupby("c_count").c_custkey.count().rename("custdist").reset_index()
    return g.compute().sort_values(["custdist", "c_count"], ascending=[False, False])


def q14(t: Tables) -> pd.DataFrame:
    li = t.lineitem[(t.lineitem.l_shipdate >= ts("1995-09-01")) & (t.lineitem.l_shipdate < ts("1995-10-01"))]
    j = li.merge(t.part, left_on="l_partkey", right_on="p_partkey")
    rev = j.l_extendedprice * (1 - j.l_discount)
    promo = rev.where(j.p_type.str.startswith("PROMO"), 0.0).sum()
    promo, total = promo.compute(), rev.sum().compute()
    return pd.DataFrame({"promo_revenue": [100.0 * promo / total]})


def q15(t: Tables) -> pd.DataFrame:
    li = t.lineitem[(t.lineitem.l_shipdate >= ts("1996-01-01")) & (t.lineitem.l_shipdate < ts("1996-04-01"))]
    li = li.assign(total_revenue=li.l_extendedprice * (1 - li.l_discount))
    rev = li.groupby("l_suppkey").total_revenue.sum().reset_index().compute()
    top = rev[rev.total_revenue == rev.total_revenue.max()]
    s = t.supplier[["s_suppkey", "s_name", "s_address", "s_phone"]].compute()
    out = s.merge(top, left_on="s_suppkey", right_on="l_suppkey")
    return out[["s_suppkey", "s_name", "s_address", "s_phone", "total_revenue"]].sort_values("s_suppkey")


def q16(t: Tables) -> pd.DataFrame:
    p = t.part
    p = p[(p.p_brand != "Brand#45") & ~p.p_type.str.startswith("MEDIUM POLISHED")
          & p.p_size.isin([49, 14, 23, 45, 19, 3, 36, 9])]
    bad = t.supplier[t.supplier.s_comment.str.contains("Customer.*Complaints", regex=True)][["s_suppkey"]]
    ps = t.partsupp.merge(bad, left_on="ps_suppkey", right_on="s_suppkey", how="left")
    ps = ps[ps.s_suppkey.isna()]
    j = ps.merge(p, left_on="ps_partkey", right_on="p_partkey")
    g = j.groupby(["p_brand", "p_type", "p_size"]).ps_suppkey.nunique().rename("supplier_cnt").reset_index()
    return g.compute().sort_values(["supplier_cnt", "p_brand", "p_type", "p_size"],
                                   ascending=[False, True, True, True])


def q17(t: Tables) -> pd.DataFrame:
    p = t.part[(t.part.p_brand == "Brand#23") & (t.part.p_container == "MED BOX")][["p_partkey"]]
    j = t.lineitem.merge(p, left_on="l_partkey", right_on="p_partkey")
    avg = j.groupby("l_partkey").l_quantity.mean().rename("avg_qty").reset_index()
    j = j.merge(avg, on="l_partkey")
    j = j[j.l_quantity < 0.2 * j.avg_qty]
    return pd.DataFrame({"avg_yearly": [j.l_extendedprice.sum(min_count=1).compute() / 7.0]})  # NULL if none


def q18(t: Tables) -> pd.DataFrame:
    qty = t.lineitem.groupby("l_orderkey").l_quantity.sum().reset_index()
    big = qty[qty.l_quantity > 300]
    j = t.orders.merge(big, left_on="o_orderkey", right_on="l_orderkey")
    j = j.merge(t.customer, left_on="o_custkey", right_on="c_custkey")
    out = j[["c_name", "c_custkey", "o_orderkey", "o_orderdate", "o_totalprice", "l_quantity"]].compute()
    return out.sort_values(["o_totalprice", "o_orderdate"], ascending=[False, True]).head(100)


def q19(t: Tables) -> pd.DataFrame:
    li = t.lineitem
    li = li[li.l_shipmode.isin(["AIR", "AIR REG"]) & (li.l_shipinstruct == "DELIVER IN PERSON")]
    j = li.merge(t.part, left_on="l_partkey", right_on="p_partkey")

    def arm(brand: str, containers: list[str], lo: int, hi: int, size: int) -> Any:
        return ((j.p_brand == brand) & j.p_container.isin(containers) & (j.l_quantity >= lo)
                & (j.l_quantity <= hi) & (j.p_size >= 1) & (j.p_size <= size))

    sel = (arm("Brand#12", ["SM CASE", "SM BOX", "SM PACK", "SM PKG"], 1, 11, 5)
           | arm("Brand#23", ["MED BAG", "MED BOX", "MED PKG", "MED PACK"], 10, 20, 10)
           | arm("Brand#34", ["LG CASE", "LG BOX", "LG PACK", "LG PKG"], 20, 30, 15))
    j = j[sel]
    return pd.DataFrame({"revenue": [(j.l_extendedprice * (1 - j.l_discount)).sum().compute()]})


def q20(t: Tables) -> pd.DataFrame:
    li = t.lineitem[(t.lineitem.l_shipdate >= ts("1994-01-01")) & (t.lineitem.l_shipdate < ts("1995-01-01"))]
    shipped = li.groupby(["l_partkey", "l_suppkey"]).l_quantity.sum().rename("shipped").reset_index()
    p = t.part[t.part.p_name.str.startswith("forest")][["p_partkey"]]
    ps = t.partsupp.merge(p, left_on="ps_partkey", right_on="p_partkey")
    ps = ps.merge(shipped, left_on=["ps_partkey", "ps_suppkey"], right_on=["l_partkey", "l_suppkey"])
    ps = ps[ps.ps_availqty > 0.5 * ps.shipped][["ps_suppkey"]].drop_duplicates()
    n = t.nation[t.nation.n_name == "CANADA"]
    s = t.supplier.merge(n, left_on="s_nationkey", right_on="n_nationkey")
    s = s.merge(ps, left_on="s_suppkey", right_on="ps_suppkey")
    return s[["s_name", "s_address"]].compute().sort_values("s_name")


def q21(t: Tables) -> pd.DataFrame:
    li = t.lineitem[["l_orderkey", "l_suppkey", "l_receiptdate", "l_commitdate"]]
    # orders with more than one supplier, and with more than one late supplier
    nsupp = li.groupby("l_orderkey").l_suppkey.nunique().rename("nsupp").reset_index()
    late = li[li.l_receiptdate > li.l_commitdate]
    nlate = late.groupby("l_orderkey").l_suppkey.nunique().rename("nlate").reset_index()
    n = t.nation[t.nation.n_name == "SAUDI ARABIA"]
    s = t.supplier.merge(n, left_on="s_nationkey", right_on="n_nationkey")[["s_suppkey", "s_name"]]
    o = t.orders[t.orders.o_orderstatus == "F"][["o_orderkey"]]
    j = late.merge(s, left_on="l_suppkey", right_on="s_suppkey")
    j = j.merge(o, left_on="l_orderkey", right_on="o_orderkey")
    j = j.merge(nsupp, on="l_orderkey").merge(nlate, on="l_orderkey")
    j = j[(j.nsupp > 1) & (j.nlate == 1)]
    g = j.groupby("s_name").l_orderkey.count().rename("numwait").reset_index().compute()
    return g.sort_values(["numwait", "s_name"], ascending=[False, True]).head(100)


def q22(t: Tables) -> pd.DataFrame:
    codes = ["13", "31", "23", "29", "30", "18", "17"]
    c = t.customer.assign(cntrycode=t.customer.c_phone.str.slice(0, 2))
    c = c[c.cntrycode.isin(codes)]
    avg = c[c.c_acctbal > 0.0].c_acctbal.mean()
    c = c[c.c_acctbal > avg]
    ordered = t.orders[["o_custkey"]].drop_duplicates()
    c = c.merge(ordered, left_on="c_custkey", right_on="o_custkey", how="left")
    c = c[c.o_custkey.isna()]
    g = c.groupby("cntrycode").c_acctbal.agg(["count", "sum"]).reset_index().compute()
    g.columns = ["cntrycode", "numcust", "totacctbal"]
    return g.sort_values("cntrycode")


QUERIES: dict[int, Callable[[Tables], pd.DataFrame]] = {
    i: globals()[f"q{i}"] for i in range(1, 23)}
