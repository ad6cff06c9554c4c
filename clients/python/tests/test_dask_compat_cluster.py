"""dask.distributed behaviours of futures on a real LocalCluster: Future.traceback() is a
traceback object, raised task errors carry the worker's frames, gather takes any iterable, and
progress (outside a kernel; in one: test_notebook_cluster.py) honours or refuses its options."""

from __future__ import annotations

import io
import sys
import traceback
import types
from typing import Any

import pytest

import shoal
from shoal import Client

from conftest import needs_binary

pytestmark = [needs_binary, pytest.mark.cluster]


class Boom(ValueError):
    pass


def outer(x: int) -> int:
    return inner(x)


def inner(x: int) -> int:
    raise Boom(f"boom {x}")


def chained(x: int) -> int:
    try:
        return inner(x)
    except Boom as exc:
        raise KeyError("wrapped") from exc


def inc(x: int) -> int:
    return x + 1


def remote_frames(tb: Any) -> list[tuple[str, str]]:
    return [(fs.name, fs.filename) for fs in traceback.extract_tb(tb)]


def test_traceback_is_a_traceback_object(client: Client) -> None:
    f = client.submit(outer, 1, pure=False)
    with pytest.raises(Boom, match="boom 1"):
        f.result(timeout=30)
    tb = f.traceback()
    assert isinstance(tb, types.TracebackType)
    # the worker's frames, innermost last: file, line and function of each
    frames = traceback.extract_tb(tb)
    assert [(fs.name, fs.filename) for fs in frames[-2:]] == [("outer", __file__), ("inner", __file__)]
    assert frames[-1].lineno == inner.__code__.co_firstlineno + 1
    assert "in outer" in "".join(traceback.format_tb(tb))
    # and the worker's own text is still the exception's cause
    assert isinstance(f.exception(), Boom)
    assert "Boom: boom 1" in str(f.exception().__cause__)
    # a finished future has none
    assert client.submit(inc, 1).traceback(timeout=30) is None


def test_traceback_of_a_chained_error_is_the_last_one(client: Client) -> None:
    f = client.submit(chained, 2, pure=False)
    assert isinstance(f.exception(timeout=30), KeyError)
    assert [name for name, _ in remote_frames(f.traceback())][-1] == "chained"


def test_result_raises_with_the_remote_frames(client: Client) -> None:
    f = client.submit(outer, 3, pure=False)
    with pytest.raises(Boom) as first:
        f.result(timeout=30)
    names = [name for name, _ in remote_frames(first.value.__traceback__)]
    # the caller's frames first, then the worker's
    assert names[0] == "test_result_raises_with_the_remote_frames" and names[-2:] == ["outer", "inner"]
    with pytest.raises(Boom) as again:
        f.result(timeout=30)
    assert len(remote_frames(again.value.__traceback__)) == len(names)  # raising again piles nothing up
    assert remote_frames(f.exception().__traceback__)[-2:] == remote_frames(f.traceback())[-2:]


def test_gather_raises_with_the_remote_frames(client: Client) -> None:
    # needs client.py: _raise_state raises st.exception.with_traceback(st.remote_traceback())
    f = client.submit(outer, 4, pure=False)
    with pytest.raises(Boom) as info:
        client.gather([f])
    assert [name for name, _ in remote_frames(info.value.__traceback__)][-2:] == ["outer", "inner"]


def test_gather_accepts_any_iterable(client: Client) -> None:
    futures = client.map(inc, range(5))
    want = [1, 2, 3, 4, 5]
    assert list(client.gather(iter(futures))) == want
    assert list(client.gather(f for f in futures)) == want
    assert client.gather(futures) == want and client.gather(tuple(futures)) == tuple(want)


def test_progress_text_bar_options(client: Client) -> None:
    futures = client.map(inc, range(4))
    client.gather(futures)
    out = io.StringIO()
    shoal.progress(futures, notebook=False, file=out, interval="50ms")
    assert out.getvalue().endswith("| 100% Completed | 4/4 |   0.0s\n")
    # complete=False: only what was not done yet (here nothing)
    out = io.StringIO()
    shoal.progress(futures, complete=False, file=out)
    assert "| 0/0 |" in out.getvalue()
    # outside a kernel, notebook=None is the text bar (it returns nothing)
    assert shoal.progress(futures, file=io.StringIO()) is None


def test_progress_refuses_what_it_cannot_do(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    f = client.submit(inc, 1)
    with pytest.raises(ValueError, match="spans"):
        shoal.progress(f, group_by="spans")
    with pytest.raises(ValueError, match="interval"):
        shoal.progress(f, interval="soon")
    with pytest.raises(ValueError, match="file"):
        shoal.progress(f, notebook=True, file=sys.stdout)
    with pytest.raises(TypeError, match="nonsense"):
        shoal.progress(f, nonsense=1)  # type: ignore[call-arg]
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # as if it were not installed
    with pytest.raises(ImportError, match="progress\\(notebook=True\\) needs ipywidgets"):
        shoal.progress(f, notebook=True)


def test_progress_widget_groups_and_failures(client: Client) -> None:
    pytest.importorskip("ipywidgets")
    ok = client.map(inc, range(3))
    bad = client.submit(outer, 5, pure=False)
    bar = shoal.progress(ok, bad, notebook=True)
    assert bar is not None and bar.finished.wait(30)
    state = {g: (b.value, b.max, b.bar_style) for g, b in bar.bars.items()}
    assert state == {"inc": (3, 3, "success"), "outer": (1, 1, "danger")}
    assert "Exception" in bar.elapsed_time.value and "boom 5" in bar.elapsed_time.value
    # multi=False: one bar for all; group_by: any function of the key
    one = shoal.progress(ok, bad, notebook=True, multi=False)
    assert one is not None and one.finished.wait(30)
    assert [(b.value, b.max) for b in one.bars.values()] == [(4, 4)]
    by_len = shoal.progress(ok, notebook=True, group_by=lambda key: f"n{len(key) // 1000}")
    assert by_len is not None and by_len.finished.wait(30) and list(by_len.bars) == ["n0"]


def test_as_completed_next_and_clear(client: Client) -> None:
    futures = client.map(inc, range(3))
    ac = shoal.as_completed(futures)
    assert ac.next() in futures  # dask's alias of next(ac)
    ac.clear()
    assert ac.is_empty() and list(ac) == []
    client.gather(futures)
    assert not ac.has_ready()  # what finishes after clear() is not queued
    ac.add(futures[0])
    assert list(ac) == [futures[0]]
