"""Cluster control on the Client: restart, retire_workers, replicate, rebalance, processing and
the workers' and scheduler's logs, with dask.distributed's names and semantics.

The scheduler does the work (docs/protocol.md, "Cluster control"); values move between workers
over their data ports, never through the client.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .exceptions import TimeoutError

if TYPE_CHECKING:
    from .futures import Future

_LEVEL = re.compile(r"\blevel=(\w+)")


def _log_entries(lines: Sequence[Any]) -> list[tuple[str, str]]:
    """Log lines as dask gives them: (level, line), oldest first."""
    out = []
    for line in lines:
        s = str(line)
        m = _LEVEL.search(s)
        out.append((m.group(1) if m else "INFO", s))
    return out


class ClusterControl:
    """The cluster-control methods of :class:`shoal.Client` (a mixin: the Client class
    provides the connection these use)."""

    if TYPE_CHECKING:
        timeout: float

        def _request(self, header: dict[str, Any], timeout: Optional[float] = None) -> dict[str, Any]: ...

        def _data_request(self, worker: str, header: dict[str, Any], frames: Sequence[Any] = (),
                          expect: str = "data") -> tuple[dict[str, Any], list[bytearray]]: ...

        def scheduler_info(self) -> dict[str, Any]: ...

        def wait_for_workers(self, n_workers: int = 0, timeout: Optional[float] = None) -> None: ...

    def restart(self, timeout: Optional[float] = None, wait_for_workers: bool = True) -> None:
        """Restart every worker process (and so its Python executors) and drop all work: every
        future of every client is cancelled (``CancelledError`` saying the cluster was
        restarted), every result is gone. Returns once as many workers as before have joined
        again (``wait_for_workers=False``: at once); ``TimeoutError`` after ``timeout`` seconds
        (default: the client's timeout)."""
        t = self.timeout if timeout is None else float(timeout)
        before = time.monotonic()
        reply = self._request({"op": "restart"}, timeout=t)
        if wait_for_workers:
            left = max(t - (time.monotonic() - before), 0.0)
            try:
                self.wait_for_workers(int(reply.get("n") or 0), timeout=left)
            except TimeoutError as exc:
                raise TimeoutError(f"restart: {exc}") from None

    def restart_workers(self, workers: Sequence[str], timeout: Optional[float] = None,
                        raise_for_error: bool = True) -> dict[str, str]:
        """Restart these workers' processes (data addresses or names): their tasks run again
        elsewhere or after they rejoin, their results are recomputed where needed. Returns
        {worker: "OK"} once as many workers as before are back, or {worker: "timed out"}
        (``raise_for_error``: ``TimeoutError``) after ``timeout`` seconds."""
        names = [workers] if isinstance(workers, str) else list(workers)
        t = self.timeout if timeout is None else float(timeout)
        before = len(self.scheduler_info()["workers"])
        start = time.monotonic()
        self._request({"op": "restart", "addrs": names}, timeout=t)
        try:
            self.wait_for_workers(before, timeout=max(t - (time.monotonic() - start), 0.0))
        except TimeoutError:
            if raise_for_error:
                raise TimeoutError(f"restart_workers: the workers were not back within {t} s") from None
            return {w: "timed out" for w in names}
        return {w: "OK" for w in names}

    def story(self, *keys_or_stimuli: Any, on_error: str = "raise") -> list[tuple[str, str, str, str, int]]:
        """The scheduler's record of each key's state changes, oldest first, as tuples
        ``(key, start, finish, stimulus, seq)`` where ``stimulus`` is the event that caused it
        (``update-graph``, ``task-finished``, ``worker-left``, …) and ``seq`` its number. Keys
        may be futures; a key the scheduler does not know has no entries (``on_error="raise"``
        raises ``KeyError`` for it)."""
        if on_error not in ("raise", "ignore"):
            raise ValueError(f"story(on_error={on_error!r}): use 'raise' or 'ignore'")
        from ._keys import wire_key
        from .futures import Future

        keys = [k.key if isinstance(k, Future) else wire_key(k) for k in keys_or_stimuli]
        reply = self._request({"op": "story", "keys": keys})
        found = reply.get("who_has") or {}
        out: list[tuple[str, str, str, str, int]] = []
        for k in keys:
            if k not in found and on_error == "raise":
                raise KeyError(f"story: the scheduler does not know {k!r} (forgotten, or never submitted)")
            for line in found.get(k) or []:
                seq, event, start, finish = str(line).split(" ", 3)
                out.append((k, start, finish, event, int(seq)))
        return out

    def retire_workers(self, workers: Optional[Sequence[str]] = None, close_workers: bool = True,
                       names: Optional[Sequence[str]] = None, n: Optional[int] = None) -> dict[str, Any]:
        """Retire workers gracefully: no new tasks go to them, every result only they hold is
        copied to the other workers, then they close. ``workers`` are data addresses, ``names``
        worker names; ``n`` retires that many, those holding least. Returns {address: info} of
        the retired workers. ``close_workers=False`` is not available (a retired Shoal worker
        always exits; under LocalCluster it is not restarted)."""
        if not close_workers:
            raise NotImplementedError("retire_workers(close_workers=False): a retired Shoal worker always closes")
        infos = self.scheduler_info()["workers"]
        chosen = list(workers or []) + list(names or [])
        if n is not None:
            if chosen:
                raise ValueError("retire_workers: give workers/names or n, not both")
            by_memory = sorted(infos, key=lambda a: (int(infos[a].get("memory") or 0), a))
            chosen = by_memory[:max(int(n), 0)]
        if not chosen:
            return {}
        reply = self._request({"op": "retire_workers", "addrs": chosen}, timeout=max(self.timeout, 180.0))
        retired = [str(a) for a in reply.get("addrs") or []]
        return {a: infos.get(a, {"address": a}) for a in retired}

    def replicate(self, futures: Any, n: Optional[int] = None, workers: Any = None,
                  branching_factor: int = 2) -> None:
        """Copy each future's value to more workers, until ``n`` hold it (default: every
        worker). The copies are made worker to worker and counted once they exist; this returns
        once the scheduler has asked for them. ``workers`` (a subset to copy to) is not
        available."""
        if workers is not None:
            raise NotImplementedError("replicate(workers=...): Shoal chooses the workers holding least")
        if branching_factor < 1:
            raise ValueError(f"replicate: branching_factor={branching_factor} must be at least 1")
        keys = [f.key for f in _futures(futures)]
        count = len(self.scheduler_info()["workers"]) if n is None else int(n)
        if count < 1:
            raise ValueError(f"replicate: n={n} must be at least 1")
        self._request({"op": "replicate", "keys": keys, "n": count})

    def rebalance(self, futures: Any = None, workers: Any = None) -> None:
        """Move values from workers holding more than their share to workers holding less
        (``futures``: only those; default: every value in memory). A moved value is dropped
        from its old worker once the new one has it. ``workers`` is not available."""
        if workers is not None:
            raise NotImplementedError("rebalance(workers=...): Shoal balances over every worker")
        keys = [] if futures is None else [f.key for f in _futures(futures)]
        self._request({"op": "rebalance", "keys": keys})

    def _preload(self, name: str, kind: str, data: bytes, keep: bool = False) -> dict[str, Any]:
        """Register a file or plugin with the scheduler (kept for every worker, present and
        future), then ask each worker's executor how applying it went; raises the first
        failure, as dask does. ``keep``: leave an existing one of that name as it is."""
        if len(data) > _MAX_PRELOAD:
            raise ValueError(f"{name}: {len(data):,} bytes is over the {_MAX_PRELOAD:,}-byte limit of an uploaded "
                             "file or plugin; install large packages in the workers' environment instead")
        reply = self._request({"op": "preload", "name": name, "reason": kind, "payload": data, "n": int(keep)})
        if int(reply.get("n") or 0) < 0:
            return {}  # kept: one of that name was there
        from ._preload import status

        results = self.run(status, name) or {}  # type: ignore[attr-defined]
        for addr, r in results.items():
            if r.get("status") != "OK":
                raise RuntimeError(f"{name} failed on worker {addr}:\n{r.get('error')}")
        return dict(results)

    def upload_file(self, filename: str, load: bool = True) -> dict[str, Any]:
        """Ship a ``.py``, ``.zip``, ``.egg`` or ``.whl`` file to every worker's Python
        executors, now and for every executor or worker that starts later; a ``.py`` module is
        imported (reloaded when it was already), an archive goes on ``sys.path``. Returns
        {worker address: {"status": "OK"}}; raises if it failed anywhere. ``load=False`` (do
        not import) is not available: the module is imported, so errors show at once."""
        import os

        if not load:
            raise NotImplementedError("upload_file(load=False): Shoal imports an uploaded .py module at once")
        name = os.path.basename(filename)
        if os.path.splitext(name)[1] not in (".py", ".zip", ".egg", ".whl"):
            raise ValueError(f"upload_file({filename!r}): want a .py, .zip, .egg or .whl file")
        with open(filename, "rb") as f:
            data = f.read()
        return self._preload(name, "file", data)

    def register_plugin(self, plugin: Any, name: Optional[str] = None,
                        idempotent: Optional[bool] = None) -> dict[str, Any]:
        """Register a worker plugin (see :class:`shoal.WorkerPlugin`): it runs in every Python
        executor of every worker, now and later. ``name`` (default: the plugin's ``name``
        attribute, else its class and a token) replaces a plugin of that name; with
        ``idempotent=True`` an existing one is kept. Scheduler and nanny plugins are refused:
        the scheduler runs no Python and workers have no nanny."""
        import cloudpickle

        kinds = {c.__name__ for c in type(plugin).__mro__}
        if "SchedulerPlugin" in kinds:
            raise TypeError("register_plugin: scheduler plugins cannot run: Shoal's scheduler runs no Python")
        if "NannyPlugin" in kinds:
            raise TypeError("register_plugin: nanny plugins cannot run: Shoal workers have no nanny process")
        if not any(callable(getattr(plugin, m, None)) for m in ("setup", "teardown", "transition")):
            raise TypeError(f"register_plugin: {plugin!r} has none of setup, teardown, transition")
        if name is None:
            name = getattr(plugin, "name", None) or f"{type(plugin).__name__}-{id(plugin):x}"
        keep = bool(idempotent or getattr(plugin, "idempotent", False))
        return self._preload(str(name), "plugin", cloudpickle.dumps(plugin), keep=keep)

    def unregister_worker_plugin(self, name: str, nanny: Optional[bool] = None) -> dict[str, Any]:
        """Remove a worker plugin (its ``teardown`` runs in each executor)."""
        if nanny:
            raise NotImplementedError("unregister_worker_plugin(nanny=True): Shoal workers have no nanny process")
        self._request({"op": "preload", "name": name, "reason": "remove"})
        return {}

    def register_worker_callbacks(self, setup: Any = None) -> dict[str, Any]:
        """Run ``setup()`` in every Python executor of every worker, now and later (a worker
        plugin whose setup calls it)."""
        if setup is None:
            return {}
        return self.register_plugin(_SetupCallback(setup), name=f"setup-{getattr(setup, '__name__', 'callback')}")

    def processing(self, workers: Optional[Sequence[str]] = None) -> dict[str, list[str]]:
        """The keys each worker is running or has queued: {worker address: [keys]}."""
        addrs = [workers] if isinstance(workers, str) else list(workers or [])
        reply = self._request({"op": "processing", "addrs": addrs})
        return {str(a): [str(k) for k in ks or []] for a, ks in (reply.get("who_has") or {}).items()}

    def call_stack(self, futures: Any = None, keys: Any = None) -> dict[str, dict[str, list[str]]]:
        """The current call stack of running tasks, as dask's: {worker address: {key: lines}}.
        Without ``futures`` or ``keys``, every running task's. A Python task's stack is its
        executor's threads, dumped at once even inside C code; a Go task's, the goroutines
        running Go tasks on that worker. Queued tasks and finished ones have none."""
        want: Optional[set[str]] = None
        if futures is not None or keys is not None:
            want = {str(getattr(f, "key", f)) for f in (futures if isinstance(futures, (list, tuple, set)) else
                                                        [futures] if futures is not None else [])}
            want |= {str(k) for k in (keys if isinstance(keys, (list, tuple, set)) else
                                      [keys] if keys is not None else [])}
        out: dict[str, dict[str, list[str]]] = {}
        for addr, ks in self.processing().items():
            ks = [k for k in ks if want is None or k in want]
            if not ks:
                continue
            reply, _ = self._data_request(addr, {"op": "call_stack", "keys": ks}, expect="ok")
            stacks = {str(k): [str(x) for x in v or []] for k, v in (reply.get("who_has") or {}).items()}
            if stacks:
                out[addr] = stacks
        return out

    def get_scheduler_logs(self, n: Optional[int] = None) -> list[tuple[str, str]]:
        """The scheduler's last ``n`` log lines (all it keeps, up to 10,000, by default) as
        (level, line) pairs, oldest first."""
        reply = self._request({"op": "get_logs", "n": int(n or 0)})
        return _log_entries(reply.get("keys") or [])

    def get_worker_logs(self, n: Optional[int] = None, workers: Optional[Sequence[str]] = None,
                        nanny: bool = False) -> dict[str, list[tuple[str, str]]]:
        """Each worker's last ``n`` log lines as (level, line) pairs, oldest first:
        {worker address: [...]}. ``nanny=True`` is not available (Shoal workers have no
        nanny process)."""
        if nanny:
            raise NotImplementedError("get_worker_logs(nanny=True): Shoal workers have no nanny process")
        addrs = list(self.scheduler_info()["workers"]) if workers is None else (
            [workers] if isinstance(workers, str) else list(workers))
        out: dict[str, list[tuple[str, str]]] = {}
        for a in addrs:
            reply, _ = self._data_request(a, {"op": "get_logs", "n": int(n or 0)}, expect="ok")
            out[a] = _log_entries(reply.get("keys") or [])
        return out


class _SetupCallback:
    """register_worker_callbacks' plugin."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def setup(self, worker: Any) -> None:
        import inspect

        if "dask_worker" in inspect.signature(self.fn).parameters:
            self.fn(dask_worker=worker)
        else:
            self.fn()


class WorkerPlugin:
    """Base class of worker plugins, with dask.distributed's hooks (a class with these methods,
    or dask's own ``distributed.WorkerPlugin``, works the same). They run in each Python
    executor of every worker: ``setup(worker)`` when it gets the plugin, ``transition(key, start,
    finish, **kwargs)`` as each of its tasks goes ``ready → executing → memory | error``, and
    ``teardown(worker)`` when the plugin is replaced or removed or the executor stops.
    ``worker`` is a :class:`shoal._preload.WorkerInfo` (address, name, plugins)."""

    name: Optional[str] = None

    def setup(self, worker: Any) -> None:
        pass

    def teardown(self, worker: Any) -> None:
        pass

    def transition(self, key: str, start: str, finish: str, **kwargs: Any) -> None:
        pass


_MAX_PRELOAD = 60 << 20  # a preload travels in one control message (headers stop at 64 MiB)


def _futures(obj: Any) -> list["Future"]:
    from .futures import Future

    if isinstance(obj, Future):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    out = [f for f in obj if isinstance(f, Future)]
    if len(out) != len(list(obj)):
        raise TypeError("expected Futures (or a list or dict of them)")
    return out
