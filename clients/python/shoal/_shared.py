"""Shared state held by the scheduler: Variable, Queue, Lock, Semaphore, Event and published
datasets, with dask.distributed's names and semantics (docs/python.md, "Shared state")."""

from __future__ import annotations


class Datasets:
    """The published-dataset methods of :class:`shoal.Client` (a mixin)."""
