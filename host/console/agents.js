// Agents (#/agents): each agent in service with its digest and load time,
// the fields it may write, its latest invocations and their outcomes over
// time, and its refusal rate; and the files of the agents folder refused.

import { api, query } from "./api.js";
import { h, section, show, svg, table, time } from "./ui.js";

/** The latest invocations drawn per agent. */
const RECENT = 200;

const COLOURS = { allowed: "ok", failed: "bad", trapped: "bad", stopped: "warn" };

/** The agent's latest invocations on a time axis, one tick each. */
function strip(ends) {
  if (!ends.length) return h("p", { class: "muted" }, "No invocations yet.");
  const [W, H] = [600, 36];
  const t0 = ends[0].at_ms;
  const span = Math.max(ends.at(-1).at_ms - t0, 1);
  return h(
    "div",
    { class: "scroll" },
    svg(
      "svg",
      { class: "strip", width: W + 10, height: H + 18, viewBox: `0 0 ${W + 10} ${H + 18}`, role: "img", "aria-label": "invocations over time" },
      svg("line", { x1: 5, y1: H, x2: W + 5, y2: H, class: "axis" }),
      ends.map((e) => {
        const x = 5 + ((e.at_ms - t0) / span) * W;
        const a = svg("a", { href: `#/trace/${e.invocation}` }, svg("rect", { x: x - 1.5, y: 4, width: 3, height: H - 6, class: COLOURS[e.decision] || "bad" }), svg("title", {}, `#${e.invocation} ${e.decision} at ${time(e.at_ms)}`));
        return a;
      }),
      svg("text", { x: 5, y: H + 14, class: "sub" }, time(t0)),
      svg("text", { x: W + 5, y: H + 14, class: "sub", "text-anchor": "end" }, time(ends.at(-1).at_ms)),
    ),
  );
}

export async function render(main, _params, { signal }) {
  const [list, report] = await Promise.all([api("/v1/agents", { signal }), api("/v1/conflicts", { signal })]);
  const recent = await Promise.all(
    list.agents.map((a) => api(`/v1/audit${query({ agent: a.name, call: "invocation.end", limit: RECENT })}`, { signal }).then((p) => p.entries)),
  );
  show(
    main,
    h("h1", {}, "Agents"),
    list.agents.length === 0 ? h("p", {}, "No agent is loaded: drop a component into the agents folder.") : null,
    list.agents.map((a, i) => {
      const ends = recent[i];
      const counts = {};
      for (const e of ends) counts[e.decision] = (counts[e.decision] || 0) + 1;
      const [refused, total] = report.refusal_rate[a.name] || [0, 0];
      return h(
        "section",
        { class: "agent", dataset: { agent: a.name } },
        h("h2", {}, a.name),
        h(
          "table",
          { class: "kv" },
          h("tr", {}, h("th", {}, "digest"), h("td", {}, h("code", { title: a.digest }, a.digest))),
          h("tr", {}, h("th", {}, "loaded"), h("td", {}, time(a.loaded_at_ms))),
          h("tr", {}, h("th", {}, "component"), h("td", {}, a.path)),
          h("tr", {}, h("th", {}, "may write"), h("td", {}, a.writes.length ? a.writes.join(", ") : h("span", { class: "muted" }, "nothing"))),
          h("tr", {}, h("th", {}, "may reach"), h("td", {}, grants(a))),
          h("tr", {}, h("th", {}, "refusal rate"), h("td", { class: "rate" }, total ? `${refused} of ${total} write-like calls refused (${((100 * refused) / total).toFixed(1)}%)` : "no write-like calls yet")),
          h(
            "tr",
            {},
            h("th", {}, `latest ${ends.length} invocations`),
            h("td", {}, Object.entries(counts).map(([d, n], j) => [j ? ", " : "", `${n} ${d === "allowed" ? "ok" : d}`]) , " ", h("a", { href: `#/feed${query({ agent: a.name, call: "invocation.end" })}` }, "in the feed")),
          ),
        ),
        strip(ends),
      );
    }),
    list.refused.length
      ? section(
          "Refused files",
          table(
            ["file", "why, and when"],
            list.refused.map((r) => h("tr", {}, h("td", {}, r.path), h("td", {}, r.reason, " ", h("span", { class: "muted" }, time(r.at_ms))))),
          ),
        )
      : null,
  );
}

/** What an agent may reach beyond the knowledge base: nothing by default. */
function grants(a) {
  const parts = [];
  if ((a.http || []).length) parts.push(`HTTP ${a.http.join(", ")}`);
  if ((a.secrets || []).length) parts.push(`secrets ${a.secrets.join(", ")} (added by the host)`);
  if ((a.models || []).length) parts.push(`models ${a.models.join(", ")}`);
  return parts.length ? parts.join("; ") : h("span", { class: "muted" }, "nothing beyond the knowledge base");
}
