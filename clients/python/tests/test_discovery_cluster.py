"""A client in another process finds a LocalCluster's token from its address (or a scheduler
file), and the token stays required."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal import Client

from conftest import needs_binary

pytestmark = [needs_binary, pytest.mark.cluster]

OTHER = """
import sys, time
from shoal import LocalCluster
with LocalCluster(n_workers=1, dashboard_port=None) as cluster:
    print(cluster, flush=True)
    sys.stdin.readline()  # until the test is done
"""


def test_client_finds_the_token_of_a_cluster_in_another_process(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("SHOAL_DISCOVERY_DIR", str(tmp_path / "clusters"))
    monkeypatch.delenv("SHOAL_TOKEN", raising=False)
    proc = subprocess.Popen([sys.executable, "-c", OTHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ))
    try:
        assert proc.stdout is not None and proc.stdin is not None
        shown = proc.stdout.readline()  # <LocalCluster: 127.0.0.1:PORT, workers=1, threads=1>
        address = shown.split(":", 1)[1].split(",")[0].strip()
        with Client(f"tcp://{address}") as client:
            assert client.submit(lambda x: x + 1, 1).result(timeout=30) == 2
        files = list((tmp_path / "clusters").iterdir())
        assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o600"
        with pytest.raises(shoal.AuthenticationError):
            Client(address, token="wrong", timeout=5)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert not list((tmp_path / "clusters").iterdir()), "the discovery file outlived its cluster"


def test_scheduler_file(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("SHOAL_DISCOVERY_DIR", str(tmp_path / "none"))
    token = tmp_path / "token"
    token.write_text("s3cret")
    sched_file = tmp_path / "scheduler.json"
    binary = os.environ.get("SHOAL_BIN") or str(Path(__file__).parents[3] / "bin" / "shoal")
    proc = subprocess.Popen([binary, "local", "--workers", "1", "--port", "0", "--gossip-port", "0",
                             "--dashboard-port", "-1", "--token-file", str(token), "--scheduler-file",
                             str(sched_file), "--python", sys.executable],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert oct(sched_file.stat().st_mode & 0o777) == "0o600"
        with Client(scheduler_file=str(sched_file)) as client:
            client.wait_for_workers(1, timeout=30)
            assert client.submit(lambda x: x + 1, 41).result(timeout=30) == 42
        with pytest.raises(ValueError, match="not both"):
            Client("127.0.0.1:1", scheduler_file=str(sched_file))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not sched_file.exists(), "the scheduler file outlived the scheduler"
