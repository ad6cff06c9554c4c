"""What a Python executor holds for every task: files a client uploaded (``upload_file``) and
worker plugins (``register_plugin``), as the worker hands them over (``preload``, see
docs/protocol.md §3.5).

A file is written to the worker's upload directory (``$SHOAL_UPLOAD_DIR``, shared by its
executors; written to a temporary name and renamed, so executors writing the same file do not
see each other's halves). A ``.py`` file's directory goes on ``sys.path`` and the module is
imported, or reloaded when an earlier version was imported; a ``.zip``, ``.egg`` or ``.whl``
goes on ``sys.path`` itself. A plugin is unpickled and its ``setup(worker=...)`` called; its
``transition(key, start, finish)`` is called as each task starts and ends in this executor,
and ``teardown(worker=...)`` when it is replaced, removed, or the executor stops. A failure is
kept by name, for the client to read back (``client.upload_file`` and ``register_plugin``
raise it), and never stops the executor.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

import cloudpickle

logger = logging.getLogger("shoal.executor")


@dataclass
class WorkerInfo:
    """What a worker plugin's ``setup(worker=...)`` gets in a Shoal executor: the worker's
    address and name, and the executor's plugins by name (``worker.plugins``)."""

    address: str = field(default_factory=lambda: os.environ.get("SHOAL_WORKER_ADDRESS", ""))
    name: str = field(default_factory=lambda: os.environ.get("SHOAL_WORKER_NAME", ""))
    plugins: dict[str, Any] = field(default_factory=dict)
    local_directory: str = field(default_factory=lambda: os.environ.get("SHOAL_UPLOAD_DIR", ""))


class Preloads:
    """One executor's uploaded files and plugins."""

    def __init__(self) -> None:
        self.worker = WorkerInfo()
        self.errors: dict[str, str] = {}
        self.applied: set[str] = set()
        self._imported_dirs: set[str] = set()

    @property
    def plugins(self) -> dict[str, Any]:
        return self.worker.plugins

    def apply(self, name: str, kind: str, data: bytes) -> Optional[str]:
        """Apply one preload; returns the formatted error when it failed."""
        self.errors.pop(name, None)
        self.applied.discard(name)
        try:
            if kind == "file":
                self._file(name, data)
            elif kind == "plugin":
                self._teardown(name)
                self._plugin(name, data)
            elif kind == "remove":
                self._teardown(name)
                return None
            else:
                raise ValueError(f"unknown preload kind {kind!r}")
        except BaseException as exc:  # noqa: BLE001 - kept for the client, the executor goes on
            if isinstance(exc, KeyboardInterrupt):
                raise
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.errors[name] = text
            logger.error("preload %s (%s) failed:\n%s", name, kind, text)
            return text
        self.applied.add(name)
        return None

    def _file(self, name: str, data: bytes) -> None:
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"upload_file: {name!r} is not a plain file name")
        d = os.environ.get("SHOAL_UPLOAD_DIR") or os.path.join(os.getcwd(), "shoal-uploads")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, name)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        importlib.invalidate_caches()
        root, ext = os.path.splitext(name)
        if ext == ".py":
            if d not in sys.path:
                sys.path.insert(0, d)
            if root in sys.modules:
                importlib.reload(sys.modules[root])
            else:
                importlib.import_module(root)
        elif ext in (".zip", ".egg", ".whl"):
            if path not in sys.path:
                sys.path.insert(0, path)
        else:
            raise ValueError(f"upload_file: {name!r}: want a .py, .zip, .egg or .whl file")

    def _plugin(self, name: str, data: bytes) -> None:
        plugin = cloudpickle.loads(data)
        setup = getattr(plugin, "setup", None)
        if setup is not None:
            setup(worker=self.worker)
        self.plugins[name] = plugin

    def _teardown(self, name: str) -> None:
        plugin = self.plugins.pop(name, None)
        teardown = getattr(plugin, "teardown", None)
        if teardown is not None:
            try:
                teardown(worker=self.worker)
            except Exception:  # noqa: BLE001
                logger.exception("worker plugin %s: teardown failed", name)

    def transition(self, key: str, start: str, finish: str, **kwargs: Any) -> None:
        """Tell the plugins a task changed state (``executing`` → ``memory`` / ``error``)."""
        for name, plugin in list(self.plugins.items()):
            fn = getattr(plugin, "transition", None)
            if fn is not None:
                try:
                    fn(key, start, finish, **kwargs)
                except Exception:  # noqa: BLE001
                    logger.exception("worker plugin %s: transition failed", name)

    def close(self) -> None:
        for name in list(self.plugins):
            self._teardown(name)


_current: Optional[Preloads] = None


def current() -> Preloads:
    """This executor's preloads (one per process)."""
    global _current
    if _current is None:
        _current = Preloads()
    return _current


def plugins() -> dict[str, Any]:
    """The worker plugins registered in this executor (empty when none), without making its
    preloads: the executor asks before every run whether to tell plugins of it."""
    return _current.plugins if _current is not None else {}


def status(name: str) -> dict[str, str]:
    """Run on a worker by the client after a preload: {"status": "OK"} or the error."""
    err = current().errors.get(name)
    return {"status": "error", "error": err} if err else {"status": "OK"}
