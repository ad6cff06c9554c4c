"""``progress``: a Jupyter widget inside an IPython kernel, a text bar elsewhere (dask's ``progress``).

In a notebook the widget follows the futures from a background thread and ``progress`` returns
at once; the widget shows when it is the cell's value, as in dask. In a terminal the text bar
blocks until every future is done. ipywidgets is only imported for the widget, so it stays an
optional dependency (the ``notebook`` extra).
"""

from __future__ import annotations

import html
import re
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from ._keys import key_split

if TYPE_CHECKING:
    from .futures import KeyState

GroupBy = Union[str, Callable[[str], str]]


def is_kernel() -> bool:
    """Whether this process is an IPython kernel (Jupyter), judged as dask judges it."""
    if "IPython" not in sys.modules:  # IPython was never imported: not a kernel
        return False
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def progress(*futures: Any, notebook: Optional[bool] = None, multi: bool = True, complete: bool = True,
             group_by: GroupBy = "prefix", interval: Union[float, str] = 0.1, file: Any = None,
             width: int = 40) -> Optional["ProgressWidget"]:
    """Show the progress of futures, as ``distributed.progress`` does.

    Accepts futures, lists of futures and collections of them. In a Jupyter kernel (or with
    ``notebook=True``) it returns a :class:`ProgressWidget` at once: make it the cell's last
    expression to show it; it keeps updating while the next cells run. With ``multi=True`` (the
    default) it has one bar per task group (``group_by="prefix"``: the key's name without its
    token, or a callable from key to group name). Elsewhere (or with ``notebook=False``) it draws
    a text bar on ``file`` (``sys.stderr``) every ``interval`` seconds until all are done; there
    ``multi`` and ``group_by`` do not apply, as in dask. ``complete=False`` leaves out futures
    that were already done when it was called.
    """
    from .futures import Future, _collect

    if not (group_by == "prefix" or callable(group_by)):
        raise ValueError(f"progress(group_by={group_by!r}): use 'prefix' or a callable from key to group name"
                         + (" (Shoal has no spans)" if group_by == "spans" else ""))
    seconds = _seconds(interval)
    if notebook is None:
        notebook = file is None and is_kernel()
    elif notebook and file is not None:
        raise ValueError("progress(notebook=True, file=...): the widget has no file; file is for the text bar")
    flat: list[Future] = []
    _collect(futures, flat)
    states = list({id(f._state): f._state for f in flat}.values())
    if not complete:
        states = [s for s in states if not s.done()]
    if notebook:
        _require_ipywidgets()
        return ProgressWidget(states, _groups(states, group_by if multi else None), interval=seconds)
    _text_bar(states, seconds, file or sys.stderr, width)
    return None


def _require_ipywidgets() -> None:
    try:
        import ipywidgets  # noqa: F401
    except ImportError as exc:
        raise ImportError("progress(notebook=True) needs ipywidgets: pip install ipywidgets "
                          "(or shoal[notebook]); notebook=False draws a text bar") from exc


def _seconds(interval: Union[float, str]) -> float:
    """An interval in seconds from a number or a dask time string ("100ms", "0.5s")."""
    if isinstance(interval, str):
        m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s)?\s*", interval)
        if not m:
            raise ValueError(f"progress(interval={interval!r}): give seconds or a string like '100ms'")
        value = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    else:
        value = float(interval)
    if not value > 0:
        raise ValueError(f"progress(interval={interval!r}) must be positive")
    return value


_TUPLE_KEY = re.compile(r"""^\(\s*(['"])(.*?)\1""")


def group_of(key: str) -> str:
    """The task group a key belongs to: its name without the token (``inc-3f2a…`` → ``inc``);
    for a dask tuple key ``"('sum-3f2a…', 0)"`` the group of its name."""
    m = _TUPLE_KEY.match(key)
    return key_split(m.group(2) if m else key)


def _groups(states: list["KeyState"], group_by: Optional[GroupBy]) -> dict[str, list["KeyState"]]:
    """The states by group, the most numerous first (then by name); one unnamed group when
    ``group_by`` is None."""
    if group_by is None:
        return {"": states}
    fn = group_of if group_by == "prefix" else group_by
    assert callable(fn)
    groups: dict[str, list[KeyState]] = {}
    for s in states:
        groups.setdefault(str(fn(s.key)), []).append(s)
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def _text_bar(states: list["KeyState"], interval: float, out: Any, width: int) -> None:
    total = len(states)
    start = time.monotonic()
    while True:
        n = sum(1 for s in states if s.done())
        frac = n / total if total else 1.0
        bar = "#" * int(width * frac)
        out.write(f"\r[{bar:<{width}}] | {frac * 100:3.0f}% Completed | {n}/{total} | {time.monotonic() - start:5.1f}s")
        out.flush()
        if n == total:
            out.write("\n")
            out.flush()
            return
        time.sleep(interval)


class ProgressWidget:
    """The notebook form of :func:`progress`: an ipywidgets ``VBox`` (``.widget``) with a status
    line and one ``IntProgress`` bar per group (``.bars``, by group name; ``max`` is the group's
    number of futures, ``value`` how many are done). A background thread redraws it every
    ``interval`` seconds and stops once all are done: then each bar is ``"success"`` (or
    ``"danger"`` if one of its futures failed) and the status line says "Finished" (or names the
    exception). Displaying it (the cell's value, or ``IPython.display.display``) shows ``.widget``.
    """

    def __init__(self, states: list["KeyState"], groups: dict[str, list["KeyState"]], *,
                 interval: float = 0.1) -> None:
        from ipywidgets import HTML, HBox, IntProgress, Layout, VBox

        self._states = states
        self._groups = groups
        self._interval = interval
        self._start = time.monotonic()
        self.elapsed_time = HTML("")
        self.bars = {g: IntProgress(min=0, max=len(sts), value=0, description="") for g, sts in groups.items()}
        self.bar_texts = {g: HTML("") for g in groups}
        label = Layout(width="auto")
        rows = [HBox([self.bar_texts[g], self.bars[g]] +
                     ([HTML(f"<div style='padding: 0px 10px'>{html.escape(g)}</div>", layout=label)] if g else []))
                for g in groups]
        self.widget = VBox([self.elapsed_time, VBox(rows)])
        self.finished = threading.Event()  # set after the last redraw
        self._wake = threading.Event()
        self._left = len(states)
        self._lock = threading.Lock()
        for st in states:
            st.add_listener(self._on_done)
        self._thread = threading.Thread(target=self._follow, name="shoal-progress", daemon=True)
        self._thread.start()

    def _on_done(self, _: "KeyState") -> None:
        with self._lock:
            self._left -= 1
            last = self._left <= 0
        if last:  # redraw now rather than at the next tick
            self._wake.set()

    def _follow(self) -> None:
        while not self._draw():
            self._wake.wait(self._interval)
            self._wake.clear()
        self.finished.set()

    def _draw(self) -> bool:
        """Redraw from the states; True (and the final look) once all are done."""
        elapsed = _format_time(time.monotonic() - self._start)
        all_done = True
        for g, sts in self._groups.items():
            n = sum(1 for s in sts if s.done())
            all_done = all_done and n == len(sts)
            self.bars[g].value = n
            self.bar_texts[g].value = f"<div style='padding: 0px 10px; text-align: right'>{n} / {len(sts)}</div>"
        if not all_done:
            self.elapsed_time.value = _status_line("Computing:", elapsed)
            return False
        failed = [s for s in self._states if s.status != "finished"]
        for g, sts in self._groups.items():
            self.bars[g].bar_style = "danger" if any(s.status != "finished" for s in sts) else "success"
        if failed:
            exc = failed[0].exception
            what = html.escape(repr(exc) if exc is not None else f"{failed[0].key} {failed[0].status}")
            self.elapsed_time.value = _status_line("Exception", f"<tt>{what}</tt>: {elapsed}")
        else:
            self.elapsed_time.value = _status_line("Finished:", elapsed if self._states else "no tasks given")
        return True

    def _ipython_display_(self, **kwargs: Any) -> None:
        from IPython.display import display

        display(self.widget, **kwargs)  # type: ignore[no-untyped-call]

    def __repr__(self) -> str:
        done = sum(b.value for b in self.bars.values())
        total = sum(b.max for b in self.bars.values())
        return f"<ProgressWidget: {done}/{total} done>"


def _status_line(title: str, text: str) -> str:
    return f"<div style='padding: 0px 10px 5px 10px'><b>{title}</b> {text}</div>"


def _format_time(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}min {secs}s" if minutes < 60 else f"{minutes // 60}hr {minutes % 60}min"
