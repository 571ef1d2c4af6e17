// Conflicts (#/conflicts): the conflicts report as views. A matrix of
// refusals by agent and the other party, the same by entity and by field,
// ping-pongs, stale acts, stopped cascades and refusal rates. Every count
// opens the audit entries (or events) behind it.

import { api, query } from "./api.js";
import { auditLink, entityLink, h, section, show, table, traceLink } from "./ui.js";

/** `sales vs support: conflict` → ["sales", "support", "conflict"]. */
function splitPair(key) {
  const m = /^(.*) vs (.*): ([a-z]+)$/.exec(key);
  return m ? [m[1], m[2], m[3]] : null;
}

/** `customer/acme: conflict` (or `customer.status: pinned`) → [thing, decision]. */
function splitKey(key) {
  const i = key.lastIndexOf(": ");
  return i < 0 ? [key, ""] : [key.slice(0, i), key.slice(i + 2)];
}

export async function render(main, params, { signal }) {
  const window = params.get("window_ms") || "";
  const report = await api(`/v1/conflicts${query({ window_ms: window })}`, { signal });
  const detail = h("div", { id: "cell-detail" });

  /** Shows the seqs behind a count, as links to their entries. */
  const open = (title, tallies, link = auditLink) => {
    const seqs = tallies.flatMap((t) => t.seqs).sort((a, b) => a - b);
    const count = tallies.reduce((n, t) => n + t.count, 0);
    show(
      detail,
      h("h3", {}, title),
      h("p", {}, `${count} in all${seqs.length < count ? `; the first ${seqs.length} are kept` : ""}:`),
      h("p", { class: "seqs" }, seqs.map((s, i) => [i ? " " : "", link(s)])),
    );
    detail.scrollIntoView({ block: "nearest" });
  };

  // The matrix: rows are the refused agent, columns the other party.
  const cells = new Map();
  const rows = new Set();
  const cols = new Set();
  for (const [key, tally] of Object.entries(report.by_pair)) {
    const p = splitPair(key);
    if (!p) continue;
    const [agent, peers, d] = p;
    rows.add(agent);
    // A conflict names every agent that changed the entity since the
    // read (`sales, support`): each of them was in the way.
    for (const peer of peers.split(", ")) {
      cols.add(peer);
      const k = `${agent}\u0000${peer}`;
      if (!cells.has(k)) cells.set(k, []);
      cells.get(k).push({ decision: d, ...tally });
    }
  }
  const colList = [...cols].sort();
  const matrix = rows.size
    ? h(
        "div",
        { class: "scroll" },
        h(
          "table",
          { class: "matrix", id: "matrix" },
          h("thead", {}, h("tr", {}, h("th", {}, "refused ↓ / in the way of →"), colList.map((c) => h("th", {}, c)))),
          h(
            "tbody",
            {},
            [...rows].sort().map((r) =>
              h(
                "tr",
                {},
                h("th", {}, r),
                colList.map((c) => {
                  const list = cells.get(`${r}\u0000${c}`);
                  if (!list) return h("td", { class: "empty" }, "");
                  const n = list.reduce((s, t) => s + t.count, 0);
                  return h(
                    "td",
                    { class: "hot", dataset: { agent: r, peer: c } },
                    h(
                      "button",
                      { class: "cell", title: list.map((t) => `${t.decision}: ${t.count}`).join(", "), onclick: () => open(`${r} refused, in the way of ${c}`, list) },
                      String(n),
                      h("small", {}, list.map((t) => t.decision).join(", ")),
                    ),
                  );
                }),
              ),
            ),
          ),
        ),
      )
    : h("p", {}, "No agent has been refused because of another yet.");

  const tallyTable = (title, map, linkKey) => {
    const entries = Object.entries(map);
    if (!entries.length) return null;
    return section(
      title,
      table(
        ["", "decision", "count"],
        entries
          .sort((a, b) => b[1].count - a[1].count)
          .map(([key, t]) => {
            const [thing, d] = splitKey(key);
            return h("tr", {}, h("td", {}, linkKey ? linkKey(thing) : thing), h("td", {}, d), h("td", {}, h("button", { class: "cell small", onclick: () => open(key, [t]) }, String(t.count))));
          }),
      ),
    );
  };

  const eventLink = (pp) => (seq) => h("a", { href: `#/entity/${pp.entity}?at=${seq}` }, String(seq));
  show(
    main,
    h("h1", {}, "Who got in whose way"),
    h("p", { class: "muted" }, `Counted through audit entry ${report.through_audit} and event ${report.through_event}.`),
    section("Refusals by agent pair", matrix),
    detail,
    tallyTable("By entity", report.by_entity, (k) => (k.includes("/") ? entityLink(k) : k)),
    tallyTable("By field", report.by_field),
    report.ping_pongs.length
      ? section(
          "Ping-pongs",
          table(
            ["entity", "field", "agents", "flips", "events"],
            report.ping_pongs.map((p) =>
              h("tr", {}, h("td", {}, entityLink(p.entity)), h("td", {}, p.field), h("td", {}, `${p.agents[0]} ⇄ ${p.agents[1]}`), h("td", {}, String(p.flips)), h("td", {}, p.events.map((s, i) => [i ? " " : "", eventLink(p)(s)]))),
            ),
          ),
        )
      : null,
    tallyTable("Stale acts and commits (acted on an old version)", report.stale),
    report.stopped_cascades.count
      ? section("Cascades stopped at the depth limit", h("p", {}, h("button", { class: "cell small", onclick: () => open("stopped cascades", [report.stopped_cascades]) }, String(report.stopped_cascades.count))))
      : null,
    report.deepest_chain.length ? section("Deepest chain", h("p", {}, report.deepest_chain.map((i, n) => [n ? " → " : "", traceLink(i)]))) : null,
    section(
      "Refusal rate",
      table(
        ["agent", "refused", "write-like calls", "rate"],
        Object.entries(report.refusal_rate).map(([a, [refused, total]]) =>
          h("tr", {}, h("td", {}, h("a", { href: "#/agents" }, a)), h("td", {}, String(refused)), h("td", {}, String(total)), h("td", {}, total ? `${((100 * refused) / total).toFixed(1)}%` : "-")),
        ),
      ),
    ),
  );
}
