// The web console in headless Chromium (Debian's, driven by playwright-core)
// against a real `concord serve` holding the Acme demo. Run by
// tests/e2e/console.rs, which starts the server and passes:
//   CONCORD_URL, CONCORD_READ_TOKEN, CONCORD_INVOKE_TOKEN,
//   CONCORD_OPERATOR_TOKEN (named alice), CHROMIUM (the browser binary),
//   CONCORD_SHOTS (where screenshots go; optional).
// Each test asserts what a person would see; the Rust side then checks
// what the console's actions left in the store.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run this through tests/e2e/console.rs (cargo test -p concord-host --test e2e console)`);
  return v;
};
const URL = env("CONCORD_URL");
const READ = env("CONCORD_READ_TOKEN");
const INVOKE = env("CONCORD_INVOKE_TOKEN");
const OPERATOR = env("CONCORD_OPERATOR_TOKEN");
const SHOTS = process.env.CONCORD_SHOTS;
if (SHOTS) mkdirSync(SHOTS, { recursive: true });

let browser;
before(async () => {
  browser = await chromium.launch({
    executablePath: env("CHROMIUM"),
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
});
after(async () => browser?.close());

/** A page of a fresh browser context (its own sessionStorage), signed in with `token` if given. */
async function open(token, viewport = { width: 1280, height: 860 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && !/status of 40[13]/.test(m.text()) && problems.push(`console: ${m.text()}`));
  // Everything the console loads comes from the host itself: no CDN.
  page.on("request", (r) => {
    if (!r.url().startsWith(URL)) problems.push(`request outside the host: ${r.url()}`);
  });
  await page.goto(`${URL}/#/feed`);
  if (token) {
    await page.fill("#token", token);
    await page.click("#signin");
    await page.waitForSelector("#signout:not([hidden])");
  }
  return { page, problems, close: () => context.close() };
}

async function api(path, token, body) {
  const r = await fetch(URL + path, {
    method: body ? "POST" : "GET",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await r.json();
  assert.ok(r.ok, `${path}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

const shot = async (page, name) => SHOTS && page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });

test("without a token, a protected page and an action are refused", async () => {
  const { page, problems, close } = await open(null);
  const error = page.locator("main .error");
  await error.waitFor();
  assert.equal(await error.getAttribute("data-status"), "401");
  assert.match(await error.innerText(), /needs a bearer token/);
  assert.match(await error.innerText(), /Sign in with a token/);
  await page.goto(`${URL}/#/entity/customer/acme`);
  await page.locator("main .error[data-status='401']").waitFor();
  // No operator controls are offered, and the API refuses the action itself.
  assert.equal(await page.locator("[data-pin]").count(), 0);
  const refused = await page.evaluate(async () => {
    const r = await fetch("/v1/entities/customer/acme/pin", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ set: { status: "active" }, reason: "x" }) });
    return r.status;
  });
  assert.equal(refused, 401);
  assert.deepEqual(problems, []);
  await close();
});

test("a read token sees pages but is refused an operator action", async () => {
  const { page, close } = await open(READ);
  assert.match(await page.locator("#who").innerText(), /reader \(read\)/);
  await page.goto(`${URL}/#/entity/customer/acme`);
  await page.locator("#state").waitFor();
  assert.equal(await page.locator("[data-pin]").count(), 0, "no pin buttons for a read token");
  const status = await page.evaluate(async (t) => {
    const r = await fetch("/v1/entities/customer/acme/pin", { method: "POST", headers: { "Content-Type": "application/json", Authorization: `Bearer ${t}` }, body: JSON.stringify({ set: { status: "active" }, reason: "x" }) });
    return [r.status, (await r.json()).error];
  }, READ);
  assert.deepEqual(status, [403, "forbidden"]);
  await close();
});

test("the live feed shows a new invocation within a second", async () => {
  const { page, problems, close } = await open(READ);
  await page.locator("#live-status.on").waitFor();
  await shot(page, "feed");
  const answer = await api("/v1/invoke/product", INVOKE, { kind: "usage_report", entity: "customer/acme", body: { active_users: 431 } });
  const started = Date.now();
  await page.locator(`#feed-rows tr[data-invocation="${answer.invocation}"][data-call="invocation.end"]`).waitFor({ timeout: 1000 });
  assert.ok(Date.now() - started <= 1000);
  // A refusal stands out and names its rule or the other party.
  await page.goto(`${URL}/#/feed?outcome=conflict`);
  const refused = page.locator("#feed-rows tr.refused").first();
  await refused.waitFor();
  assert.match(await refused.locator(".why").innerText(), /\S/);
  assert.deepEqual(problems, []);
  await close();
});

test("the entity page shows support's at_risk change, and the state at event 2", async () => {
  const { page, problems, close } = await open(READ);
  await page.goto(`${URL}/#/entity/customer/acme`);
  const timeline = page.locator("#timeline");
  await timeline.waitFor();
  const change = timeline.locator('tr[data-agent="support"]', { hasText: "status: active → at_risk" });
  assert.equal(await change.count(), 1, "support's status change to at_risk is on the timeline");
  // Each field says who may write it, as the schema has it.
  const schema = await api("/v1/schema", READ);
  const status = schema.kinds.customer.fields.status;
  const writers = status.shared ? `shared: ${status.writers.join(", ")}` : `owner: ${status.writers[0]}`;
  assert.match(await page.locator('#state tr[data-field="status"]').innerText(), new RegExp(writers));
  await shot(page, "entity");
  const then = await api("/v1/entities/customer/acme?at=2", READ);
  await page.goto(`${URL}/#/entity/customer/acme?at=2`);
  await page.locator("#at-banner").waitFor();
  assert.match(await page.locator("#at-banner").innerText(), /after event 2/);
  for (const [field, v] of Object.entries(then.fields)) {
    const cell = page.locator(`#state tr[data-field="${field}"] td.value`);
    const shown = typeof v === "string" ? v : JSON.stringify(v);
    assert.equal(await cell.innerText(), shown, `${field} at event 2`);
  }
  assert.equal(await page.locator('#timeline tr.current').getAttribute("data-event"), "2");
  await shot(page, "entity-at-2");
  // Clicking an event goes to the state after it.
  await page.locator('#timeline tr[data-event="1"] a').first().click();
  await page.waitForFunction(() => location.hash.includes("at=1"));
  await page.locator("#at-banner", { hasText: "after event 1" }).waitFor();
  assert.deepEqual(problems, []);
  await close();
});

test("the conflicts matrix shows sales vs support, and a click reaches the audit entry", async () => {
  const { page, problems, close } = await open(READ);
  await page.goto(`${URL}/#/conflicts`);
  const cell = page.locator('#matrix td[data-agent="sales"][data-peer="support"] button');
  await cell.waitFor();
  assert.ok(Number((await cell.innerText()).split("\n")[0]) >= 1);
  await shot(page, "conflicts");
  await cell.click();
  const link = page.locator("#cell-detail a.seq").first();
  await link.waitFor();
  const seq = await link.innerText();
  await link.click();
  await page.locator("#entry").waitFor();
  assert.match(await page.locator("#entry").innerText(), new RegExp(`Audit entry ${seq} conflict`));
  assert.match(await page.locator("main").innerText(), /sales/);
  assert.deepEqual(problems, []);
  await close();
});

test("the trace of support's escalation shows the sales invocation it caused", async () => {
  const starts = await api("/v1/audit?agent=support&call=invocation.start&after=0&limit=1000", READ);
  const escalation = starts.entries.find((e) => e.args.includes("escalation"));
  assert.ok(escalation, "support's escalation is in the audit");
  const { page, problems, close } = await open(READ);
  await page.goto(`${URL}/#/trace/${escalation.invocation}`);
  const caused = page.locator(`#trace-graph g.node[data-agent="sales"][data-causation="${escalation.invocation}"]`);
  await caused.first().waitFor();
  assert.ok((await caused.count()) >= 1);
  const edge = page.locator(`#trace-graph path.edge[data-from="${escalation.invocation}"]`);
  assert.ok((await edge.count()) >= 1, "an edge from the escalation to what it caused");
  await shot(page, "trace");
  assert.deepEqual(problems, []);
  await close();
});

test("agents and trust pages show digests, refusal rates and the verified chain", async () => {
  const { page, problems, close } = await open(READ);
  await page.goto(`${URL}/#/agents`);
  const sales = page.locator('section.agent[data-agent="sales"]');
  await sales.waitFor();
  assert.match(await sales.innerText(), /[0-9a-f]{64}/);
  assert.match(await sales.locator(".rate").innerText(), /refused/);
  assert.ok((await sales.locator("svg.strip rect").count()) >= 1);
  assert.match(await sales.innerText(), /may reach\s+nothing beyond the knowledge base/);
  await shot(page, "agents");
  await page.goto(`${URL}/#/trust`);
  await page.locator("#verdict").waitFor();
  assert.match(await page.locator("#verdict").innerText(), /^Intact: \d+ entries/);
  await shot(page, "trust");
  assert.deepEqual(problems, []);
  await close();
});

test("an operator pins a field from the console, with a reason", async () => {
  const { page, problems, close } = await open(OPERATOR);
  await page.goto(`${URL}/#/entity/customer/acme`);
  await page.locator('[data-pin="status"]').click();
  await page.locator("dialog[open] input[name=value]").fill("active");
  await page.locator("dialog[open] input[name=reason]").fill("CEO call: keep Acme active this week");
  await page.locator("dialog[open] button[value=ok]").click();
  const pinned = page.locator('#state tr[data-field="status"] .badge.pinned');
  await pinned.waitFor();
  assert.match(await pinned.innerText(), /pinned by alice/);
  assert.ok((await page.locator('[data-unpin="status"]').count()) === 1);
  await shot(page, "entity-pinned");
  // A value holding markup is shown as the text it is, and nothing runs.
  const markup = `<img src=x onerror="window.__ran=1"><script>window.__ran=2</script>`;
  await page.locator('[data-pin="last_interaction"]').click();
  await page.locator("dialog[open] input[name=value]").fill(markup);
  await page.locator("dialog[open] input[name=reason]").fill("markup test");
  await page.locator("dialog[open] button[value=ok]").click();
  await page.locator('#state tr[data-field="last_interaction"] .badge.pinned').waitFor();
  assert.equal(await page.locator('#state tr[data-field="last_interaction"] td.value').innerText(), markup);
  assert.equal(await page.evaluate(() => window.__ran), undefined);
  assert.equal(await page.locator("#state img").count(), 0);
  // A pin without a reason is not sent: the dialog asks for one.
  await page.locator('[data-pin="deal_stage"]').click();
  await page.locator("dialog[open] button[value=ok]").click();
  assert.equal(await page.locator("dialog[open]").count(), 1, "the dialog stays open without a reason");
  await page.locator("dialog[open] button[value=cancel]").click();
  assert.deepEqual(problems, []);
  await close();
});

test("pages stay readable on a narrow window", async () => {
  const { page, problems, close } = await open(READ, { width: 400, height: 800 });
  for (const view of ["feed", "entity/customer/acme", "conflicts", "agents", "trust"]) {
    await page.goto(`${URL}/#/${view}`);
    await page.locator("main h1").waitFor();
    await page.waitForTimeout(300);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 1, `${view} is ${overflow}px wider than a 400px window`);
  }
  await page.goto(`${URL}/#/entity/customer/acme`);
  await page.locator("#state").waitFor();
  await shot(page, "narrow");
  assert.deepEqual(problems, []);
  await close();
});
