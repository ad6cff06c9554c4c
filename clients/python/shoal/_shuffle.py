"""The ``"shoal"`` shuffle method for dask.dataframe (docs/python.md, "Shuffles").

dask.dataframe's task-based shuffle cuts every input partition into a dict of ``n`` pieces,
then runs one ``getitem`` task per (input, output) pair and one concat task per output. On
dask.distributed those pieces are live objects inside one process. On Shoal every task result
crosses the executor boundary, so each ``getitem`` would decode the whole dict to keep
``1/n`` of it, and each piece would be encoded again on its way to the concat.

The ``"shoal"`` method keeps the same arithmetic with a cheaper shape, ``2n`` tasks instead
of ``n² + 2n``:

* ``split(i)``: input partition ``i``'s rows sorted by output partition (``df.take`` with
  pandas' counting sort, exactly as dask's ``shuffle_group``) and the row offset where each
  output partition starts. One value, written once; large ones go to a shared-memory segment
  that executors and same-host workers map without copying (docs/protocol.md §3.5).
* ``gather(j)``: depends on every split, takes rows ``[start_j, end_j)`` of each (views into
  the mapping) and concatenates them as dask's ``_concat`` does.

Each output partition reads only its own rows, but the worker running ``gather(j)`` holds
every split: on one machine that is a mapping, across machines a whole split travels where
dask's tasks shuffle would move only its pieces. A :class:`~shoal.Client` therefore makes
``"shoal"`` the default only for a cluster on loopback addresses.

dask.dataframe has no registry of shuffle methods: :func:`install` wraps
``dask.dataframe.dask_expr._shuffle.Shuffle._lower`` so that the method name ``"shoal"``
lowers to :class:`ShoalShuffle` (any other name is handled by dask as before). It patches
once, when that module is imported (now, or later through an import hook). If dask's
internals ever change shape, the patch is skipped and :func:`available` says so; a Client
then leaves dask's default method in place.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from typing import Any, Optional, Sequence

METHOD = "shoal"
_ROUTE = "_partitions"  # the column dask.dataframe adds to say where each row goes
_MODULE = "dask.dataframe.dask_expr._shuffle"

logger = logging.getLogger("shoal")
_lock = threading.Lock()
_state = {"patched": False, "failed": False, "hooked": False}


# -------------------------------------------------------------------------------------------
# the two task functions (run in executors)


def _routes_only(cols: Any) -> bool:
    """Whether ``cols`` (a shuffle's partitioning_index) is the ``_partitions`` column alone,
    which only says where each row goes: split drops it and the expression's meta omits it."""
    return cols == _ROUTE or (isinstance(cols, (list, tuple)) and list(cols) == [_ROUTE])


def split(df: Any, cols: Any, npartitions: int, ignore_index: bool) -> tuple[Any, Any]:
    """``df``'s rows in output-partition order and the offsets that bound each partition.

    The output partition of a row is computed as dask's ``shuffle_group`` computes it in a
    one-stage shuffle: the ``_partitions`` column when ``cols`` names it, else a hash of
    ``cols``. A ``_partitions`` column that is the whole of ``cols`` only routes rows and is
    dropped, as dask's P2P shuffle drops it. Returns ``(frame, bounds)``: output ``j`` is
    ``frame.iloc[bounds[j]:bounds[j + 1]]``."""
    import numpy as np
    import pandas as pd
    from dask.dataframe.dispatch import hash_object_dispatch

    if isinstance(cols, str):
        cols = [cols]
    if cols and cols[0] == _ROUTE:
        ind = df[cols[0]]
        if _routes_only(cols):
            df = df.drop(columns=[_ROUTE])  # only routing: not carried (see ShoalShuffle._meta)
    else:
        ind = hash_object_dispatch(df[cols] if cols else df, index=False)
    ind = np.asarray(ind) % npartitions
    indexer, counts = pd._libs.algos.groupsort_indexer(ind.astype(np.intp, copy=False),
                                                       npartitions)
    out = df.take(indexer)  # (with ignore_index, gather drops the index of each piece)
    # counts[0] counts rows of group -1 (none here): they sort first and belong to no output
    bounds = np.cumsum(counts)
    return out, bounds


def gather(splits: Sequence[tuple[Any, Any]], part: int, ignore_index: bool) -> Any:
    """Output partition ``part``: its rows of every split, concatenated in input order."""
    from dask.dataframe.core import _concat

    pieces = [frame.iloc[int(bounds[part]):int(bounds[part + 1])] for frame, bounds in splits]
    if ignore_index:  # as dask's shuffle_group does, piece by piece
        pieces = [p.reset_index(drop=True) for p in pieces]
    return _concat(pieces, ignore_index)


# -------------------------------------------------------------------------------------------
# the dask expression and its installation


def _define(mod: Any) -> Any:
    """ShoalShuffle, defined against the loaded dask.dataframe.dask_expr._shuffle."""

    class ShoalShuffle(mod.TaskShuffle):  # type: ignore[misc]
        """A one-stage shuffle in ``2n`` tasks: see :mod:`shoal._shuffle`."""

        @functools.cached_property
        def _meta(self) -> Any:
            meta = super()._meta  # TaskShuffle's: index reset when ignore_index
            if _routes_only(self.partitioning_index) and _ROUTE in meta.columns:
                meta = meta.drop(columns=[_ROUTE])  # as split drops it (and P2P's meta)
            return meta

        def _layer(self) -> dict[Any, Any]:
            split_name = f"shoal-split-{self._name}"
            n_in = self.frame.npartitions
            inputs = [(split_name, i) for i in range(n_in)]
            dsk: dict[Any, Any] = {
                (split_name, i): (split, key, self.partitioning_index, self.npartitions_out,
                                  self.ignore_index)
                for i, key in enumerate(self.frame.__dask_keys__())
            }
            for j, p in enumerate(self._partitions):
                dsk[(self._name, j)] = (gather, inputs, p, self.ignore_index)
            return dsk

    # dask tokenizes expressions by pickling them, their class by reference: name it as this
    # module's attribute (set by _patch), not as a local of _define
    ShoalShuffle.__qualname__ = "ShoalShuffle"
    ShoalShuffle.__module__ = __name__
    return ShoalShuffle


ShoalShuffle: Any = None  # the expression class, once _patch has defined it


def _patch(mod: Any) -> None:
    with _lock:
        if _state["patched"] or _state["failed"]:
            return
        try:
            from dask.utils import get_default_shuffle_method

            shuffle_cls = mod.Shuffle
            repartition = mod.Repartition
            original = shuffle_cls._lower
            shoal_cls = _define(mod)
        except Exception as exc:  # dask changed shape: leave it alone
            _state["failed"] = True
            logger.info("shoal: the 'shoal' shuffle method is not available: %s", exc)
            return

        def _lower(self: Any) -> Any:
            method = self.method or get_default_shuffle_method()
            if method != METHOD:
                return original(self)
            frame = self.frame
            if self.npartitions_out < frame.npartitions:
                frame = repartition(frame, new_partitions=self.npartitions_out)
            return shoal_cls(frame, self.partitioning_index, self.npartitions_out,
                             self.ignore_index, self.options, self.original_partitioning_index)

        _lower.__wrapped__ = original  # type: ignore[attr-defined]
        global ShoalShuffle
        shuffle_cls._lower = _lower
        ShoalShuffle = shoal_cls
        _state["patched"] = True


class _Hook(importlib.abc.MetaPathFinder):
    """Patches dask's shuffle module right after it is first imported."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Optional[importlib.machinery.ModuleSpec]:
        if name != _MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _Loader(spec.loader)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.inner.exec_module(module)
        _patch(module)


def install() -> None:
    """Make ``dataframe.shuffle.method="shoal"`` usable (idempotent, cheap: dask.dataframe
    is not imported for it)."""
    mod = sys.modules.get(_MODULE)
    if mod is not None:
        _patch(mod)
        return
    with _lock:
        if _state["hooked"]:
            return
        _state["hooked"] = True
        sys.meta_path.insert(0, _Hook())


def available() -> bool:
    """Whether dask.dataframe is installed and the ``"shoal"`` method can be used."""
    if _state["failed"]:
        return False
    try:
        import importlib.util

        return importlib.util.find_spec("dask.dataframe") is not None and \
            importlib.util.find_spec("pandas") is not None
    except (ImportError, ValueError):
        return False
