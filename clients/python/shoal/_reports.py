"""Reports on the Client: the task stream, the statistical profile and performance reports,
with dask.distributed's names (``get_task_stream``, ``profile``, ``performance_report``).

The scheduler records task runs (and a cluster memory sample a second) only while a recording
session is open: a ``get_task_stream`` or ``performance_report`` block, or a browser on the
dashboard. The profiler samples the call stacks of running tasks (Python tasks every ~10 ms
from a thread in each executor, Go tasks through pprof labels) only while a session has turned
it on (``profile=True`` on a report, or :meth:`Reports.start_profiling`). With neither open they
cost nothing. See docs/protocol.md (``task_stream``, ``profile``) and docs/dashboard.md.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from .client import Client

TimeSpec = Union[None, int, float, str]

_UNITS = {"ms": 1e-3, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "m": 60.0, "min": 60.0,
          "minute": 60.0, "minutes": 60.0, "h": 3600.0, "hour": 3600.0, "hours": 3600.0}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*$")


def _when(t: TimeSpec, now: float) -> int:
    """A window bound as unix nanoseconds (0: unbounded). Numbers are unix seconds, as dask's
    timestamps; a string is a duration before now ("20s", "5 minutes")."""
    if t is None:
        return 0
    if isinstance(t, str):
        m = _DURATION.match(t.lower())
        if not m or (m.group(2) or "s") not in _UNITS:
            raise ValueError(f"cannot read {t!r} as a duration (e.g. '20s', '5 minutes')")
        return int((now - float(m.group(1)) * _UNITS[m.group(2) or "s"]) * 1e9)
    return int(float(t) * 1e9)


def _payload(reply: dict[str, Any]) -> Any:
    raw = reply.get("payload") or b"{}"
    return json.loads(bytes(raw).decode())


def _record(task: dict[str, Any]) -> dict[str, Any]:
    """A recorded run in dask's task-stream shape (times in unix seconds)."""
    return {
        "key": task["key"], "group": task["group"], "worker": task["worker"],
        "worker_name": task.get("worker_name", ""), "thread": task.get("thread", 0),
        "status": "error" if task.get("erred") else "OK", "nbytes": task.get("nbytes", 0),
        "startstops": ({"action": "compute", "start": task["start"] / 1e9, "stop": task["stop"] / 1e9},),
    }


class Reports:
    """The report methods of :class:`shoal.Client` (a mixin: the Client class provides the
    connection these use)."""

    if TYPE_CHECKING:
        timeout: float
        _token: str

        def _request(self, header: dict[str, Any], timeout: Optional[float] = None) -> dict[str, Any]: ...

        @property
        def dashboard_link(self) -> str: ...

    # -- task stream --------------------------------------------------------------------------

    def _task_stream(self, n: int = 0, start: int = 0, stop: int = 0) -> dict[str, Any]:
        reply = self._request({"op": "task_stream", "n": n, "start": start, "stop": stop})
        out: dict[str, Any] = _payload(reply)
        return out

    def get_task_stream(self, start: TimeSpec = None, stop: TimeSpec = None, count: Optional[int] = None,
                        plot: bool = False, filename: str = "task-stream.html",
                        bokeh_resources: Any = None) -> list[dict[str, Any]]:
        """The task runs the scheduler recorded between ``start`` and ``stop`` (unix seconds,
        or a duration before now such as ``"20s"``), oldest first, at most the last ``count``:
        dicts with ``key``, ``group``, ``worker``, ``thread``, ``status``, ``nbytes`` and
        ``startstops`` as in dask. The scheduler records only while a session is open (use the
        ``get_task_stream(client)`` context manager, ``performance_report``, or keep the
        dashboard open); it keeps the last 100,000 runs. ``plot`` is not available (the
        dashboard and :func:`performance_report` draw the stream)."""
        if plot:
            raise NotImplementedError("get_task_stream(plot=...): use the dashboard or performance_report()")
        del filename, bokeh_resources  # only used by plot
        now = time.time()
        rec = self._task_stream(0, _when(start, now), _when(stop, now))
        tasks = [_record(t) for t in rec.get("tasks") or []]
        if count is not None:
            tasks = tasks[-int(count):] if count > 0 else []
        return tasks

    # -- profile ------------------------------------------------------------------------------

    def _profile(self, n: int = 0, key: str = "") -> dict[str, Any]:
        out: dict[str, Any] = _payload(self._request({"op": "profile", "n": n, "key": key}))
        return out

    def start_profiling(self) -> None:
        """Turn the statistical profiler on for this client's session (until
        :meth:`stop_profiling`): every worker samples its running tasks' call stacks every
        ~10 ms, aggregated per task group. Off by default; it costs nothing while off."""
        self._profile(1)

    def stop_profiling(self) -> None:
        """Close the session :meth:`start_profiling` opened (the profiler stops when no
        session, the dashboard's switch included, wants it). What was sampled is kept."""
        self._profile(-1)

    def profile(self, key: Optional[str] = None, start: TimeSpec = None, stop: TimeSpec = None,
                workers: Any = None, merge_workers: bool = True, plot: bool = False,
                filename: Optional[str] = None, server: bool = False,
                scheduler: bool = False) -> dict[str, Any]:
        """The statistical profile sampled so far, as a flame-graph tree ``{"name", "count",
        "children": [...]}`` (counts are samples, ~10 ms of a running task each): of task group
        ``key``, or of the whole cluster (one child per group). Samples are taken only while the
        profiler is on (:meth:`start_profiling`, ``performance_report(profile=True)``, the
        dashboard's switch). ``start``/``stop``, ``workers``, ``plot``, ``server`` and
        ``scheduler`` are not available: the profile is cumulative and merged over workers."""
        for name, value, default in (("start", start, None), ("stop", stop, None), ("workers", workers, None),
                                     ("plot", plot, False), ("filename", filename, None),
                                     ("server", server, False), ("scheduler", scheduler, False),
                                     ("merge_workers", merge_workers, True)):
            if value != default:
                raise NotImplementedError(f"profile({name}=...) is not available in Shoal")
        p = self._profile(0, key or "")
        if key:
            tree: dict[str, Any] = (p.get("groups") or {}).get(key) or {"name": key, "count": 0, "children": []}
            return tree
        cluster: dict[str, Any] = p.get("cluster") or {"name": "cluster", "count": 0, "children": []}
        return cluster

    # -- the report page ----------------------------------------------------------------------

    def _report_html(self, start: int, stop: int) -> bytes:
        """The dashboard's performance report page for [start, stop] (unix ns)."""
        link = self.dashboard_link
        if not link:
            raise RuntimeError("performance_report needs the scheduler's dashboard (it renders the report); "
                               "this scheduler runs without one (--dashboard-port -1)")
        parts = urllib.parse.urlsplit(link)
        token = urllib.parse.parse_qs(parts.query).get("token", [""])[0] or self._token
        base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/", "", ""))
        url = base + f"api/v1/report?start={start}&stop={stop}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:  # noqa: S310 - the scheduler's own URL
                body: bytes = r.read()
                return body
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"the dashboard could not render the report: HTTP {e.code} {e.read()[:200]!r}") from None


def _client(client: Optional["Client"]) -> "Client":
    if client is not None:
        return client
    from .client import default_client

    return default_client()


class get_task_stream:
    """Record the task stream while the block runs, as dask's ``get_task_stream``::

        with get_task_stream(client) as ts:
            x.compute()
        ts.data  # the task runs of the block, as Client.get_task_stream returns them

    ``plot`` is not available (use :func:`performance_report` for a drawing)."""

    def __init__(self, client: Optional["Client"] = None, plot: bool = False,
                 filename: str = "task-stream.html") -> None:
        if plot:
            raise NotImplementedError("get_task_stream(plot=...): use performance_report()")
        self.client = _client(client)
        self.filename = filename
        self.data: list[dict[str, Any]] = []
        self._start = 0

    def __enter__(self) -> "get_task_stream":
        self._start = time.time_ns()
        self.client._task_stream(1, self._start)
        return self

    def __exit__(self, typ: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        rec = self.client._task_stream(-1, self._start, time.time_ns())
        self.data = [_record(t) for t in rec.get("tasks") or []]

    async def __aenter__(self) -> "get_task_stream":
        return self.__enter__()

    async def __aexit__(self, typ: Optional[type[BaseException]], exc: Optional[BaseException],
                        tb: Optional[TracebackType]) -> None:
        self.__exit__(typ, exc, tb)


class performance_report:
    """Write a self-contained HTML report of what ran in the block, as dask's
    ``performance_report``::

        with performance_report(filename="report.html"):
            x.compute()

    The page (task stream, time per task group, memory over time, the profile, the workers)
    embeds its data and opens offline. With ``profile=True`` (the default) the statistical
    profiler runs during the block. The dashboard renders the page, so the scheduler must have
    one; the same page can be downloaded from the dashboard for any window it watched.
    ``stacklevel``, ``mode`` and ``storage_options`` are accepted for dask's signature; only
    local files are written."""

    def __init__(self, filename: str = "dask-report.html", stacklevel: int = 1, mode: Optional[str] = None,
                 storage_options: Optional[dict[str, Any]] = None, client: Optional["Client"] = None,
                 profile: bool = True) -> None:
        if storage_options:
            raise NotImplementedError("performance_report(storage_options=...): only local files are written")
        if mode not in (None, "inline", "cdn"):
            raise ValueError(f"performance_report(mode={mode!r}): the report is always self-contained")
        del stacklevel
        self.filename = filename
        self._client = client
        self._profile = profile
        self._start = 0

    def __enter__(self) -> "performance_report":
        c = self._client = _client(self._client)
        self._start = time.time_ns()
        c._task_stream(1, self._start)
        if self._profile:
            c._profile(1)
        return self

    def __exit__(self, typ: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        c = self._client
        assert c is not None
        stop = time.time_ns()
        try:
            page = c._report_html(self._start, stop)
            with open(self.filename, "wb") as f:
                f.write(page)
        finally:
            if self._profile:
                c._profile(-1)
            c._task_stream(-1)

    async def __aenter__(self) -> "performance_report":
        return self.__enter__()

    async def __aexit__(self, typ: Optional[type[BaseException]], exc: Optional[BaseException],
                        tb: Optional[TracebackType]) -> None:
        self.__exit__(typ, exc, tb)
