"""Finding a cluster's token from its address, for a client in another process.

A LocalCluster writes ``<host>_<port>.json`` (``{"address", "token", "dashboard", "pid"}``, mode
0600, in a directory only its user can enter: ``$SHOAL_DISCOVERY_DIR``, default
``~/.shoal/clusters``) and removes it when it closes. ``Client("tcp://host:port")`` without a
token reads it, so another process of the same user connects with what ``print(cluster)``
shows, while the token stays required (other users cannot read the file). A file whose
process is gone (the cluster was killed) is removed when found. ``Client(scheduler_file=...)``
reads the same shape from a file ``shoal scheduler --scheduler-file`` wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional


def directory() -> Path:
    return Path(os.environ.get("SHOAL_DISCOVERY_DIR") or Path.home() / ".shoal" / "clusters")


def _name(address: str) -> str:
    addr = address.split("://", 1)[-1]
    host, _, port = addr.rpartition(":")
    return f"{host.strip('[]')}_{port}.json"


def publish(address: str, token: str, dashboard: str, pid: int) -> Optional[Path]:
    """Write the cluster's discovery file; None when it cannot be (it is only a convenience)."""
    try:
        d = directory()
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = d / _name(address)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"address": f"tcp://{address.split('://', 1)[-1]}", "token": token,
                       "dashboard": dashboard, "pid": pid}, f)
        os.replace(tmp, path)
        return path
    except OSError:
        return None


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def lookup(address: str) -> Optional[dict[str, Any]]:
    """The discovery record of the cluster at ``address``, or None."""
    path = directory() / _name(address)
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not _alive(info.get("pid")):
        try:
            path.unlink()
        except OSError:
            pass
        return None
    return info


def read_scheduler_file(path: str) -> dict[str, Any]:
    """A scheduler file's contents (``address`` and, when the cluster has one, ``token``)."""
    try:
        info: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"scheduler_file={path!r}: cannot read it: {exc}") from None
    if not info.get("address"):
        raise ValueError(f"scheduler_file={path!r} names no address")
    return info
