// The Trellis dashboard: one module, no framework, no CDN. It reads the operator's JSON
// (api/graph, api/service, api/proxies, relative to the page so it works behind a
// port-forward or the API server's pod proxy alike) and draws the service graph in SVG, a
// page per service, and the proxies' sync state. Text is set with textContent only.

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 10000;
// The graph's layout: one column per call depth, one row per workload in it.
const COLUMN = 370;
const ROW = 100;
const NODE_W = 220;
const NODE_H = 46;
const MARGIN = 30;

const main = document.getElementById("main");
const windowSelect = document.getElementById("window");
const statusLine = document.getElementById("status");
const missingLine = document.getElementById("missing");

function build(make, tag, attrs, children) {
  const e = make(tag);
  for (const [k, v] of Object.entries(attrs)) {
    e.setAttribute(k, String(v));
  }
  for (const c of children) {
    e.append(c);
  }
  return e;
}
const el = (tag, attrs = {}, ...children) => build((t) => document.createElement(t), tag, attrs, children);
const svg = (tag, attrs = {}, ...children) => build((t) => document.createElementNS(SVG, t), tag, attrs, children);

const pct = (r) => (r == null ? "–" : `${(r * 100).toFixed(1)}%`);
const ms = (v) => (v == null ? "–" : `${v.toFixed(v < 10 ? 1 : 0)} ms`);
const rate = (v) => `${v.toFixed(2)} rps`;
// Mutual TLS in words (no emoji: a machine without an emoji font would draw boxes).
const mtls = (share) => (share == null ? "" : share === 1 ? "mTLS" : share === 0 ? "plaintext" : `${pct(share)} mTLS`);
// `payment.shop.svc.cluster.local` → `payment.shop`.
const shortService = (fqdn) => fqdn.split(".").slice(0, 2).join(".");

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) {
    throw new Error(`${path}: ${response.status} ${(await response.text()).trim()}`);
  }
  return response.json();
}

function showMissing(replicas) {
  missingLine.hidden = !replicas || replicas.length === 0;
  missingLine.textContent = missingLine.hidden
    ? ""
    : `Operator replicas that did not answer (their proxies' traffic is missing): ${replicas.join(", ")}`;
}

function table(headers, rows) {
  return el("table", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h))), ...rows);
}

function cell(text, cls) {
  return el("td", cls ? { class: cls } : {}, text);
}

// The service graph.

function layout(nodes) {
  const rows = new Map();
  const at = new Map();
  for (const n of nodes) {
    const row = rows.get(n.depth) ?? 0;
    rows.set(n.depth, row + 1);
    at.set(n.id, { x: MARGIN + n.depth * COLUMN, y: MARGIN + row * ROW });
  }
  const columns = Math.max(1, ...[...rows.keys()].map((d) => d + 1));
  const height = Math.max(1, ...rows.values());
  return { at, width: MARGIN * 2 + (columns - 1) * COLUMN + NODE_W, height: MARGIN * 2 + (height - 1) * ROW + NODE_H };
}

function edgePath(from, to) {
  const x1 = from.x + NODE_W;
  const y1 = from.y + NODE_H / 2;
  const x2 = to.x;
  const y2 = to.y + NODE_H / 2;
  if (x2 > x1) {
    const bend = (x2 - x1) / 2;
    return { d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`, mid: { x: (x1 + x2) / 2, y: (y1 + y2) / 2 } };
  }
  // Back or within a column (a cycle): loop below.
  const low = Math.max(from.y, to.y) + NODE_H + 30;
  return { d: `M${from.x + NODE_W / 2},${from.y + NODE_H} C${from.x + NODE_W / 2},${low} ${to.x + NODE_W / 2},${low} ${to.x + NODE_W / 2},${to.y + NODE_H}`, mid: { x: (from.x + to.x + NODE_W) / 2, y: low - 8 } };
}

function renderGraph(graph) {
  showMissing(graph.missingReplicas);
  const { at, width, height } = layout(graph.nodes);
  const defs = svg("defs", {}, ...["healthy", "degraded", "failing", "idle"].map((h) =>
    svg("marker", { id: `arrow-${h}`, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", class: `arrow-${h}` }))));
  const picture = svg("svg", { class: "graph", width: "100%", height: height + 40, preserveAspectRatio: "xMinYMin meet", viewBox: `0 0 ${width} ${height + 40}`, role: "img", "aria-label": "service graph" }, defs);
  for (const e of graph.edges) {
    const from = at.get(e.source);
    const to = at.get(e.destination);
    if (!from || !to) {
      continue;
    }
    const { d, mid } = edgePath(from, to);
    // Plaintext edges are dashed, as well as said.
    const g = svg("g", {
      class: `edge ${e.health}${e.mtlsShare === 1 ? " mtls" : " plaintext"}`,
      "data-source": e.source,
      "data-destination": e.destination,
      "data-service": e.service,
      "data-rps": e.rps,
      "data-success-rate": e.successRate ?? "",
      "data-p50-ms": e.p50Ms ?? "",
      "data-p99-ms": e.p99Ms ?? "",
      "data-mtls-share": e.mtlsShare ?? "",
    },
      svg("title", {}, `${e.source} → ${e.destination}${e.service ? ` via ${e.service}` : ""}\n${e.requests} requests, ${e.failures} failed, p50 ${ms(e.p50Ms)}, p99 ${ms(e.p99Ms)}, ${mtls(e.mtlsShare)}`),
      svg("path", { d, "marker-end": `url(#arrow-${e.health})` }),
      svg("text", { x: mid.x, y: mid.y - 20, "text-anchor": "middle" },
        svg("tspan", { x: mid.x }, `${rate(e.rps)} · ${pct(e.successRate)}`),
        svg("tspan", { x: mid.x, dy: 13 }, `p99 ${ms(e.p99Ms)} · ${mtls(e.mtlsShare)}`)));
    if (e.service) {
      g.addEventListener("click", () => {
        location.hash = `#/service/${shortService(e.service)}`;
      });
    }
    picture.append(g);
  }
  for (const n of graph.nodes) {
    const p = at.get(n.id);
    const sub = n.served.requests > 0 ? `${rate(n.served.rps)} · ${pct(n.served.successRate)}` : "no requests served";
    picture.append(svg("g", { class: `node ${n.health}`, "data-id": n.id, transform: `translate(${p.x},${p.y})` },
      svg("title", {}, n.id),
      svg("rect", { width: NODE_W, height: NODE_H, rx: 6 }),
      svg("text", { x: 10, y: 18 }, n.namespace ? `${n.name} (${n.namespace})` : "clients outside the mesh"),
      svg("text", { x: 10, y: 36, class: "sub" }, sub)));
  }
  const services = [...new Set(graph.edges.map((e) => e.service).filter((s) => s))].sort();
  const list = el("ul", { id: "services" }, ...services.map((s) => el("li", {}, el("a", { href: `#/service/${shortService(s)}` }, shortService(s)))));
  const nothing = graph.edges.length === 0 ? [el("p", {}, "No requests in this window.")] : [];
  main.replaceChildren(el("h2", {}, `Service graph (last ${graph.windowSeconds} s)`), ...nothing, picture,
    el("h3", {}, "Services"), list);
  document.body.dataset.view = "graph";
}

// A service's page.

function chart(title, points, value, format) {
  const w = 320;
  const h = 110;
  const values = points.map(value);
  const max = Math.max(...values.filter((v) => v != null), 0) || 1;
  const step = points.length > 1 ? (w - 50) / (points.length - 1) : 0;
  // A slot without requests has no success rate or latency: a gap, and a dot per known point.
  const at = values.map((v, i) => (v == null ? null : { x: 40 + i * step, y: h - 15 - (v / max) * (h - 30), v }));
  const known = at.filter((p) => p);
  return el("div", { class: "chart" }, el("div", {}, title),
    svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}` },
      svg("line", { class: "axis", x1: 40, y1: h - 15, x2: w - 10, y2: h - 15 }),
      svg("text", { x: 2, y: 14 }, format(max)),
      svg("text", { x: 2, y: h - 15 }, format(0)),
      svg("polyline", { points: known.map((p) => `${p.x},${p.y}`).join(" ") }),
      ...known.map((p) => svg("circle", { cx: p.x, cy: p.y, r: 2.5 }, svg("title", {}, format(p.v))))));
}

function routesSection(page) {
  if (page.routesError) {
    return [el("p", { class: "error" }, page.routesError)];
  }
  const out = [];
  for (const port of page.routes.ports) {
    out.push(el("h4", {}, `Port ${port.port} (${port.protocol})`));
    if (port.routes.length > 0) {
      out.push(table(["#", "from", "match", "action"], port.routes.map((r) =>
        el("tr", {}, cell(String(r.index)), cell(r.from), cell(r.matches.join(" or ") || "every request"), cell(r.action)))));
    }
    if (port.tcpRoutes && port.tcpRoutes.length > 0) {
      out.push(table(["from", "server names", "action"], port.tcpRoutes.map((r) =>
        el("tr", {}, cell(r.from), cell((r.sniHosts || []).join(", ") || "any"), cell(r.action)))));
    }
    out.push(table(["destination", "DestinationRule", "policy", "endpoints"], port.destinations.map((d) =>
      el("tr", {}, cell(d.cluster), cell(d.destinationRule || "none"), cell(d.policy),
        cell(d.endpoints.map((e) => `${e.address} ${e.health} ${e.pod || ""} mTLS ${e.mtls}; ${e.authorization}`).join("\n") || "none")))));
  }
  if (page.routes.diagnostics.length > 0) {
    out.push(el("ul", {}, ...page.routes.diagnostics.map((d) => el("li", { class: "error" }, d))));
  }
  return out;
}

function renderService(page) {
  showMissing(page.missingReplicas);
  const points = page.series;
  const edges = table(["from", "to", "rps", "success", "p50", "p99", "mTLS"], page.edges.map((e) =>
    el("tr", { class: e.health }, cell(e.source), cell(e.destination), cell(rate(e.rps), "num"), cell(pct(e.successRate), "num"),
      cell(ms(e.p50Ms), "num"), cell(ms(e.p99Ms), "num"), cell(mtls(e.mtlsShare)))));
  main.replaceChildren(
    el("p", {}, el("a", { href: "#/" }, "← service graph")),
    el("h2", {}, `Service ${page.service}`),
    el("h3", {}, `Golden signals, every ${page.slotSeconds} s over the last ${points.length * page.slotSeconds} s`),
    chart("requests per second", points, (p) => p.rps, (v) => v.toFixed(1)),
    chart("success rate", points, (p) => p.successRate, pct),
    chart("p99 latency", points, (p) => p.p99Ms, ms),
    el("h3", {}, "Edges into it"),
    page.edges.length > 0 ? edges : el("p", {}, "No requests in this window."),
    el("h3", {}, "Routes in force (as meshctl routes shows them)"),
    ...routesSection(page));
  document.body.dataset.view = "service";
}

// The proxies.

function renderProxies(p) {
  showMissing([]);
  const versions = Object.entries(p.versions).map(([v, n]) => `${v || "unknown"}: ${n}`).join(", ");
  main.replaceChildren(
    el("h2", {}, "Proxies"),
    el("p", {}, `Operator ${p.operatorVersion}; proxies by version: ${versions || "none"}`),
    p.findings.length > 0 ? el("ul", {}, ...p.findings.map((f) => el("li", { class: "error" }, f))) : el("p", {}, "Every proxy is in sync, at the operator's version."),
    table(["proxy", "role", "sync", "sent", "applied", "version"], p.proxies.map((r) =>
      el("tr", {}, cell(r.proxy), cell(r.role), cell(r.sync, `sync-${r.sync}`), cell(r.sent || "–"), cell(r.acked || "–"),
        cell(r.skew ? `${r.version} (skew)` : r.version, r.skew ? "skew" : "")))));
  document.body.dataset.view = "proxies";
}

// Routing between the pages, and the refresh.

async function refresh() {
  const hash = location.hash || "#/";
  const win = windowSelect.value;
  try {
    const service = hash.match(/^#\/service\/([^/]+)$/);
    if (service) {
      renderService(await getJson(`api/service?service=${encodeURIComponent(service[1])}&window=300`));
    } else if (hash === "#/proxies") {
      renderProxies(await getJson("api/proxies"));
    } else {
      renderGraph(await getJson(`api/graph?window=${win}`));
    }
    statusLine.textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    statusLine.textContent = "";
    main.replaceChildren(el("p", { class: "error" }, `Could not read the operator: ${error.message}`));
  }
}

window.addEventListener("hashchange", refresh);
windowSelect.addEventListener("change", refresh);
setInterval(refresh, REFRESH_MS);
refresh();
