"""A real notebook, run cell by cell in an IPython kernel (nbclient + ipykernel on this
interpreter), on a real LocalCluster: progress is a non-blocking ipywidgets bar whose final
state the frontend receives, and Client, LocalCluster and Future display as HTML with the
dashboard link."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import BINARY, needs_binary

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

pytestmark = [needs_binary, pytest.mark.cluster]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

CELLS = [
    # 0: a cluster with a dashboard, and a client of it
    f"""import json, os, sys, time
os.environ["SHOAL_BIN"] = {BINARY!r}
from shoal import Client, LocalCluster, progress, wait
cluster = LocalCluster(n_workers=1, threads_per_worker=2, dashboard_port=0)
client = Client(cluster)
print(json.dumps({{"python": sys.executable, "dashboard": client.dashboard_link}}))""",
    "cluster",  # 1
    "client",  # 2
    # 3: two groups of tasks (6 slow, 1 sum); progress returns before they are done
    """def slow(x):
    time.sleep(0.3)
    return x

futs = client.map(slow, range(6))
total = client.submit(sum, futs)
bar = progress(futs, total)
returned_early = not total.done()
bar""",
    # 4: the kernel's view once the bar's thread has drawn its last frame
    """assert bar.finished.wait(60)
wait(futs + [total])
print(json.dumps({"returned_early": returned_early, "total": total.result(),
                  "bars": {g: [b.value, b.max, b.bar_style, b.model_id] for g, b in bar.bars.items()},
                  "status": bar.elapsed_time.value}))""",
    "total",  # 5
    # 6: in a terminal-like call inside the kernel, notebook=False still draws the text bar
    "progress(total, notebook=False, file=sys.stdout)",
    "client.close(); cluster.close()",  # 7
]


def test_progress_widget_and_html_reprs_in_a_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the kernel's connection file and IPython profile go to the test's directory, not ~
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120, store_widget_state=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    setup = json.loads(_stdout(nb.cells[0]))
    assert setup["python"] == sys.executable  # the kernel runs this interpreter
    dashboard = setup["dashboard"]
    assert dashboard.startswith("http://")

    # Client, LocalCluster and Future display as HTML, with a link to the dashboard
    for i, title in ((1, "Shoal LocalCluster"), (2, "Shoal Client"), (5, "Future: sum")):
        page = _result(nb.cells[i])["text/html"]
        assert title in page, page
        assert "href='" + dashboard.replace("&", "&amp;") in page, page
    assert "status:</span> <span style='color: var(--jp-success-color0, green)'>finished" in _result(
        nb.cells[5])["text/html"]

    # progress returned before the work was done, and its widget was the cell's display
    kernel = json.loads(_stdout(nb.cells[4]))
    assert kernel["returned_early"] is True and kernel["total"] == 15
    view = next(o for o in nb.cells[3].outputs if WIDGET_VIEW in o.get("data", {}))
    root = view["data"][WIDGET_VIEW]["model_id"]

    # in the kernel: one bar per task group, full and green
    assert {g: v[:3] for g, v in kernel["bars"].items()} == {"slow": [6, 6, "success"], "sum": [1, 1, "success"]}
    assert "Finished" in kernel["status"]

    # the frontend's copy of the widget models (what nbclient received over the comms, also
    # after the cell that made the bar had finished) shows the same final state
    models = nb.metadata["widgets"][WIDGET_STATE]["state"]
    tree = _descendants(models, root)
    bars = {m["state"]["max"]: m["state"] for m in tree if m["model_name"] == "IntProgressModel"}
    assert sorted(bars) == [1, 6]
    for n, state in bars.items():
        assert state["value"] == n and state["bar_style"] == "success"
    for g, (_, _, _, model_id) in kernel["bars"].items():
        assert model_id in {m["id"] for m in tree}, g
    htmls = [m["state"]["value"] for m in tree if m["model_name"] == "HTMLModel"]
    assert any("Finished" in h for h in htmls) and any("6 / 6" in h for h in htmls)

    assert "100% Completed | 1/1" in _stdout(nb.cells[6])


def _stdout(cell: Any) -> str:
    return "".join(o["text"] for o in cell.outputs if o["output_type"] == "stream" and o["name"] == "stdout")


def _result(cell: Any) -> Any:
    return next(o for o in cell.outputs if o["output_type"] == "execute_result")["data"]


def _descendants(models: dict[str, Any], root: str) -> list[dict[str, Any]]:
    """The widget model ``root`` and every model it refers to ("IPY_MODEL_<id>"), each with its id."""
    out, todo, seen = [], [root], set()
    while todo:
        mid = todo.pop()
        if mid in seen or mid not in models:
            continue
        seen.add(mid)
        model = dict(models[mid], id=mid)
        out.append(model)
        for v in model["state"].values():
            for ref in v if isinstance(v, list) else [v]:
                if isinstance(ref, str) and ref.startswith("IPY_MODEL_"):
                    todo.append(ref[len("IPY_MODEL_"):])
    return out
