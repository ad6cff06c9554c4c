"""Zero-copy hand-over of large values between two workers on one machine (docs/protocol.md
§3.4, §3.5), through real processes: a scheduler and two `shoal worker` processes, each with its
Prometheus /metrics port so that the tests can see how values travelled.

A large Python result goes from executor A to worker A in a sealed memfd; worker B opens that
memfd through /proc instead of fetching the bytes; executor B maps it copy-on-write. The tests
check the values, that the hand-over happened (shoal_worker_shm_transfers_in_total), that a task
mutating its input changes nothing stored, that SHOAL_EXECUTOR_SHM=0 turns it all off, and that
worker B keeps its copy when worker A dies."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pytest

from shoal import Client
from shoal.cluster import find_binary
from shoal.exceptions import ShoalError

from conftest import executor_mappings, scheduler_ports

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(os, "memfd_create")
    or not os.path.exists("/proc/sys/kernel/random/boot_id"),
    reason="shared-memory segments need Linux")

N = 2_500_000  # 20 MB of float64; the table has N // 2 rows of int64 + float64 (20 MB)
# the executors import the package and this module (tasks are pickled by reference)
PYTHONPATH = os.pathsep.join([str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent),
                              os.environ.get("PYTHONPATH", "")])


class ProcCluster:
    """`shoal scheduler` and two `shoal worker` processes (names "a" and "b") on this machine."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        try:
            binary = find_binary()
        except ShoalError:
            pytest.skip("no shoal binary")
        self.dir = tempfile.mkdtemp(prefix="shoal-shm-test-")
        token = os.path.join(self.dir, "token")
        with open(token, "w") as f:
            f.write("segment-test-token")
        self.env = {**os.environ, "PYTHONPATH": PYTHONPATH, **(env or {})}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_url: dict[str, str] = {}
        self.logfiles: dict[str, Any] = {}  # each process's output, by name
        # the scheduler picks its ports (ports picked here could be taken by another process
        # before it binds them: CI saw a scheduler never listen) and tells them in its file
        info = os.path.join(self.dir, "scheduler.json")
        self._start("scheduler", [binary, "scheduler", "--port", "0", "--gossip-port", "0", "--scheduler-file", info,
                                  "--dashboard-port", "-1", "--journal", "none", "--token-file", token,
                                  "--log-level", "warn"])
        try:
            self.address, gossip = scheduler_ports(info, self.procs["scheduler"])
        except AssertionError as exc:
            logs = self.logs()
            self.close()  # not left running, nor its directory behind
            raise AssertionError(f"the scheduler did not start: {exc}\n{logs}") from None
        try:
            for name in ("a", "b"):
                # the worker picks its metrics port too, and logs its URL (at info)
                self._start(name, [binary, "worker", "--join", f"127.0.0.1:{gossip}", "--name", name,
                                   "--nthreads", "1", "--python", sys.executable, "--token-file", token,
                                   "--metrics-port", "0", "--log-level", "info"])
        except BaseException:
            self.close()  # the scheduler and a started worker are not left running
            raise
        self.token = "segment-test-token"

    def _start(self, name: str, args: list[str]) -> None:
        log = self.logfiles[name] = open(os.path.join(self.dir, f"{name}.log"), "wb")
        self.procs[name] = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def metrics(self, worker: str) -> str:
        """The worker's metrics URL, from its log."""
        if worker not in self.metrics_url:
            deadline = time.monotonic() + 30
            while True:
                with open(os.path.join(self.dir, f"{worker}.log"), errors="replace") as f:
                    # a whole line only: a line being written may be cut short
                    m = re.search(r'msg="worker metrics" .*url=(\S+/metrics)$', f.read(), re.M)
                if m:
                    self.metrics_url[worker] = m.group(1)
                    break
                assert time.monotonic() < deadline, f"worker {worker} logged no metrics URL\n{self.logs()}"
                time.sleep(0.05)
        return self.metrics_url[worker]

    def client(self) -> tuple[Client, dict[str, str]]:
        """A client, once both workers joined, and the workers' data addresses by name."""
        deadline = time.monotonic() + 60
        while True:
            try:
                c = Client(self.address, token=self.token, timeout=5)
                break
            except ShoalError as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no client connection: {exc}\n{self.logs()}") from exc
                time.sleep(0.1)
        while True:
            workers = c.scheduler_info()["workers"]
            names = {str(w["name"]): addr for addr, w in workers.items()}
            if {"a", "b"} <= names.keys():
                return c, names
            assert time.monotonic() < deadline, f"workers did not join: {workers}"
            time.sleep(0.1)

    def metric(self, worker: str, name: str) -> float:
        url = self.metrics(worker)
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
        m = re.search(rf"^shoal_worker_{name} (\S+)$", text, re.M)
        assert m, f"no metric shoal_worker_{name} at {url}"
        return float(m.group(1))

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait(30)

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(15)
        for log in self.logfiles.values():
            log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        out = []
        for name in self.logfiles:
            with open(os.path.join(self.dir, f"{name}.log"), errors="replace") as f:
                out.append(f"--- {name}\n{f.read()[-3000:]}")
        return "\n".join(out)


@pytest.fixture()
def procs() -> Iterator[ProcCluster]:
    c = ProcCluster()
    yield c
    c.close()


def make_array(n: int, seed: int) -> Any:
    return np.random.default_rng(seed).standard_normal(n)


def make_table(n: int, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return pa.table({"k": np.arange(n, dtype=np.int64) + seed, "x": rng.standard_normal(n)})


def digest_array(a: Any) -> tuple[int, float, float]:
    return int(a.size), float(a.sum()), float(a[-1])


def digest_table(t: Any) -> tuple[int, int, float]:
    return t.num_rows, int(t.column("k")[0].as_py()), float(np.asarray(t.column("x")).sum())


def mutate(a: Any) -> float:
    a[:] = -1.0  # the task's own copy-on-write pages: the stored value must not change
    return float(a.sum())


def mapped_segments() -> int:
    """Result segments this machine's executors have mapped."""
    return executor_mappings("shoal-result")


def check_values(client: Client, names: dict[str, str], seed: int, gather: bool = True) -> list[Any]:
    """Values made on A and used on B are right (and, with gather, as the client reads them);
    returns their futures."""
    a_addr, b_addr = names["a"], names["b"]
    a = client.submit(make_array, N, seed, workers=[a_addr], pure=False)
    t = client.submit(make_table, N // 2, seed, workers=[a_addr], pure=False)
    want_a, want_t = make_array(N, seed), make_table(N // 2, seed)
    size, total, last = client.submit(digest_array, a, workers=[b_addr], pure=False).result(timeout=60)
    assert (size, last) == (N, float(want_a[-1]))
    assert total == pytest.approx(float(want_a.sum()))
    rows, k0, xs = client.submit(digest_table, t, workers=[b_addr], pure=False).result(timeout=60)
    assert (rows, k0) == (N // 2, seed)
    assert xs == pytest.approx(float(np.asarray(want_t.column("x")).sum()))
    if gather:  # the client reads the bytes (from either holder, over TCP)
        assert np.array_equal(client.gather(a), want_a)
        assert client.gather(t).equals(want_t)
    return [a, t]


def test_large_values_handed_over(procs: ProcCluster) -> None:
    client, names = procs.client()
    with client:
        held = []
        for seed in range(2):
            held += check_values(client, names, seed, gather=False)
        assert procs.metric("b", "shm_transfers_in_total") == 4, procs.logs()
        assert procs.metric("a", "shm_transfers_out_total") == 4
        # the values went as descriptors: hardly any bytes crossed A's data port
        assert procs.metric("a", "bytes_sent_total") < 1 << 20
        # both hold the four values in segments: the same memory, counted by each
        assert procs.metric("a", "shm_segment_bytes") >= 4 * N * 8
        assert procs.metric("b", "shm_segment_bytes") >= 4 * N * 8
        deadline = time.monotonic() + 10  # unmapped once each answer went (the unmapper thread)
        while mapped_segments() > 2:
            assert time.monotonic() < deadline, "executors unmap segments once the task is done"
            time.sleep(0.01)
        check_values(client, names, 2)  # and the client reads them right


def test_mutating_task_changes_nothing_stored(procs: ProcCluster) -> None:
    client, names = procs.client()
    with client:
        a_addr, b_addr = names["a"], names["b"]
        a = client.submit(make_array, N, 5, workers=[a_addr], pure=False)
        want = make_array(N, 5)
        # on B (the value handed over from A) and on A (its own segment, mapped for the run)
        for where in (b_addr, a_addr):
            assert client.submit(mutate, a, workers=[where], pure=False).result(timeout=60) == -N
        assert procs.metric("b", "shm_transfers_in_total") >= 1
        for where in (a_addr, b_addr):
            size, total, last = client.submit(digest_array, a, workers=[where], pure=False).result(timeout=60)
            assert (size, last) == (N, float(want[-1]))
            assert total == pytest.approx(float(want.sum()))
        assert np.array_equal(client.gather(a), want)


def test_switch_off_goes_through_tcp() -> None:
    procs = ProcCluster(env={"SHOAL_EXECUTOR_SHM": "0"})
    try:
        client, names = procs.client()
        with client:
            check_values(client, names, 3)
            assert procs.metric("b", "shm_transfers_in_total") == 0
            assert procs.metric("a", "shm_segment_bytes") == 0
            assert procs.metric("b", "bytes_received_total") >= 2 * N * 8, "the bytes came over TCP"
            assert mapped_segments() == 0
    finally:
        procs.close()


def test_holder_killed_copy_survives(procs: ProcCluster) -> None:
    client, names = procs.client()
    with client:
        a_addr, b_addr = names["a"], names["b"]
        a = client.submit(make_array, N, 11, workers=[a_addr], pure=False)
        want = make_array(N, 11)
        assert client.submit(digest_array, a, workers=[b_addr], pure=False).result(timeout=60)[0] == N
        assert procs.metric("b", "shm_transfers_in_total") == 1
        procs.kill("a")
        # B's descriptor keeps the memory: its copy is whole, for its tasks and for the client
        size, total, last = client.submit(digest_array, a, workers=[b_addr], pure=False).result(timeout=60)
        assert (size, last) == (N, float(want[-1]))
        assert total == pytest.approx(float(want.sum()))
        assert np.array_equal(client.gather(a), want)
        # and B goes on making and using large values
        c = client.submit(make_array, N, 12, workers=[b_addr], pure=False)
        assert client.submit(digest_array, c, workers=[b_addr], pure=False).result(timeout=60)[2] == \
            float(make_array(N, 12)[-1])
