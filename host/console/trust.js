// Trust (#/trust): the audit chain recomputed now (`concord audit
// verify`), the latest checkpoint handed out to be signed and the latest
// signing key, and a check of a signed checkpoint against the chain.

import { api, query } from "./api.js";
import { auditLink, failure, h, section, show, time } from "./ui.js";

function verdict(v) {
  return v.intact
    ? h("p", { class: "verdict ok", id: "verdict" }, `Intact: ${v.entries} entries, head `, h("code", {}, v.head))
    : h("p", { class: "verdict bad", id: "verdict" }, `Broken at entry ${v.broken_at}: ${v.problem}`);
}

export async function render(main, _params, { signal }) {
  const [verify, checkpoints, keys] = await Promise.all([
    api("/v1/audit/verify", { signal }),
    api(`/v1/audit${query({ call: "audit.checkpoint", limit: 1 })}`, { signal }),
    api(`/v1/audit${query({ call: "audit.key", limit: 1 })}`, { signal }),
  ]);
  const latest = checkpoints.entries.at(-1);
  const key = keys.entries.at(-1);
  let args = {};
  try {
    args = latest ? JSON.parse(latest.args) : {};
  } catch {
    // shown without its details
  }
  const result = h("div", { id: "checkpoint-result" });
  const text = h("textarea", { rows: 6, placeholder: '{"seq": …, "head": "…", "at_ms": …, "public_key": "…", "signature": "…"}', "aria-label": "signed checkpoint" });
  const pub = h("input", { placeholder: "the public key it must be signed by (hex; optional)", "aria-label": "public key" });
  const form = h(
    "form",
    {
      class: "stack",
      onsubmit: async (ev) => {
        ev.preventDefault();
        let checkpoint;
        try {
          checkpoint = JSON.parse(text.value);
        } catch (e) {
          return show(result, h("p", { class: "error" }, `not JSON: ${e.message}; paste the file \`concord audit checkpoint\` wrote`));
        }
        try {
          const v = await api("/v1/audit/verify", { method: "POST", body: { checkpoint, public_key: pub.value.trim() || undefined } });
          show(result, verdict(v));
        } catch (e) {
          show(result, failure(e));
        }
      },
    },
    text,
    pub,
    h("button", { type: "submit" }, "Verify against the chain"),
  );
  show(
    main,
    h("h1", {}, "Trust"),
    section("The audit chain, recomputed now", verdict(verify)),
    section(
      "Latest checkpoint",
      latest
        ? h(
            "p",
            { id: "checkpoint" },
            `Entry ${args.seq ?? "?"} (head `,
            h("code", {}, args.head ?? "?"),
            `) handed to ${latest.agent} at ${time(latest.at_ms)} to sign with key `,
            h("code", {}, args.public_key ?? "?"),
            "; recorded as audit entry ",
            auditLink(latest.seq),
            ".",
          )
        : h("p", { id: "checkpoint" }, "No checkpoint yet: `concord audit checkpoint --key FILE` makes and signs one."),
      key ? h("p", {}, `Latest signing key recorded by ${key.agent} at ${time(key.at_ms)} (entry `, auditLink(key.seq), ").") : null,
    ),
    section("Check a signed checkpoint", h("p", { class: "muted" }, "It proves the log still extends what was signed: nothing before it was changed or cut."), form, result),
  );
}
