// The live feed: audit entries as they happen (the audit stream),
// newest first, filtered by agent, entity, call and decision; paged back
// through the log a page at a time, never loaded whole. Also the page of
// one audit entry (#/audit/SEQ).

import { api, auditEntry, follow, query } from "./api.js";
import { auditLink, clip, decision, entityLink, failure, h, section, show, table, time, traceLink } from "./ui.js";

const PAGE = 100;
/** Rows kept on the page: past it the oldest go (page back for them). */
const MAX_ROWS = 1000;

export const DECISIONS = ["allowed", "forbidden", "conflict", "invalid", "failed", "trapped", "deferred", "denied", "pinned", "leased", "stopped", "fault"];
const CALLS = ["invocation.start", "invocation.end", "kb.get", "kb.commit", "kb.history", "kb.recent", "log.log", "coord.act", "coord.request-change", "coord.resolve-change", "coord.lease", "coord.renew", "coord.release", "coord.changes-since-read", "http.request", "cascade.stopped", "human.pin", "human.unpin", "human.revert", "human.lease-break", "human.import", "api.refused", "host.start", "host.stop"];

/** Who refused or stood in the way: the rule, and the other party. */
function why(e) {
  if (e.decision === "allowed") return null;
  return h("span", { class: "why" }, e.rule || "", e.peer ? h("span", { class: "peer" }, ` ↔ ${e.peer}`) : null);
}

/** One audit entry as a table row. */
export function auditRow(e) {
  return h(
    "tr",
    { class: e.decision === "allowed" ? "" : "refused", dataset: { seq: String(e.seq), agent: e.agent, call: e.call, decision: e.decision, invocation: String(e.invocation) } },
    h("td", {}, auditLink(e.seq)),
    h("td", { class: "time" }, time(e.at_ms)),
    h("td", {}, e.agent),
    h("td", {}, e.call),
    h("td", {}, e.entities.map((k, i) => [i ? " " : "", entityLink(k)])),
    h("td", {}, decision(e.decision), " ", why(e)),
    h("td", { class: "outcome", title: e.outcome }, clip(e.outcome, 160)),
    h("td", {}, traceLink(e.invocation)),
  );
}

export const AUDIT_HEAD = ["seq", "time", "agent", "call", "entities", "decision", "outcome", "invocation"];

export async function render(main, params, { signal }) {
  const filter = {
    agent: params.get("agent") || "",
    entity: params.get("entity") || "",
    call: params.get("call") || "",
    outcome: params.get("outcome") || "",
  };
  const input = (name, placeholder, list) =>
    h("input", { name, value: filter[name], placeholder, list, autocomplete: "off", "aria-label": placeholder });
  const select = h(
    "select",
    { name: "outcome", "aria-label": "decision" },
    h("option", { value: "" }, "any decision"),
    DECISIONS.map((d) => h("option", { value: d, selected: d === filter.outcome }, d)),
  );
  const form = h(
    "form",
    {
      class: "filters",
      onsubmit: (ev) => {
        ev.preventDefault();
        const data = Object.fromEntries(new FormData(ev.target));
        location.hash = `#/feed${query(data)}`;
      },
    },
    input("agent", "agent"),
    input("entity", "entity (kind/id)"),
    input("call", "call", "calls"),
    select,
    h("button", { type: "submit" }, "Filter"),
    h("a", { href: "#/feed", class: "button" }, "Clear"),
    h("datalist", { id: "calls" }, CALLS.map((c) => h("option", { value: c }))),
  );
  const status = h("span", { class: "live", id: "live-status" }, "connecting…");
  const body = h("tbody", { id: "feed-rows" });
  const errors = h("div");
  const older = h("button", { id: "older", hidden: true }, "Older entries");
  show(
    main,
    h("h1", {}, "Live feed ", status),
    form,
    errors,
    h(
      "div",
      { class: "scroll" },
      h("table", { class: "audit" }, h("thead", {}, h("tr", {}, AUDIT_HEAD.map((c) => h("th", {}, c)))), body),
    ),
    older,
  );

  let oldest = null;
  const loadOlder = async (before) => {
    const page = await api(`/v1/audit${query({ ...filter, before, limit: PAGE })}`, { signal });
    for (const e of page.entries.slice().reverse()) body.append(auditRow(e));
    oldest = page.next;
    older.hidden = oldest === null;
    return page.entries;
  };
  older.onclick = () => loadOlder(oldest).catch((e) => show(errors, failure(e)));

  let newest;
  try {
    const first = await loadOlder(undefined);
    // Stream on from the newest entry of the whole log (not of the
    // filter), so a filter with no match yet does not replay history.
    const head = await api(`/v1/audit${query({ limit: 1 })}`, { signal });
    newest = Math.max(first.at(-1)?.seq ?? 0, head.entries.at(-1)?.seq ?? 0);
  } catch (e) {
    if (e.name === "AbortError") return;
    show(status, "not live");
    show(errors, failure(e));
    return;
  }
  follow(
    `/v1/audit/stream${query(filter)}`,
    newest,
    (e) => {
      body.prepend(auditRow(e));
      while (body.rows.length > MAX_ROWS) {
        body.lastElementChild.remove();
        oldest = Number(body.lastElementChild.dataset.seq);
        older.hidden = false;
      }
    },
    {
      signal,
      onOpen: () => {
        show(status, "live");
        status.classList.add("on");
        show(errors);
      },
      onError: (e) => {
        show(status, "reconnecting…");
        status.classList.remove("on");
        show(errors, failure(e));
      },
    },
  );
}

/** One audit entry, whole: #/audit/SEQ. */
export async function renderEntry(main, seq, { signal }) {
  const e = await auditEntry(seq, signal);
  if (!e) {
    show(main, h("h1", {}, `Audit entry ${seq}`), h("p", { class: "error" }, `there is no audit entry ${seq}`));
    return;
  }
  let args = e.args;
  try {
    args = JSON.stringify(JSON.parse(e.args), null, 2);
  } catch {
    // not JSON: shown as it is
  }
  const row = (k, v) => h("tr", {}, h("th", {}, k), h("td", {}, v));
  show(
    main,
    h("h1", { id: "entry" }, `Audit entry ${e.seq} `, decision(e.decision)),
    h(
      "p",
      { class: "pager" },
      e.seq > 1 ? h("a", { href: `#/audit/${e.seq - 1}` }, "← previous") : null,
      " ",
      h("a", { href: `#/audit/${e.seq + 1}` }, "next →"),
    ),
    h(
      "table",
      { class: "kv" },
      row("time", time(e.at_ms)),
      row("agent", e.agent),
      row("call", e.call),
      row("entities", e.entities.map((k, i) => [i ? " " : "", entityLink(k)])),
      row("decision", decision(e.decision)),
      row("rule", e.rule || "-"),
      row("other party", e.peer || "-"),
      row("fields", e.fields.join(", ") || "-"),
      row("outcome", e.outcome),
      row("invocation", traceLink(e.invocation)),
      row("caused by", traceLink(e.causation)),
      row("duration", `${e.duration_us} µs`),
      row("agent digest", h("code", {}, e.digest || "-")),
      row("previous hash", h("code", {}, e.prev_hash)),
      row("hash", h("code", {}, e.hash)),
    ),
    section("Arguments", h("pre", {}, args)),
  );
}
