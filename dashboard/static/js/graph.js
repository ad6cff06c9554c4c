// Graph view: the graph of task groups, laid out in layers by longest path from the roots.
// The structure comes from /api/v1/graph (fetched when the set of groups changes); the
// counts come from the live frames.
import { $, esc, fmtNum, chartIn, getJSON } from "./util.js";
import { store } from "./store.js";

let chart = null, initialised = false, layout = null, fetchedVersion = -1, fetching = false;

export function show() {
  if (!initialised) {
    initialised = true;
    chart = chartIn($("#graph"));
    chart?.on("click", (p) => { if (p.dataType === "node") location.hash = "#/status"; });
  }
  fetchedVersion = -1;
}

export async function render() {
  if (store.groupsVersion !== fetchedVersion && !fetching) {
    fetching = true;
    const version = store.groupsVersion;
    try {
      const r = await getJSON("api/v1/graph");
      if (r.ok) { layout = computeLayout(r.body); fetchedVersion = version; }
    } finally { fetching = false; }
  }
  if (!layout) return;
  if (!chart) {
    $("#graph").innerHTML = `<div class="nochart">${layout.nodes.map((n) => esc(n.name)).join(" · ")}</div>`;
    return;
  }
  chart.setOption(option(layout));
}

function computeLayout(g) {
  const depth = new Map(g.nodes.map((n) => [n.name, 0]));
  for (let i = 0; i < g.nodes.length; i++) { // longest path, Bellman-Ford style (groups are few)
    let changed = false;
    for (const e of g.edges) {
      const d = (depth.get(e.from) ?? 0) + 1;
      if (d > (depth.get(e.to) ?? 0)) { depth.set(e.to, d); changed = true; }
    }
    if (!changed) break;
  }
  const perLayer = new Map();
  const nodes = g.nodes.map((n) => {
    const d = depth.get(n.name) ?? 0, i = perLayer.get(d) ?? 0;
    perLayer.set(d, i + 1);
    return { name: n.name, x: d * 220, y: i * 90, base: n };
  });
  return { nodes, edges: g.edges };
}

function option(l) {
  const nodes = l.nodes.map((n) => {
    const g = store.groups.get(n.name) || n.base;
    const frac = g.total ? g.done / g.total : 0;
    const color = g.erred ? "#d64545" : frac >= 1 ? "#2e9d5b" : g.processing ? "#2f6fd6" : "#9aa3b2";
    return {
      name: n.name, x: n.x, y: n.y, symbolSize: 18 + Math.min(40, 6 * Math.log10(1 + g.total)),
      itemStyle: { color },
      label: { show: true, position: "bottom", distance: 8, lineHeight: 15, formatter: `${n.name}\n${fmtNum(g.done)} / ${fmtNum(g.total)}` },
      tooltip: { formatter: `${esc(n.name)}<br>done ${g.done} / ${g.total}<br>processing ${g.processing}, waiting ${g.waiting}, erred ${g.erred}` },
    };
  });
  return {
    animation: false,
    tooltip: {},
    series: [{
      type: "graph", layout: "none", roam: true, data: nodes,
      links: l.edges.map((e) => ({ source: e.from, target: e.to })),
      edgeSymbol: ["none", "arrow"], edgeSymbolSize: 8,
      lineStyle: { color: "#9aa3b2", width: 1.5, curveness: 0.1 },
    }],
  };
}
