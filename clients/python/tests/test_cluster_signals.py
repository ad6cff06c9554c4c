"""A Python process holding a LocalCluster leaves nothing behind, however it ends: SIGTERM,
SIGINT (KeyboardInterrupt, as usual), SIGKILL, or a cluster made by a thread that has ended.

Each test runs a real program in a subprocess that starts a LocalCluster, runs a Python task (so
the workers' executors exist too), prints its cluster's directory and processes, and waits.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import needs_binary

pytestmark = [needs_binary]

PROGRAM = """
import json, sys, threading, time
from shoal import Client, LocalCluster
from shoal.cluster import children_of

def start():
    return LocalCluster(n_workers=2, dashboard_port=None)

if sys.argv[1] == "thread":  # made by a thread that ends right after
    box = []
    t = threading.Thread(target=lambda: box.append(start()))
    t.start(); t.join()
    cluster = box[0]
    time.sleep(1)
else:
    cluster = start()
client = Client(cluster)
assert client.submit(lambda x: x + 1, 1).result(timeout=30) == 2
info = {"dir": cluster._dir, "pids": [cluster.proc.pid] + children_of(cluster.proc.pid)}
try:  # the test signals this process as soon as it has read the line
    print(json.dumps(info), flush=True)
    time.sleep(120)
except KeyboardInterrupt:
    if sys.argv[1] != "catch":
        raise
    print("caught KeyboardInterrupt", flush=True)
    print(client.submit(lambda x: x * 2, 21).result(timeout=30), flush=True)
"""


class Program:
    def __init__(self, tmp_path: Path, mode: str) -> None:
        script = tmp_path / "prog.py"
        script.write_text(textwrap.dedent(PROGRAM))
        self.tmpdir = tmp_path / "tmp"
        self.tmpdir.mkdir()
        env = dict(os.environ, TMPDIR=str(self.tmpdir))  # tempfile.mkdtemp uses it
        self.proc = subprocess.Popen([sys.executable, str(script), mode], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            pytest.fail(f"the program ended before its cluster was up:\n{self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.info: dict[str, Any] = json.loads(line)
        self.dir = Path(self.info["dir"])
        self.pids: list[int] = self.info["pids"]

    def wait(self, timeout: float = 30) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture()
def program(tmp_path: Path) -> Iterator[Any]:
    started: list[Program] = []

    def start(mode: str) -> Program:
        p = Program(tmp_path, mode)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def assert_all_gone(p: Program, within: float = 0.0) -> None:
    deadline = time.monotonic() + within
    while True:
        left = [pid for pid in p.pids if alive(pid)]
        leftover = sorted(x.name for x in p.tmpdir.iterdir())
        if (not left and not leftover) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    assert not left, f"processes still running: {left}"
    assert not leftover, f"left in the temporary directory: {leftover}"


def test_cluster_files_are_private(program: Any) -> None:
    p = program("term")
    assert stat.S_IMODE(p.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((p.dir / "token").stat().st_mode) == 0o600
    assert len(p.pids) >= 4  # shoal local, 2 workers, an executor
    p.proc.send_signal(signal.SIGTERM)
    p.wait()


def test_sigterm(program: Any) -> None:
    p = program("term")
    assert all(alive(pid) for pid in p.pids) and p.dir.is_dir()
    p.proc.send_signal(signal.SIGTERM)
    code, _, err = p.wait()
    assert code == -signal.SIGTERM, err  # still ends as SIGTERM's default action ends it
    assert_all_gone(p)  # by the time the process has exited


def test_sigint_raises_keyboard_interrupt_and_cleans_up(program: Any) -> None:
    p = program("int")
    p.proc.send_signal(signal.SIGINT)
    code, _, err = p.wait()
    assert "KeyboardInterrupt" in err
    assert code != 0
    assert_all_gone(p)


def test_sigint_caught_keeps_the_cluster(program: Any) -> None:
    p = program("catch")
    p.proc.send_signal(signal.SIGINT)
    code, out, err = p.wait()
    assert code == 0, err
    assert out.splitlines()[-2:] == ["caught KeyboardInterrupt", "42"]
    assert_all_gone(p)  # at interpreter exit


def test_sigkill_the_child_cleans_up(program: Any) -> None:
    p = program("kill")
    p.proc.kill()
    p.wait()
    assert_all_gone(p, within=15)  # shoal local notices its parent is gone


def test_cluster_made_by_a_finished_thread(program: Any) -> None:
    # The cluster outlives the thread that made it (it ran a task after the thread ended), and
    # with no signal handler (only the main thread may set one) shoal local still cleans up.
    p = program("thread")
    assert all(alive(pid) for pid in p.pids)
    p.proc.send_signal(signal.SIGTERM)
    p.wait()
    assert_all_gone(p, within=15)
