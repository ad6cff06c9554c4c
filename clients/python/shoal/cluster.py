"""LocalCluster: a scheduler and N workers on this machine, started from the Go binary.

It runs ``shoal local --workers N --nthreads T --memory-limit BYTES --host H --port 0
--gossip-port 0 --dashboard-port P --python <this interpreter> --token-file F --ready-file R``
in a new process group and waits until the binary writes the ready file, a JSON object
``{"scheduler": "host:port", "dashboard": "http://..."}``, which it does once all N workers
registered. ``close()`` sends SIGTERM to the whole process group, then SIGKILL to whatever is
left, and removes the cluster's temporary directory (token, ready file, log).

``close()`` also runs on ``with`` exit, when the object is collected, at interpreter exit (so
after an uncaught KeyboardInterrupt too) and, through a signal handler installed while a cluster
is open, when SIGTERM, SIGHUP or SIGINT would otherwise kill the process without Python's
cleanup (their default action). A handler the program installed itself is left alone: it decides
whether the process ends, and atexit cleans up if it does. Whatever ends this process, SIGKILL
included, ``shoal local`` notices within 200 ms that its parent is gone (``--parent-pid``), stops
every process and removes the directory (``--parent-dir``).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import weakref
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional, Union

from . import _discovery
from ._adaptive import Adaptive
from .exceptions import ShoalError, TimeoutError

if TYPE_CHECKING:
    from .client import Client

logger = logging.getLogger("shoal")

_live: "weakref.WeakSet[LocalCluster]" = weakref.WeakSet()

# Signals whose default action ends the process without running Python's cleanup (atexit).
_FATAL_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT")
                       if hasattr(signal, name))


def find_binary() -> str:
    """The ``shoal`` Go binary: ``$SHOAL_BIN``, the one bundled in the package, the repository's
    ``bin/shoal`` (editable installs), then ``shoal`` on ``PATH``."""
    env = os.environ.get("SHOAL_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise ShoalError(f"SHOAL_BIN={env} is not an executable file")
        return env
    here = Path(__file__).resolve().parent
    candidates = [here / "bin" / "shoal"]
    for parent in here.parents:
        if (parent / "go.mod").exists():
            candidates.append(parent / "bin" / "shoal")
            break
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("shoal")
    if found and _is_go_binary(found):
        return found
    raise ShoalError("the shoal binary was not found: set SHOAL_BIN, reinstall the package"
                     " (pip install . builds it), or run `go build -o bin/shoal ./cmd/shoal`"
                     f" (looked in {', '.join(str(c) for c in candidates)} and PATH)")


def _is_go_binary(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        return magic == b"\x7fELF" or magic[:2] in (b"\xcf\xfa", b"\xfe\xed")
    except OSError:
        return False


def parse_memory(limit: Union[str, int, float, None]) -> int:
    """Bytes from ``"auto"`` (total memory / workers is decided by the caller), ``"4GB"``,
    ``"512MiB"``, an int or a float fraction of total memory (``0.5``). 0 (or None) means no
    limit, which the caller turns into the whole machine's memory."""
    if limit is None or limit == 0:
        return 0
    if isinstance(limit, (int, float)) and not isinstance(limit, bool):
        if 0 < limit <= 1 and isinstance(limit, float):
            return int(limit * total_memory())
        return int(limit)
    text = str(limit).strip().lower().replace(" ", "")
    if text == "auto":
        return -1
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
             "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "k": 10**3, "m": 10**6,
             "g": 10**9, "t": 10**12, "b": 1}
    for u, mult in units.items():
        if text.endswith(u):
            return int(float(text[: -len(u)]) * mult)
    return int(float(text))


def total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _dask_options(kwargs: dict[str, Any], dashboard_port: Optional[int]) -> Optional[int]:
    """Take the dask.distributed LocalCluster keywords that mean something here from kwargs
    (``dashboard_address``; ``silence_logs``, moot as the cluster logs to its own file) and
    refuse any other: an option silently ignored is a bug report waiting to happen. Returns
    the dashboard port to use."""
    opts = dict(kwargs)
    if "dashboard_address" in opts:
        addr = opts.pop("dashboard_address")
        if addr is None:
            dashboard_port = None
        else:
            port = str(addr).rsplit(":", 1)[-1]
            dashboard_port = int(port) if port else 0
    opts.pop("silence_logs", None)
    if opts:
        raise TypeError(f"LocalCluster() got unsupported keyword argument(s): {', '.join(sorted(opts))}"
                        " (see help(shoal.LocalCluster) for what it takes)")
    return dashboard_port


class LocalCluster:
    """A Shoal scheduler with ``n_workers`` workers on this machine (real processes, real ports).

    ``memory_limit`` is per worker: ``"auto"`` (total memory divided by the workers), bytes, or
    a string like ``"2GB"``; 0 (or None) disables the limit, as in dask: the workers never spill
    or pause. It covers each worker and its Python
    executor; ``memory_target_fraction`` (0.6), ``memory_spill_fraction`` (0.7) and
    ``memory_pause_fraction`` (0.8) set the thresholds, as for dask's workers (docs/operations.md).
    ``resources`` ({"GPU": 1}) are abstract resources each worker offers: a task asking
    for them (``submit(..., resources=...)``, ``dask.annotate(resources=...)``) runs only where
    they are free. ``dashboard_port=0`` picks a free port,
    ``None`` disables the dashboard. A random token protects the cluster unless ``token`` is
    given (``token=""`` disables authentication). ``start_python`` (on by default) has each
    worker start its Python executor as soon as it joins, as a dask worker is a Python process
    already: the first task then does not wait for Python to start. Off, executors
    start at each worker's first Python task, and a cluster running only Go tasks starts none.
    """

    def __init__(self, n_workers: int = 2, threads_per_worker: int = 1,
                 memory_limit: Union[str, int, float, None] = "auto",
                 dashboard_port: Optional[int] = 0, host: str = "127.0.0.1",
                 token: Optional[str] = None, *, scheduler_port: int = 0,
                 timeout: float = 60.0, binary: Optional[str] = None,
                 python: Optional[str] = None, extra_args: Optional[list[str]] = None,
                 processes: bool = True, memory_target_fraction: Optional[float] = None,
                 memory_spill_fraction: Optional[float] = None,
                 memory_pause_fraction: Optional[float] = None,
                 resources: Optional[dict[str, float]] = None, asynchronous: bool = False,
                 start_python: bool = True, **kwargs: Any) -> None:
        dashboard_port = _dask_options(kwargs, dashboard_port)
        if n_workers < 0:
            raise ValueError("n_workers must be >= 0")
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self.token = secrets.token_hex(16) if token is None else token
        self.host = host
        self.binary = binary or find_binary()
        mem = parse_memory(memory_limit)
        limit_arg = str(mem)  # 0: no limit, as in dask (the workers never spill or pause)
        if mem < 0:
            mem = total_memory() // max(n_workers, 1)
            limit_arg = str(mem)
        elif mem == 0:
            mem = total_memory()  # each worker may use the whole machine
        self.memory_limit = mem
        self._owner = os.getpid()  # a fork's copy of this object owns no process
        self._lock = threading.Lock()
        self._closed = False
        self._client: Optional[Client] = None
        self._adaptive: Optional[Adaptive] = None
        self._published: Optional[Path] = None  # the discovery file (shoal._discovery)
        self._log: Optional[IO[bytes]] = None
        self._dir = tempfile.mkdtemp(prefix="shoal-cluster-")  # mode 0700
        _live.add(self)
        _install_signal_handlers()
        self._ready_file = os.path.join(self._dir, "ready.json")
        self._token_file = os.path.join(self._dir, "token")
        self._log_path = os.path.join(self._dir, "cluster.log")
        args = [self.binary, "local", "--workers", str(n_workers), "--nthreads",
                str(threads_per_worker), "--memory-limit", limit_arg, "--host", host,
                "--port", str(scheduler_port), "--gossip-port", "0",
                "--python", python or sys.executable, "--ready-file", self._ready_file,
                "--parent-pid", str(os.getpid()), "--parent-dir", self._dir]
        if self.token:  # token="": no authentication
            fd = os.open(self._token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.token)
            args += ["--token-file", self._token_file]
        if dashboard_port is None:
            args += ["--dashboard-port", "-1"]
        else:
            args += ["--dashboard-port", str(dashboard_port)]
        for flag, frac in (("--memory-target", memory_target_fraction),
                           ("--memory-spill", memory_spill_fraction),
                           ("--memory-pause", memory_pause_fraction)):
            if frac is not None:  # dask's False ("off") is 0 here
                args += [flag, repr(float(frac))]
        if resources:
            for name, amount in resources.items():
                if not str(name) or any(c in str(name) for c in ",= ") or not float(amount) > 0:
                    raise ValueError(f"LocalCluster(resources={resources!r}): want names without ',', '=' or"
                                     " spaces, and positive amounts")
            args += ["--resources", ",".join(f"{k}={float(v)!r}" for k, v in resources.items())]
        if start_python:
            args.append("--start-python")
        args += list(extra_args or [])
        self.args = args
        self.scheduler_address = ""
        self._dashboard = ""
        self.ready_info: dict[str, Any] = {}
        self._timeout = timeout
        self.asynchronous = asynchronous
        if not asynchronous:
            self._start()

    def _start(self) -> "LocalCluster":
        """Start ``shoal local`` and wait until its workers joined."""
        if getattr(self, "proc", None) is not None:
            return self
        self._spawn()
        try:
            self._wait_ready(self._timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _spawn(self) -> None:
        self._log = open(self._log_path, "wb")
        env = dict(os.environ)
        env["PYTHONPATH"] = _python_path()
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.pgid = self.proc.pid

    async def _start_async(self) -> "LocalCluster":
        """``_start`` on the running event loop: the process starts, and the loop polls for its
        ready file between other work (no thread)."""
        import asyncio

        if getattr(self, "proc", None) is not None:
            return self
        self._spawn()
        try:
            deadline = time.monotonic() + self._timeout
            while not self._ready(deadline):
                await asyncio.sleep(0.02)
        except BaseException:
            await self.close_async()
            raise
        return self

    async def close_async(self, timeout: float = 10.0) -> None:
        """``close()`` without blocking the event loop (the processes' exit is waited for in a
        thread: a process group has no awaitable exit)."""
        import asyncio

        await asyncio.to_thread(self.close, timeout)

    def __await__(self) -> Any:
        """``cluster = await LocalCluster(asynchronous=True)``: starts without blocking the loop."""
        return self._start_async().__await__()

    async def __aenter__(self) -> "LocalCluster":
        return await self._start_async()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close_async()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready(deadline):
            time.sleep(0.02)

    def _ready(self, deadline: float) -> bool:
        """Whether the cluster wrote its ready file (then its address is known); raises when it
        exited, or ``deadline`` passed."""
        if os.path.exists(self._ready_file):
            try:
                with open(self._ready_file) as f:
                    info = json.load(f)
                if info.get("scheduler"):
                    self.ready_info = info
                    self.scheduler_address = str(info["scheduler"])
                    self._dashboard = str(info.get("dashboard") or "")
                    self._published = _discovery.publish(self.scheduler_address, self.token, self._dashboard,
                                                         int(info.get("pid") or self.proc.pid))
                    return True
            except (ValueError, OSError):
                pass  # still being written
        code = self.proc.poll()
        if code is not None:
            raise ShoalError(f"`shoal local` exited with code {code} before the cluster was"
                             f" ready:\n{self.logs(tail=40)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the local cluster was not ready within {self._timeout}s:\n"
                               f"{self.logs(tail=40)}")
        return False

    @property
    def dashboard_link(self) -> str:
        """The dashboard URL ("" when disabled). With a token it carries the token, so that
        opening it logs the browser in (the dashboard then drops it from the address)."""
        if self._dashboard and self.token:
            return f"{self._dashboard}?token={urllib.parse.quote(self.token)}"
        return self._dashboard

    def logs(self, tail: Optional[int] = None) -> str:
        """What the cluster processes printed."""
        try:
            text = Path(self._log_path).read_text(errors="replace")
        except OSError:
            return ""
        if tail:
            text = "\n".join(text.splitlines()[-tail:])
        return text

    def _control(self) -> "Client":
        """A client of this cluster for its own requests (scaling), made on first use."""
        with self._lock:
            if self._client is None:
                from .client import Client

                self._client = Client(self, set_as_default=False)
            return self._client

    @property
    def workers(self) -> dict[str, dict[str, Any]]:
        """The workers now registered: {worker name: its info (address, nthreads, memory, …)}."""
        return {str(w.get("name") or a): w for a, w in self._control().scheduler_info()["workers"].items()}

    def scale(self, n: int = 0, memory: Any = None, cores: Any = None) -> None:
        """Start or stop worker processes until ``n`` run; returns once they have. Workers
        leave newest first, gracefully: their results are copied to the others before they
        exit. Stops adaptive scaling. ``memory`` and ``cores`` (sizing by resources) are not
        available: give ``n``."""
        if memory is not None or cores is not None:
            raise NotImplementedError("scale(memory=..., cores=...): give the number of workers, n")
        if self._adaptive is not None:
            self._adaptive.stop()
            self._adaptive = None
        self._scale(n)

    def _scale(self, n: int) -> None:
        if int(n) != n or n < 0:
            raise ValueError(f"scale: n={n!r} must be a whole number >= 0")
        client = self._control()
        client._request({"op": "scale", "n": int(n)}, timeout=max(client.timeout, 240.0))
        self.n_workers = int(n)

    def adapt(self, minimum: int = 0, maximum: float = math.inf, target_duration: Union[str, float] = "5s",
              wait_count: int = 3, interval: Union[str, float] = "1s", *, minimum_cores: Any = None,
              maximum_cores: Any = None, minimum_memory: Any = None, maximum_memory: Any = None) -> Adaptive:
        """Scale between ``minimum`` and ``maximum`` workers on the work pending, as dask's
        ``adapt``: enough workers to finish it in ``target_duration``; up at once, down after
        ``wait_count`` intervals in a row agree (see shoal._adaptive). Returns the policy;
        ``scale()`` or ``close()`` stops it. The *_cores/*_memory bounds are not available."""
        for name, v in (("minimum_cores", minimum_cores), ("maximum_cores", maximum_cores),
                        ("minimum_memory", minimum_memory), ("maximum_memory", maximum_memory)):
            if v is not None:
                raise NotImplementedError(f"adapt({name}=...): bound the number of workers with minimum/maximum")
        if self._adaptive is not None:
            self._adaptive.stop()
        self._adaptive = Adaptive(self, minimum, maximum, target_duration, wait_count, interval)
        return self._adaptive

    def pids(self) -> list[int]:
        """Process ids of every live process this cluster started (its process group)."""
        pgid = getattr(self, "pgid", None)
        return [] if pgid is None else _group_members(pgid)

    def close(self, timeout: float = 10.0) -> None:
        """Stop every process of the cluster: SIGTERM, then SIGKILL after ``timeout`` seconds;
        then remove the cluster's temporary directory."""
        if os.getpid() != self._owner:
            return  # a forked child's copy: the processes are its parent's
        with self._lock:
            if self._closed:
                return
            self._closed = True
            adaptive, client = self._adaptive, self._client
            self._adaptive = self._client = None
        if adaptive is not None:
            adaptive.stop()
        if client is not None:
            try:
                client.close()
            except Exception:
                pass
        self._shutdown(timeout)

    def _shutdown(self, timeout: float) -> None:
        """close()'s work; may run again (a signal handler that interrupted close())."""
        if self._published is not None:
            try:
                self._published.unlink()
            except OSError:
                pass
        try:
            proc: Optional[subprocess.Popen[bytes]] = getattr(self, "proc", None)
            if proc is not None:
                self._stop_group(proc, timeout)
        finally:
            try:
                if self._log is not None:
                    self._log.close()
            except Exception:
                pass
            _live.discard(self)
            shutil.rmtree(self._dir, ignore_errors=True)
            _restore_signal_handlers()

    def _stop_group(self, proc: "subprocess.Popen[bytes]", timeout: float) -> None:
        if proc.poll() is None:
            _signal_group(self.pgid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + timeout / 2
        while _group_members(self.pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_members(self.pgid) or proc.poll() is None:
            _signal_group(self.pgid, signal.SIGKILL)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 5
        while _group_members(self.pgid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (f"<LocalCluster: {self.scheduler_address or 'starting'}, workers={self.n_workers},"
                f" threads={self.threads_per_worker}>")

    def _repr_html_(self) -> str:
        rows = [("Scheduler", self.scheduler_address or "starting"), ("Workers", str(self.n_workers)),
                ("Threads per worker", str(self.threads_per_worker)),
                ("Memory limit per worker", f"{self.memory_limit / (1 << 30):.2f} GiB")]
        return html_summary("Shoal LocalCluster", rows, self.dashboard_link, self._dashboard)


def html_summary(title: str, rows: list[tuple[str, str]], link: str = "", link_text: str = "") -> str:
    """A titled two-column HTML table (Jupyter's rich display), with a dashboard link row."""
    import html

    cells = [(k, html.escape(v)) for k, v in rows]
    if link:
        cells.append(("Dashboard", f"<a href='{html.escape(link, quote=True)}' target='_blank'>"
                                   f"{html.escape(link_text or link)}</a>"))
    body = "".join(f"<tr><th style='text-align: left'>{k}</th><td style='text-align: left'>{v}</td></tr>"
                   for k, v in cells)
    return f"<div><strong>{html.escape(title)}</strong><table>{body}</table></div>"


def _python_path() -> str:
    """PYTHONPATH for the executors: this interpreter's sys.path (as multiprocessing's spawn
    gives dask's workers), so modules importable here are importable in the tasks too."""
    here = str(Path(__file__).resolve().parent.parent)
    entries = [here]
    for p in sys.path:
        p = os.path.abspath(p or os.getcwd())
        if p not in entries and os.path.isdir(p):
            entries.append(p)
    old = os.environ.get("PYTHONPATH")
    if old:
        entries.extend(e for e in old.split(os.pathsep) if e and e not in entries)
    return os.pathsep.join(entries)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``, from /proc."""
    out: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for e in entries:
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) > 2 and rest[0] != "Z" and int(rest[2]) == pgid:
            out.append(int(e))
    return out


def children_of(pid: int) -> list[int]:
    """All live descendants of ``pid`` (from /proc), e.g. a cluster's workers and executors."""
    parents: dict[int, int] = {}
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat") as f:
                rest = f.read().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if rest and rest[0] != "Z":
            parents[int(e)] = int(rest[1])
    out: list[int] = []
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out.extend(kids)
        frontier.extend(kids)
    return out


def _owned() -> list[LocalCluster]:
    me = os.getpid()
    return [c for c in list(_live) if c._owner == me]


@atexit.register
def _close_all() -> None:
    for c in _owned():
        try:
            c.close(timeout=3)
        except Exception:
            pass


def _install_signal_handlers() -> None:
    """While this process has a cluster open, SIGTERM, SIGHUP and SIGINT, where their action is
    still the default one (which ends the process at once, without atexit), first close the
    clusters. Python's own SIGINT handler (KeyboardInterrupt) and any handler the program set
    stay as they are: interrupting a computation must not stop the cluster, and a process that
    ends by an exception runs atexit. Only the main thread may set handlers; elsewhere
    ``shoal local``'s watch on its parent process is what cleans up."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in _FATAL_SIGNALS:
        try:
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _close_then_die)
        except (ValueError, OSError):  # not settable here (embedded interpreter)
            pass


def _restore_signal_handlers() -> None:
    """The default actions again once the last cluster of this process is closed."""
    if _owned() or threading.current_thread() is not threading.main_thread():
        return
    for sig in _FATAL_SIGNALS:
        try:
            if signal.getsignal(sig) is _close_then_die:
                signal.signal(sig, signal.SIG_DFL)
        except (ValueError, OSError):
            pass


def _close_then_die(signum: int, frame: Any) -> None:
    """Close this process's clusters, then end the process by the signal's default action,
    which is what this handler replaced (the exit status still says which signal)."""
    for c in _owned():
        c._closed = True  # even if close() was interrupted: its steps may run twice
        try:
            c._shutdown(timeout=3)
        except Exception:
            pass
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
    os._exit(128 + signum)  # not reached: the default action ends the process
