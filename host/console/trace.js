// Causation (#/trace/ID): an invocation's chain drawn as a graph, what
// caused it and everything it caused, across subscriptions and handoffs;
// below it, the chain's audit entries. A chain stopped at the depth limit
// is marked where it stopped.

import { api, query } from "./api.js";
import { AUDIT_HEAD, auditRow } from "./feed.js";
import { h, section, show, svg } from "./ui.js";

/** Pages of the chain's entries read at most: past it, a link goes on. */
const MAX_PAGES = 10;

export async function render(main, id, { signal }) {
  const entries = [];
  let invocations = [];
  let next = 0;
  for (let page = 0; page < MAX_PAGES && next !== null; page++) {
    const t = await api(`/v1/audit/trace/${id}${query({ after: next, limit: 1000 })}`, { signal });
    invocations = t.invocations;
    entries.push(...t.entries);
    next = t.next;
  }

  // Each invocation: its agent and cause (from its start), its outcome
  // (from its end), and whether a cascade stopped there.
  const nodes = new Map(invocations.map((i) => [i, { id: i, agent: "?", causation: null, outcome: "running", stopped: false, calls: 0 }]));
  for (const e of entries) {
    const n = nodes.get(e.invocation);
    if (!n) continue;
    if (e.call === "invocation.start") {
      n.agent = e.agent;
      n.causation = e.causation;
      n.kind = e.outcome;
    } else if (e.call === "invocation.end") {
      n.outcome = e.decision === "allowed" ? "ok" : e.decision;
    } else if (e.call === "cascade.stopped") {
      // A step never run: its own seq stands in for its invocation.
      Object.assign(n, { agent: e.agent, causation: e.causation, outcome: "stopped", stopped: true, stopReason: e.outcome });
    }
    n.calls++;
  }

  // Layout: depth from the root, rows in depth-first order.
  const children = new Map();
  const roots = [];
  for (const n of nodes.values()) {
    if (n.causation && nodes.has(n.causation)) {
      if (!children.has(n.causation)) children.set(n.causation, []);
      children.get(n.causation).push(n);
    } else roots.push(n);
  }
  const placed = [];
  const place = (n, depth) => {
    n.depth = depth;
    n.row = placed.length;
    placed.push(n);
    for (const c of (children.get(n.id) || []).sort((a, b) => a.id - b.id)) place(c, depth + 1);
  };
  roots.sort((a, b) => a.id - b.id).forEach((r) => place(r, 0));

  const [W, H, GX, GY] = [190, 44, 230, 60];
  const width = Math.max(...placed.map((n) => n.depth), 0) * GX + W + 20;
  const height = placed.length * GY + 10;
  const x = (n) => 10 + n.depth * GX;
  const y = (n) => 10 + n.row * GY;
  const body = h("tbody", {});
  const highlight = (inv) => {
    for (const tr of body.rows) tr.classList.toggle("current", Number(tr.dataset.invocation) === inv);
    for (const g of graph.querySelectorAll("g.node")) g.classList.toggle("selected", Number(g.dataset.invocation) === inv);
  };
  const graph = svg(
    "svg",
    { id: "trace-graph", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `causation chain of invocation ${id}` },
    placed
      .filter((n) => n.causation && nodes.has(n.causation))
      .map((n) => {
        const p = nodes.get(n.causation);
        const [x1, y1, x2, y2] = [x(p) + W, y(p) + H / 2, x(n), y(n) + H / 2];
        return svg("path", { class: "edge", d: `M${x1},${y1} C${x1 + 20},${y1} ${x2 - 20},${y2} ${x2},${y2}`, "data-from": p.id, "data-to": n.id });
      }),
    placed.map((n) =>
      svg(
        "g",
        {
          class: `node ${n.outcome}${n.id === Number(id) ? " root" : ""}${n.stopped ? " stopped" : ""}`,
          "data-invocation": n.id,
          "data-agent": n.agent,
          "data-causation": n.causation ?? "",
          transform: `translate(${x(n)},${y(n)})`,
          onclick: () => highlight(n.id),
        },
        svg("title", {}, `invocation ${n.id} by ${n.agent}: ${n.kind || ""} (${n.outcome})${n.stopped ? `; stopped: ${n.stopReason}` : ""}`),
        svg("rect", { width: W, height: H, rx: 6 }),
        svg("text", { x: 10, y: 18 }, `#${n.id} ${n.agent}`),
        svg("text", { x: 10, y: 35, class: "sub" }, `${n.outcome} · ${n.calls} entries${n.stopped ? " · STOPPED at depth limit" : ""}`),
      ),
    ),
  );
  for (const e of entries) body.append(auditRow(e));
  const root = nodes.get(Number(id));
  const causes = [];
  for (let n = root; n && n.causation && nodes.has(n.causation); n = nodes.get(n.causation)) causes.unshift(nodes.get(n.causation));
  show(
    main,
    h("h1", {}, `Causation of invocation ${id}`),
    h(
      "p",
      { class: "muted" },
      root ? `${root.agent}'s invocation` : "",
      causes.length ? `, caused by ${causes.map((c) => `#${c.id} ${c.agent}`).join(" → ")}` : ", caused by no other",
      `; ${invocations.length} invocation(s) in the chain.`,
      placed.some((n) => n.stopped) ? " A cascade in it was stopped at the depth limit (marked)." : "",
    ),
    section("Graph", h("div", { class: "scroll graph" }, graph)),
    section(
      "Entries",
      h("div", { class: "scroll" }, h("table", { class: "audit" }, h("thead", {}, h("tr", {}, AUDIT_HEAD.map((c) => h("th", {}, c)))), body)),
      next !== null ? h("p", {}, `The chain has more than ${entries.length} entries; the feed filtered by invocation shows the rest.`) : null,
    ),
  );
}
