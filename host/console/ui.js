// Building pages: elements from data (always as text, never as markup),
// formatting, links between views, the reason dialog, and errors shown
// in the page.

/**
 * An element: `h("a", { href: "#/x", class: "y", onclick: f }, "text", child)`.
 * Strings become text nodes, so a value holding markup stays a string.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** An SVG element (the trace graph, the activity strips). */
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

export const pad = (n) => String(n).padStart(2, "0");

/** A time as the CLI prints it (UTC, to the millisecond). */
export function time(ms) {
  if (!ms) return "-";
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.${String(d.getUTCMilliseconds()).padStart(3, "0")}`;
}

/** A field value: the store's `{type, value}` or a plain JSON value. */
export function value(v) {
  if (v === undefined || v === null) return "∅";
  if (typeof v === "object" && "type" in v && Object.keys(v).every((k) => k === "type" || k === "value")) {
    return value(v.value);
  }
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

/** Text cut to `n` characters, with an ellipsis. */
export const clip = (s, n) => (s && s.length > n ? `${s.slice(0, n)}…` : s || "");

export const entityLink = (key) => h("a", { href: `#/entity/${key}`, class: "entity" }, key);
export const traceLink = (id) => (id ? h("a", { href: `#/trace/${id}`, class: "inv" }, `#${id}`) : "-");
export const auditLink = (seq) => h("a", { href: `#/audit/${seq}`, class: "seq" }, String(seq));

/** A decision as a badge: refusals stand out. */
export const decision = (d) => h("span", { class: `badge ${d === "allowed" ? "ok" : "refused"}` }, d);

/** A page section with a heading. */
export const section = (title, ...body) => h("section", {}, h("h2", {}, title), ...body);

/** A table from a header row and rows of cells. */
export function table(head, rows, attrs = {}) {
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      attrs,
      h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))),
      h("tbody", {}, rows),
    ),
  );
}

/** An error in the page, saying what to do when it is about the token. */
export function failure(e) {
  const hint =
    e.status === 401
      ? "Sign in with a token (top right): ask an operator for one (`concord token add NAME --role read`)."
      : e.status === 403
        ? "Your token's role does not allow this; ask an operator for a token with a higher role."
        : null;
  return h(
    "div",
    { class: "error", role: "alert", dataset: { status: String(e.status ?? 0), code: e.code || "" } },
    h("strong", {}, e.status ? `${e.status} ${e.code}` : e.code || "error"),
    " ",
    e.detail || e.message,
    hint && h("p", {}, hint),
  );
}

/** Replaces a container's content. */
export function show(container, ...children) {
  container.replaceChildren();
  append(container, children);
}

/**
 * Asks for a reason (and other inputs) before an operator action, in the
 * page's dialog. Resolves to the values, or null if cancelled.
 */
export function ask(title, fields) {
  const dialog = document.getElementById("ask");
  const inputs = fields.map((f) =>
    h("input", { name: f.name, value: f.value ?? "", required: f.required !== false, placeholder: f.placeholder || "", autocomplete: "off" }),
  );
  const form = h(
    "form",
    { method: "dialog" },
    h("h2", {}, title),
    fields.map((f, i) => h("label", {}, f.label, inputs[i])),
    h(
      "div",
      { class: "buttons" },
      h("button", { value: "cancel", formnovalidate: true, type: "submit" }, "Cancel"),
      h("button", { value: "ok", class: "primary", type: "submit" }, "Confirm"),
    ),
  );
  show(dialog, form);
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        if (dialog.returnValue !== "ok") return resolve(null);
        resolve(Object.fromEntries(fields.map((f, i) => [f.name, inputs[i].value])));
      },
      { once: true },
    );
    dialog.returnValue = "";
    dialog.showModal();
    inputs[0]?.focus();
  });
}

/** A short-lived message at the top of the page. */
export function notify(text, kind = "info") {
  const n = document.getElementById("notice");
  show(n, h("span", { class: kind }, text));
  n.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => (n.hidden = true), 8000);
}
