"""upload_file and worker plugins on a real LocalCluster: every executor of every worker gets
them, including executors and workers that start later."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal import Client, LocalCluster

from conftest import needs_binary

pytestmark = [needs_binary, pytest.mark.cluster]


@pytest.fixture
def local() -> Any:
    with LocalCluster(n_workers=2, dashboard_port=None) as cluster, Client(cluster) as client:
        yield cluster, client


def call_module(name: str, attr: str) -> Any:
    import importlib

    return getattr(importlib.import_module(name), attr)()


def test_upload_file_reaches_every_executor_now_and_later(local: Any, tmp_path: Path) -> None:
    cluster, client = local
    mod = tmp_path / "shoal_uploaded_mod.py"
    mod.write_text("def version():\n    return 1\n")
    results = client.upload_file(str(mod))
    assert sorted(results) == sorted(client.scheduler_info()["workers"])
    assert all(r == {"status": "OK"} for r in results.values())
    fs = client.map(call_module, ["shoal_uploaded_mod"] * 8, ["version"] * 8, pure=False)
    assert client.gather(fs) == [1] * 8
    # a new version is reloaded where the old one was imported
    mod.write_text("def version():\n    return 2\n")
    client.upload_file(str(mod))
    assert set(client.run(call_module, "shoal_uploaded_mod", "version").values()) == {2}  # type: ignore[union-attr]
    # a worker that joins later, and executors after a restart, get it too
    cluster.scale(3)
    assert set(client.run(call_module, "shoal_uploaded_mod", "version").values()) == {2}  # type: ignore[union-attr]
    client.restart()
    assert set(client.run(call_module, "shoal_uploaded_mod", "version").values()) == {2}  # type: ignore[union-attr]


def test_upload_zip_and_errors(local: Any, tmp_path: Path) -> None:
    _, client = local
    archive = tmp_path / "shoal_zipped.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("shoal_zipped_pkg/__init__.py", "def answer():\n    return 42\n")
    client.upload_file(str(archive))
    assert client.submit(call_module, "shoal_zipped_pkg", "answer", pure=False).result(timeout=30) == 42
    broken = tmp_path / "shoal_broken_mod.py"
    broken.write_text("raise ValueError('broken on import')\n")
    with pytest.raises(RuntimeError, match="broken on import"):
        client.upload_file(str(broken))
    with pytest.raises(ValueError, match=".txt"):
        (tmp_path / "notes.txt").write_text("x")
        client.upload_file(str(tmp_path / "notes.txt"))
    # the executors keep serving after a failed upload
    assert client.submit(lambda: 7, pure=False).result(timeout=30) == 7


class Counter(shoal.WorkerPlugin):
    name = "counter"

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.seen: list[tuple[str, str, str]] = []

    def transition(self, key: str, start: str, finish: str, **kwargs: Any) -> None:
        self.seen.append((key, start, finish))

    def teardown(self, worker: Any) -> None:
        path = os.environ["SHOAL_TEST_TEARDOWN"]
        with open(path, "a") as f:
            f.write(f"{worker.address}\n")


def plugin_state() -> Any:
    from shoal._preload import current

    p = current().plugins.get("counter")
    return None if p is None else (p.worker.address, list(p.seen))


def failing(x: int) -> int:
    raise KeyError(x)


def test_worker_plugin_setup_transition_teardown(tmp_path: Path, monkeypatch: Any) -> None:
    teardowns = tmp_path / "teardowns"
    monkeypatch.setenv("SHOAL_TEST_TEARDOWN", str(teardowns))
    with LocalCluster(n_workers=2, dashboard_port=None) as cluster, Client(cluster) as client:
        addrs = sorted(client.scheduler_info()["workers"])
        client.register_plugin(Counter())
        ok = client.submit(lambda: 1, workers=[addrs[0]], pure=False, key="plugged-ok")
        bad = client.submit(failing, 1, workers=[addrs[0]], pure=False, key="plugged-bad")
        assert ok.result(timeout=30) == 1
        with pytest.raises(KeyError):
            bad.result(timeout=30)
        states = client.run(plugin_state)
        assert states is not None
        assert {a: s[0] for a, s in states.items()} == {a: a for a in addrs}, "setup got each worker"
        seen = states[addrs[0]][1]
        assert ("plugged-ok", "executing", "memory") in seen
        assert ("plugged-bad", "executing", "error") in seen
        # idempotent keeps the registered one; unregistering tears it down everywhere
        assert client.register_plugin(Counter(), idempotent=True) == {}
        client.unregister_worker_plugin("counter")
        assert set((client.run(plugin_state) or {}).values()) == {None}
        assert sorted(teardowns.read_text().split()) == addrs
        with pytest.raises(TypeError, match="scheduler"):
            client.register_plugin(type("SchedulerPlugin", (), {"start": lambda self, s: None})())


def test_register_worker_callbacks(local: Any) -> None:
    _, client = local

    def setup() -> None:
        os.environ["SHOAL_CALLBACK_RAN"] = "yes"

    client.register_worker_callbacks(setup)
    got = client.run(lambda: os.environ.get("SHOAL_CALLBACK_RAN"))
    assert got is not None and set(got.values()) == {"yes"}
