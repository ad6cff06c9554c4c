"""Shoal's public API against dask.distributed's, and no option swallowed.

1. Every public name of dask's ``Client``, ``Future`` and ``as_completed`` exists in Shoal or is
   listed in docs/coming-from-dask.md, under "Not available, and why" (with the reason) or
   "Coming soon" (work in progress). A listed name that Shoal now has fails the test too, so the
   page stays true: when you implement one, delete its row.
2. For what Shoal implements (those classes' methods and constructors, ``wait``, ``progress``),
   every parameter of dask's signature is accepted by name, or listed there as
   ``Client.method(option=)`` / ``Client(option=)``, and then only where an unknown keyword
   raises ``TypeError`` (a bare ``**kwargs`` passed on to the task would run it with that option
   as an argument).
3. Every public callable of ``shoal.__all__`` that takes ``**kwargs`` says where they go in
   KWARGS below, and the probes prove it on a real cluster: an unknown keyword raises
   ``TypeError`` naming it, or reaches the task's function as dask's contract says.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

import shoal
from shoal import AsyncClient, Client, LocalCluster

from conftest import needs_binary
from fakecluster import FakeCluster

DOC = Path(__file__).resolve().parents[3] / "docs" / "coming-from-dask.md"
NOT_AVAILABLE = "## Not available, and why"
COMING = "## Coming soon"

# a table row whose first cell names an API: `Obj`, `Obj.name`, `Obj(option=)`, `Obj.name(option=)`
ROW = re.compile(r"^\|\s*`(?P<entry>[^`]+)`[^|]*\|(?P<why>.*)\|\s*$")
ENTRY = re.compile(r"^(?P<obj>\w+)(?:\.(?P<name>\w+))?(?:\((?P<option>\w+)=\))?$")
CHECKED_OBJECTS = ("Client", "Future", "as_completed", "wait", "progress")

P = inspect.Parameter


# ---------------------------------------------------------------------------------------------
# where **kwargs go

@dataclass(frozen=True)
class Kw:
    """Where a ``**kwargs`` goes. ``task``: to the user's function, as in dask. ``to``: passed on
    to this callable, whose own parameters then count as accepted (it must not take **kwargs
    itself, or be in KWARGS). ``checked``: the function refuses any keyword it does not know."""

    task: bool = False
    to: Optional[Callable[..., Any]] = None
    checked: bool = False


TASK = Kw(task=True)
CHECKED = Kw(checked=True)

KWARGS: dict[str, Kw] = {
    "Client.__new__": Kw(to=Client.__init__),
    "Client.__init__": Kw(to=LocalCluster.__init__),  # the cluster Client() starts; with an address, refused
    "Client.submit": TASK,
    "Client.map": TASK,
    "Client.run": TASK,
    "Client.run_on_scheduler": TASK,
    "Client.compute": CHECKED,
    "Client.persist": CHECKED,
    "Client.get": CHECKED,
    "AsyncClient.__init__": Kw(to=Client.__init__),
    "AsyncClient.submit": TASK,
    "AsyncClient.submit_go": Kw(to=Client.submit_go),
    "AsyncClient.map": TASK,
    "AsyncClient.run": TASK,
    "AsyncClient.compute": Kw(to=Client.compute),
    "AsyncClient.persist": Kw(to=Client.persist),
    "AsyncClient.get": Kw(to=Client.get),
    "AsyncClient.scatter": Kw(to=Client.scatter),
    "AsyncClient.cancel": Kw(to=Client.cancel),
    "LocalCluster.__init__": CHECKED,  # takes dask's dashboard_address and silence_logs, refuses the rest
    "Future.cancel": Kw(to=Client.cancel),
    # a hook Shoal calls (as dask does) with extra information, such as the exception: not an option
    "WorkerPlugin.transition": TASK,
    # dask's contract: each keyword is a dataset to publish under that name
    "Client.publish_dataset": TASK,
}


def public_callables() -> Iterator[tuple[str, Callable[..., Any]]]:
    """Every public function of shoal.__all__, and every public method (with ``__init__`` and a
    class's own ``__new__``) of its classes, as ("Class.method", function)."""
    for export in shoal.__all__:
        obj = getattr(shoal, export)
        if not inspect.isclass(obj):
            if callable(obj):
                yield export, obj
            continue
        for name in ["__init__", "__new__"] + [n for n in dir(obj) if not n.startswith("_")]:
            raw = next((vars(k)[name] for k in obj.__mro__ if name in vars(k)), None)
            if raw is None or isinstance(raw, property) or (name == "__new__" and "__new__" not in vars(obj)):
                continue
            fn = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
            if callable(fn) and (inspect.isfunction(fn) or inspect.ismethod(fn)):
                yield f"{export}.{name}", fn


def takes_kwargs(fn: Callable[..., Any]) -> bool:
    return any(p.kind == P.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def test_every_kwargs_says_where_it_goes() -> None:
    found = {q for q, fn in public_callables() if takes_kwargs(fn)}
    unknown = sorted(found - set(KWARGS))
    assert not unknown, (
        f"{unknown} take **kwargs that nobody checks: an option passed there would be silently ignored. "
        "Name the options, or refuse unknown ones with TypeError and add the function to KWARGS in "
        "test_api_surface.py with a probe.")
    stale = sorted(set(KWARGS) - found)
    assert not stale, f"{stale} no longer take **kwargs: remove them from KWARGS"
    for q, kw in KWARGS.items():
        if kw.to is not None:
            target = f"{kw.to.__qualname__}"
            assert not takes_kwargs(kw.to) or target in KWARGS, f"{q} passes **kwargs to {target}, which swallows them"


# ---------------------------------------------------------------------------------------------
# probes on a real cluster: an unknown option is refused, naming it

NONSENSE = "no_such_option_xyz"


def _refuses(call: Callable[[dict[str, Any]], Any]) -> None:
    with pytest.raises(TypeError, match=NONSENSE):
        call({NONSENSE: 1})


def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return kwargs


async def _async_probe(cluster: LocalCluster, name: str) -> None:
    async with AsyncClient(cluster) as ac:
        fut = ac.submit(echo, 1, pure=False)
        calls: dict[str, Callable[[dict[str, Any]], Any]] = {
            "AsyncClient.compute": lambda kw: ac.compute(_delayed(), **kw),
            "AsyncClient.persist": lambda kw: ac.persist(_delayed(), **kw),
            "AsyncClient.cancel": lambda kw: ac.cancel([fut], **kw),
            "AsyncClient.submit_go": lambda kw: ac.submit_go("inc", 1, **kw),
        }
        if name in calls:
            _refuses(calls[name])
        elif name == "AsyncClient.scatter":
            with pytest.raises(TypeError, match=NONSENSE):
                await ac.scatter(1, **{NONSENSE: 1})
        elif name == "AsyncClient.get":
            with pytest.raises(TypeError, match=NONSENSE):
                await ac.get({"x": 1}, "x", **{NONSENSE: 1})
        elif name in ("AsyncClient.submit", "AsyncClient.map"):
            got = (await ac.submit(echo, **{NONSENSE: 1}) if name.endswith("submit")
                   else await ac.map(echo, [1], **{NONSENSE: 1})[0])
            assert got == {NONSENSE: 1}
        else:
            raise AssertionError(f"no probe for {name}")


def _delayed() -> Any:
    import dask

    return dask.delayed(echo)(1)


@pytest.mark.cluster
@needs_binary
@pytest.mark.parametrize("name", sorted(KWARGS))
def test_kwargs_probe(name: str, cluster: LocalCluster, client: Client) -> None:
    f = client.submit(echo, 1, pure=False)
    f.result(timeout=30)
    refused: dict[str, Callable[[dict[str, Any]], Any]] = {
        "Client.__new__": lambda kw: Client(cluster.scheduler_address, asynchronous=False, **kw),
        "Client.__init__": lambda kw: Client(**kw),  # the LocalCluster it would start refuses first
        "Client.compute": lambda kw: client.compute(_delayed(), **kw),
        "Client.persist": lambda kw: client.persist(_delayed(), **kw),
        "Client.get": lambda kw: client.get({"x": 1}, "x", **kw),
        "LocalCluster.__init__": lambda kw: LocalCluster(**kw),
        "Future.cancel": lambda kw: f.cancel(**kw),
        "AsyncClient.__init__": lambda kw: asyncio.run(AsyncClient(cluster, **kw)._start()),
    }
    if name in refused:
        _refuses(refused[name])
        if name == "Client.__init__":  # with an address there is no cluster to pass options on to
            _refuses(lambda kw: Client(cluster.scheduler_address, **kw))
    elif name == "Client.submit":
        assert client.submit(echo, **{NONSENSE: 1}).result(timeout=30) == {NONSENSE: 1}
    elif name == "Client.map":
        assert client.gather(client.map(echo, [1], **{NONSENSE: 1})) == [{NONSENSE: 1}]
    elif name == "Client.run":
        assert set(map(str, client.run(echo, **{NONSENSE: 1}).values())) == {str({NONSENSE: 1})}
    elif name == "AsyncClient.run":
        async def arun() -> Any:
            async with AsyncClient(cluster) as ac:
                return await ac.run(echo, **{NONSENSE: 1})
        assert set(map(str, asyncio.run(arun()).values())) == {str({NONSENSE: 1})}
    elif name == "WorkerPlugin.transition":  # a hook: takes what Shoal passes (exception=...)
        assert shoal.WorkerPlugin().transition("k", "executing", "error", **{NONSENSE: 1}) is None
    elif name == "Client.publish_dataset":
        client.publish_dataset(**{NONSENSE: 1})
        try:
            assert client.get_dataset(NONSENSE) == 1
        finally:
            client.unpublish_dataset(NONSENSE)
    elif name == "Client.run_on_scheduler":
        try:
            got = client.run_on_scheduler(echo, **{NONSENSE: 1})
        except NotImplementedError:
            return  # refused as a whole: the scheduler runs no Python
        assert got == {NONSENSE: 1}
    elif name.startswith("AsyncClient."):
        asyncio.run(_async_probe(cluster, name))
    else:
        raise AssertionError(f"no probe for {name}: add one to test_kwargs_probe")


# ---------------------------------------------------------------------------------------------
# names and signatures against dask.distributed

@dataclass
class Listed:
    section: str
    why: str


def doc_entries() -> dict[str, Listed]:
    """The API rows of the two lists in docs/coming-from-dask.md, by entry (e.g. "Client.restart",
    "Client(loop=)"), for the objects this test compares."""
    out: dict[str, Listed] = {}
    section = ""
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line.strip()
            continue
        m = ROW.match(line)
        if section not in (NOT_AVAILABLE, COMING) or not m:
            continue
        entry, why = m.group("entry").strip(), m.group("why").strip()
        e = ENTRY.match(entry)
        if not e or e.group("obj") not in CHECKED_OBJECTS:
            continue  # a row about something else (distributed.Variable, …)
        assert entry not in out, f"{entry} is listed twice in {DOC.name}"
        if section == NOT_AVAILABLE:
            assert why, f"{entry} is listed under {NOT_AVAILABLE!r} without a reason"
        out[entry] = Listed(section, why)
    assert out, f"no API rows found in {DOC}"
    return out


@pytest.fixture(scope="module")
def distributed() -> Any:
    return pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def fake_client() -> Iterator[Client]:
    fake = FakeCluster(token="t")
    try:
        with Client(fake.scheduler_address, token="t", timeout=5, set_as_default=False) as c:
            yield c
    finally:
        fake.close()


def _pairs(distributed: Any, client: Client) -> list[tuple[str, Any, Any]]:
    """(doc name, dask class, a Shoal instance): instances, so attributes set in __init__ count."""
    fut = client.submit(echo, 1, pure=False)
    fut.result(timeout=5)
    return [("Client", distributed.Client, client), ("Future", distributed.Future, fut),
            ("as_completed", distributed.as_completed, shoal.as_completed([fut]))]


def _public(cls: Any) -> list[str]:
    return sorted(n for n in dir(cls) if not n.startswith("_"))


def test_names_match_dask(distributed: Any, fake_client: Client) -> None:
    listed = doc_entries()
    missing, stale = [], []
    for label, dask_cls, ours in _pairs(distributed, fake_client):
        for name in _public(dask_cls):
            entry = f"{label}.{name}"
            if not hasattr(ours, name) and entry not in listed:
                missing.append(entry)
            if hasattr(ours, name) and entry in listed:
                stale.append(f"{entry} ({listed[entry].section[3:]})")
    assert not missing, (f"dask.distributed has {missing}, which Shoal neither implements nor lists in "
                         f"{DOC.name} under {NOT_AVAILABLE!r} (with the reason) or {COMING!r}")
    assert not stale, f"Shoal now has {stale}: delete the row from {DOC.name}"


def _callables(distributed: Any, client: Client) -> Iterator[tuple[str, str, Any, Any]]:
    """(doc entry prefix, qualname for KWARGS, dask callable, Shoal callable) for every callable
    both have."""
    for label, dask_cls, ours in _pairs(distributed, client):
        yield label, f"{type(ours).__name__}.__init__", dask_cls.__init__, type(ours).__init__
        for name in _public(dask_cls):
            if isinstance(inspect.getattr_static(dask_cls, name), property) or not hasattr(ours, name):
                continue
            theirs, mine = getattr(dask_cls, name), getattr(type(ours), name, None)
            if callable(theirs) and callable(mine) and not inspect.isclass(mine):
                yield f"{label}.{name}", f"{type(ours).__name__}.{name}", theirs, mine
    for name in ("wait", "progress"):
        yield name, name, getattr(distributed, name), getattr(shoal, name)


def _named(fn: Callable[..., Any]) -> set[str]:
    """The parameters a call can pass by name."""
    params = inspect.signature(fn).parameters.items()
    return {n for n, p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)}


def test_parameters_match_dask(distributed: Any, fake_client: Client) -> None:
    listed = doc_entries()
    missing, swallowed, stale = [], [], []
    for prefix, qual, theirs, mine in _callables(distributed, fake_client):
        try:
            dask_sig = inspect.signature(theirs)
        except (TypeError, ValueError):
            continue
        accepted = _named(mine)
        kw = KWARGS.get(qual)
        if kw is not None and kw.to is not None:
            accepted |= _named(kw.to)
            if qual == "Client.__init__":
                accepted |= {"dashboard_address", "silence_logs"}  # LocalCluster's **kwargs takes these
        refuses_unknown = not takes_kwargs(mine) or (kw is not None and not kw.task)
        for pname, p in dask_sig.parameters.items():
            if pname in ("self", "cls") or pname.startswith("_") or p.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
                continue
            entry = f"{prefix}({pname}=)"
            if pname in accepted:
                if entry in listed:
                    stale.append(entry)
            elif entry not in listed:
                missing.append(entry)
            elif not refuses_unknown:
                swallowed.append(entry)
    assert not missing, (f"Shoal does not take dask's {missing}: accept the option (honour it, or raise "
                         f"naming it), or list it in {DOC.name} with the reason")
    assert not swallowed, (f"{swallowed} are listed as not available, but Shoal would pass them on to the "
                           "task's function: name them in the signature and refuse them")
    assert not stale, f"Shoal now takes {stale}: delete the row from {DOC.name}"


def test_doc_rows_are_well_formed() -> None:
    """Every row of the two lists names an API in the form the tests read, or something not
    compared (rows about distributed.Variable and the like)."""
    entries = doc_entries()
    assert any(v.section == NOT_AVAILABLE for v in entries.values())
    for entry in entries:
        m = ENTRY.match(entry)
        assert m is not None and (m.group("name") or m.group("option")), entry


def test_the_package_imports_its_names_on_first_use() -> None:
    """``import shoal`` imports none of the client's modules (an executor imports the package
    and needs none of them); each name of ``__all__`` and each submodule is there on first
    use, and a name that is neither is an AttributeError."""
    import subprocess
    import sys

    code = """
import sys, shoal
loaded = sorted(m for m in sys.modules if m.startswith(("shoal", "dask")))
assert "shoal.client" not in loaded and "dask" not in loaded, loaded
assert shoal.cluster.children_of and shoal.exceptions.ShoalError  # submodules, as before
for name in shoal.__all__:
    getattr(shoal, name)
assert set(shoal.__all__) <= set(dir(shoal))
try:
    shoal.no_such_name
except AttributeError as exc:
    assert "no_such_name" in str(exc)
else:
    raise AssertionError("no AttributeError")
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
