"""SHOAL_EXECUTOR_CPROFILE: the executor's serving thread under cProfile, written as pstats."""

from __future__ import annotations

import pstats
from pathlib import Path

import pytest

from harness import FakeWorker, result_of


def profiled_work(n: int) -> int:
    return sum(i * i for i in range(n))


def test_executor_writes_a_cprofile_of_its_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "prof"
    monkeypatch.setenv("SHOAL_EXECUTOR_CPROFILE", str(out))
    w = FakeWorker()
    try:
        for _ in range(3):
            assert result_of(w.run(profiled_work, 1000)) == sum(i * i for i in range(1000))
    finally:
        assert w.close() == 0
    files = list(out.glob("executor-*.prof"))
    assert [f.name for f in files] == [f"executor-{w.proc.pid}.prof"]
    stats = pstats.Stats(str(files[0]))
    calls = {fn[2]: v[1] for fn, v in stats.stats.items()}  # type: ignore[attr-defined]
    assert calls.get("profiled_work") == 3  # every run, the last one included (written at exit)


def test_without_the_variable_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_EXECUTOR_CPROFILE", raising=False)
    monkeypatch.chdir(tmp_path)
    w = FakeWorker()
    try:
        assert result_of(w.run(profiled_work, 10)) == 285
    finally:
        assert w.close() == 0
    assert list(tmp_path.rglob("*.prof")) == []
