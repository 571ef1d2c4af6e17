// The console's shell: the sign-in box and the router. Each view is
// `#/NAME/...?params`; a view gets an AbortSignal that ends its requests
// and streams when the person moves on.

import * as agents from "./agents.js";
import { ApiError, token, whoami } from "./api.js";
import * as conflicts from "./conflicts.js";
import * as entity from "./entity.js";
import * as feed from "./feed.js";
import * as trace from "./trace.js";
import * as trust from "./trust.js";
import { failure, h, show } from "./ui.js";

let who = null;
let current = null;

async function signIn() {
  const label = document.getElementById("who");
  const out = document.getElementById("signout");
  const input = document.getElementById("token");
  try {
    who = await whoami();
  } catch (e) {
    who = null;
    show(label, e.detail || e.message);
    return;
  }
  if (who?.open) {
    show(label, "open server (loopback): you act as an operator");
  } else if (who) {
    show(label, `${who.name} (${who.role})`);
  } else {
    show(label, token.get() ? "token refused" : "not signed in");
  }
  const signedIn = Boolean(who) && !who.open;
  input.hidden = signedIn || Boolean(who?.open);
  document.getElementById("signin").hidden = input.hidden;
  out.hidden = !signedIn;
  document.body.dataset.role = who ? who.role : "none";
}

function route() {
  const hash = location.hash.replace(/^#\/?/, "") || "feed";
  const [path, q = ""] = hash.split("?");
  const params = new URLSearchParams(q);
  const parts = path.split("/").map(decodeURIComponent);
  current?.abort();
  current = new AbortController();
  const ctx = { signal: current.signal, who, reload: route };
  const main = document.getElementById("view");
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === parts[0] || (a.dataset.view === "entities" && parts[0] === "entity"));
  show(main, h("p", { class: "muted" }, "loading…"));
  let done;
  switch (parts[0]) {
    case "feed":
      done = feed.render(main, params, ctx);
      break;
    case "audit":
      done = feed.renderEntry(main, Number(parts[1]), ctx);
      break;
    case "entities":
      done = entity.renderList(main, params, ctx);
      break;
    case "entity":
      done = entity.render(main, parts.slice(1).join("/"), params, ctx);
      break;
    case "conflicts":
      done = conflicts.render(main, params, ctx);
      break;
    case "trace":
      done = trace.render(main, Number(parts[1]), ctx);
      break;
    case "agents":
      done = agents.render(main, params, ctx);
      break;
    case "trust":
      done = trust.render(main, params, ctx);
      break;
    default:
      show(main, h("p", { class: "error" }, `no such page: ${location.hash}`));
      return;
  }
  const signal = current.signal;
  done.catch((e) => {
    if (signal.aborted || e.name === "AbortError") return;
    show(main, failure(e instanceof ApiError ? e : new ApiError(0, { error: "console_error", detail: e.message })));
  });
}

document.getElementById("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token");
  if (input.value.trim()) token.set(input.value);
  input.value = "";
  await signIn();
  route();
});
document.getElementById("signout").addEventListener("click", async () => {
  token.clear();
  await signIn();
  route();
});
window.addEventListener("hashchange", route);
signIn().then(route);
