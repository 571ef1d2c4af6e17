// Entities: the list (#/entities, paged), and one entity's page
// (#/entity/KIND/ID, `?at=SEQ` for its state after an event): the state
// with each field's owner or writers, pins, the live lease, open change
// requests, and the timeline of its events. An operator pins and unpins
// fields, breaks the lease and reverts events from here, through the API.

import { api, query, seg } from "./api.js";
import { ask, clip, entityLink, h, notify, section, show, table, time, traceLink, value } from "./ui.js";

const HISTORY_PAGE = 200;

export async function renderList(main, params, { signal }) {
  const kind = params.get("kind") || "";
  const after = params.get("after") || "";
  const schema = await api("/v1/schema", { signal });
  const page = await api(`/v1/entities${query({ kind, after, limit: 100 })}`, { signal });
  show(
    main,
    h("h1", {}, "Entities"),
    h(
      "p",
      { class: "filters" },
      h("a", { href: "#/entities", class: kind ? "button" : "button active" }, "all"),
      Object.keys(schema.kinds).map((k) => h("a", { href: `#/entities?kind=${seg(k)}`, class: k === kind ? "button active" : "button" }, k)),
    ),
    table(
      ["entity", "version", "updated by", "updated at"],
      page.entities.map((e) =>
        h("tr", {}, h("td", {}, entityLink(e.entity)), h("td", {}, e.version), h("td", {}, e.updated_by), h("td", { class: "time" }, time(e.updated_at_ms))),
      ),
    ),
    page.entities.length === 0 ? h("p", {}, "No entities yet.") : null,
    page.next ? h("p", {}, h("a", { href: `#/entities${query({ kind, after: page.next })}`, class: "button" }, "Next page")) : null,
  );
}

/** Who may write a field, as the schema says. */
function writers(schema, kind, field) {
  const f = schema.kinds[kind]?.fields[field];
  if (!f) return h("span", { class: "muted" }, "not declared");
  return f.shared ? h("span", { class: "writers" }, `shared: ${f.writers.join(", ")}`) : h("span", { class: "owner" }, `owner: ${f.writers[0]}`);
}

/** Runs an operator action, says what happened, and reloads the page. */
async function operate(what, path, body, reload) {
  try {
    const answer = await api(path, { method: "POST", body });
    notify(`${what}: done${answer && answer.seq ? ` (event ${answer.seq})` : ""}`, "ok");
    reload();
  } catch (e) {
    notify(`${what} refused: ${e.status ? `${e.status} ` : ""}${e.detail || e.message}`, "bad");
  }
}

export async function render(main, key, params, ctx) {
  const { signal, who, reload } = ctx;
  const slash = key.indexOf("/");
  const [kind, id] = [key.slice(0, slash), key.slice(slash + 1)];
  const base = `/v1/entities/${seg(kind)}/${seg(id)}`;
  const at = params.get("at");
  const historyAfter = Number(params.get("from") || 0);
  const [schema, now, history, requests] = await Promise.all([
    api("/v1/schema", { signal }),
    api(base, { signal }).catch((e) => (e.status === 404 ? null : Promise.reject(e))),
    api(`${base}/history${query({ after: historyAfter, limit: HISTORY_PAGE })}`, { signal }),
    api(`/v1/change-requests${query({ entity: key, open: true })}`, { signal }),
  ]);
  const then = at ? await api(`${base}${query({ at })}`, { signal }).catch((e) => (e.status === 404 ? null : Promise.reject(e))) : null;
  const shown = at ? then : now;
  const operator = who && who.role === "operator";
  const events = history.events;

  // The last event that changed each field, up to the state shown.
  const lastChange = {};
  for (const ev of events) {
    if (at && ev.seq > Number(at)) break;
    for (const c of ev.changes) lastChange[c.name] = ev;
  }
  const pins = Object.fromEntries((now?.pins || []).map((p) => [p.field, p]));
  const declared = Object.keys(schema.kinds[kind]?.fields || {});
  const fields = [...new Set([...declared, ...Object.keys(shown?.fields || {})])];

  const pinButton = (field) =>
    h(
      "button",
      {
        class: "small",
        dataset: { pin: field },
        onclick: async () => {
          const current = shown?.fields[field];
          const got = await ask(`Pin ${key} ${field}`, [
            { name: "value", label: `Value (JSON or text) for ${field}`, value: current === undefined ? "" : typeof current === "string" ? current : JSON.stringify(current) },
            { name: "reason", label: "Reason (shown to every agent refused)", placeholder: "why this field must not change" },
          ]);
          if (!got) return;
          let v = got.value;
          const type = schema.kinds[kind]?.fields[field]?.type;
          if (type && type !== "text") {
            try {
              v = JSON.parse(got.value);
            } catch {
              return notify(`${field} is ${type}: give a JSON value`, "bad");
            }
          }
          operate(`pin ${field}`, `${base}/pin`, { set: { [field]: v }, reason: got.reason }, reload);
        },
      },
      "pin",
    );
  const unpinButton = (field) =>
    h(
      "button",
      {
        class: "small",
        dataset: { unpin: field },
        onclick: async () => {
          const got = await ask(`Unpin ${key} ${field}`, [{ name: "reason", label: "Reason", placeholder: "why the pin ends" }]);
          if (got) operate(`unpin ${field}`, `${base}/unpin`, { fields: [field], reason: got.reason }, reload);
        },
      },
      "unpin",
    );

  const stateRows = fields.map((f) =>
    h(
      "tr",
      { dataset: { field: f } },
      h("th", {}, f),
      h("td", { class: "value" }, shown && f in shown.fields ? value(shown.fields[f]) : h("span", { class: "muted" }, "unset")),
      h("td", {}, writers(schema, kind, f)),
      h("td", {}, lastChange[f] ? [lastChange[f].agent, " at ", h("a", { href: `#/entity/${key}?at=${lastChange[f].seq}` }, `event ${lastChange[f].seq}`)] : "-"),
      h("td", {}, !at && pins[f] ? h("span", { class: "badge pinned", title: pins[f].reason }, `pinned by ${pins[f].by}: ${clip(pins[f].reason, 60)}`) : null),
      operator && !at && now ? h("td", {}, pins[f] ? unpinButton(f) : pinButton(f)) : null,
    ),
  );

  // The slider over the events loaded: each stop is the state after one.
  const index = at ? events.findIndex((e) => e.seq === Number(at)) : events.length - 1;
  const slider =
    events.length > 1
      ? h(
          "div",
          { class: "slider" },
          h("label", { for: "at-slider" }, "State after event "),
          h("input", {
            id: "at-slider",
            type: "range",
            min: 0,
            max: events.length - 1,
            value: index < 0 ? events.length - 1 : index,
            onchange: (ev) => {
              const e = events[Number(ev.target.value)];
              location.hash = `#/entity/${key}${query({ at: e.seq, from: historyAfter || undefined })}`;
            },
          }),
          h("output", {}, index >= 0 ? `${events[index].seq}` : "now"),
        )
      : null;

  const timeline = events.map((ev) =>
    h(
      "tr",
      { class: ev.seq === Number(at) ? "current" : "", dataset: { event: String(ev.seq), agent: ev.agent, kind: ev.kind } },
      h("td", {}, h("a", { href: `#/entity/${key}${query({ at: ev.seq, from: historyAfter || undefined })}`, title: "the state after this event" }, String(ev.seq))),
      h("td", { class: "time" }, time(ev.at_ms)),
      h("td", {}, ev.agent),
      h("td", {}, ev.kind),
      h("td", {}, ev.changes.map((c) => h("div", { class: "change" }, h("b", {}, c.name), `: ${value(c.before)} → ${value(c.after)}`))),
      h("td", {}, ev.reason),
      h("td", {}, traceLink(ev.invocation)),
      operator
        ? h(
            "td",
            {},
            ev.changes.length
              ? h(
                  "button",
                  {
                    class: "small",
                    dataset: { revert: String(ev.seq) },
                    onclick: async () => {
                      const got = await ask(`Revert event ${ev.seq}`, [{ name: "reason", label: "Reason", placeholder: "why it is undone" }]);
                      if (got) operate(`revert ${ev.seq}`, `/v1/events/${ev.seq}/revert`, { reason: got.reason }, reload);
                    },
                  },
                  "revert",
                )
              : null,
          )
        : null,
    ),
  );

  const lease = !at && now?.lease;
  show(
    main,
    h("h1", {}, key, shown ? h("span", { class: "muted" }, ` version ${shown.version}`) : null),
    at
      ? h("p", { class: "banner", id: "at-banner" }, `The state after event ${at}${then ? ` (${time(then.updated_at_ms)}, by ${then.updated_by})` : ""}. `, h("a", { href: `#/entity/${key}` }, "Back to now"))
      : now
        ? h("p", { class: "muted" }, `updated by ${now.updated_by} at ${time(now.updated_at_ms)}`)
        : null,
    shown === null ? h("p", { class: "error" }, at ? `${key} did not exist after event ${at}` : `${key} does not exist`) : null,
    slider,
    section(
      "State",
      table(["field", "value", "may write", "last changed", "pin", operator && !at && now ? "operator" : null].filter(Boolean), stateRows, { id: "state" }),
    ),
    lease
      ? section(
          "Lease",
          h(
            "p",
            { id: "lease" },
            `held by ${lease.holder} until ${time(lease.expires_at_ms)} (fencing token ${lease.token}) `,
            operator
              ? h(
                  "button",
                  {
                    class: "small",
                    onclick: async () => {
                      const got = await ask(`Break the lease on ${key}`, [{ name: "reason", label: "Reason", placeholder: "why the holder loses it" }]);
                      if (got) operate("break lease", `${base}/lease/break`, { reason: got.reason }, reload);
                    },
                  },
                  "break lease",
                )
              : null,
          ),
        )
      : null,
    requests.requests.length
      ? section(
          "Open change requests",
          table(
            ["id", "from", "to (owner)", "proposed", "reason"],
            requests.requests.map((r) =>
              h("tr", {}, h("td", {}, String(r.id)), h("td", {}, r.from), h("td", {}, r.owner), h("td", {}, r.proposed.map(([f, v]) => `${f} = ${value(v)}`).join(", ")), h("td", {}, r.reason)),
            ),
          ),
        )
      : null,
    section(
      "Timeline",
      table(["event", "time", "by", "kind", "changes", "reason", "invocation", operator ? "operator" : null].filter(Boolean), timeline, { id: "timeline" }),
      h(
        "p",
        { class: "pager" },
        historyAfter ? h("a", { href: `#/entity/${key}`, class: "button" }, "First events") : null,
        " ",
        history.next ? h("a", { href: `#/entity/${key}${query({ from: history.next })}`, class: "button" }, "Later events") : null,
      ),
    ),
  );
}
