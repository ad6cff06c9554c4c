"""Shared fixtures. Cluster tests need the Go binary (bin/shoal or $SHOAL_BIN); without it they
are skipped with a message saying how to build it."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Iterator

import pytest

from shoal._discovery import read_scheduler_file
from shoal.cluster import find_binary
from shoal.exceptions import ShoalError

from harness import FakeWorker


def _binary() -> str | None:
    try:
        return find_binary()
    except ShoalError:
        return None


def scheduler_ports(info: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> tuple[str, int]:
    """The address (host:port) and gossip port of ``shoal scheduler --port 0 --gossip-port 0
    --scheduler-file info`` running as proc, once it wrote the file: the scheduler picks its
    ports, which a test cannot pick for it without a race (another process may take a port
    found free before the scheduler binds it). AssertionError if it exits or writes nothing."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(info):
        if proc.poll() is not None:
            raise AssertionError(f"the scheduler exited ({proc.returncode}) before writing {info}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the scheduler wrote no {info} in {timeout} s")
        time.sleep(0.02)
    meta = read_scheduler_file(info)
    return meta["address"].removeprefix("tcp://"), int(meta["gossip"].rsplit(":", 1)[1])


BINARY = _binary()
needs_binary = pytest.mark.skipif(
    BINARY is None,
    reason="shoal binary not found: run `go build -o bin/shoal ./cmd/shoal` or set SHOAL_BIN")


@pytest.fixture()
def worker() -> Iterator[FakeWorker]:
    """A real executor process (``python -m shoal.executor``) with the harness as its worker."""
    w = FakeWorker()
    yield w
    if w.proc.poll() is None:
        w.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator["object"]:
    if BINARY is None:
        pytest.skip("shoal binary not found: run `go build -o bin/shoal ./cmd/shoal` or set SHOAL_BIN")
    from shoal import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=2, dashboard_port=None) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster: object) -> Iterator["object"]:
    from shoal import Client

    with Client(cluster, timeout=20) as c:  # type: ignore[arg-type]
        yield c


def pytest_report_header() -> str:
    return f"shoal binary: {BINARY or 'NOT FOUND (cluster tests skipped)'}; SHOAL_BIN={os.environ.get('SHOAL_BIN', '')}"


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether process pid is ancestor or one of its descendants."""
    for _ in range(64):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def executor_mappings(name: str) -> int:
    """How many mappings of memfds called ``name`` the executors started by this test process
    hold, summed (shared-memory windows are ``shoal-window``, result segments
    ``shoal-result``). Executors of other runs on the machine are not counted."""
    n = 0
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"shoal.executor" not in f.read():
                    continue
            if not _descends_from(int(pid), me):
                continue
            with open(f"/proc/{pid}/maps") as f:
                n += f.read().count(f"memfd:{name}")
        except OSError:
            continue
    return n
