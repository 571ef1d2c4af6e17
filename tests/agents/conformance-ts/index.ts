// The conformance agent in TypeScript: every behaviour of
// tests/conformance/SPEC.md, one message kind each, answering `ok` with the
// JSON report the spec gives. Loaded as `support` and as `sales`.
//
// Built with `node agents/sdk-js/build.mjs tests/agents/conformance-ts/index.ts target/agents/conformance-ts.wasm`.
import {
  type EntityRef,
  type Level,
  type Message,
  Refused,
  Write,
  act,
  changesSinceRead,
  commit,
  defineHandler,
  describe,
  fail,
  get,
  int,
  lease,
  log,
  recent,
  refString,
  release,
  requestChange,
  resolveChange,
  stringify,
  text,
} from 'concord-agent';

/** Reads the entity; the test has created it. */
function read(target: EntityRef) {
  return get(target) ?? fail(`${refString(target)} does not exist`);
}

/** Runs `attempt`, which the spec says the host must refuse; returns the refusal, or undefined if it was not refused. */
function refusal(attempt: () => unknown): Refused | undefined {
  try {
    attempt();
    return undefined;
  } catch (e) {
    if (e instanceof Refused) return e;
    throw e;
  }
}

function commitRetry(target: EntityRef): object {
  const stale = read(target);
  const bumped = (stale.integer('open_tickets') ?? 0n) + 1n;
  const refused = refusal(() =>
    commit([Write.at(target, stale.version - 1n).set('open_tickets', int(bumped))], 'conformance: a stale write'),
  );
  const conflict = refused?.conflict;
  if (conflict === undefined) {
    fail(`commit_retry: the stale commit was not refused with a conflict: ${refused ? describe(refused) : 'it committed'}`);
  }
  const fresh = read(target);
  const tickets = (fresh.integer('open_tickets') ?? 0n) + 1n;
  const [version] = commit([Write.update(fresh).set('open_tickets', int(tickets))], 'conformance: the retry');
  return {
    conflict: {
      current_version: conflict.currentVersion ?? null,
      changed_by: conflict.changedBy,
      changed_fields: conflict.changedFields,
      events: conflict.eventsSince.length,
    },
    version,
    open_tickets: tickets,
  };
}

function forbidden(target: EntityRef): object {
  const current = read(target);
  const refused = refusal(() => commit([Write.update(current).set('deal_stage', text('won'))], 'conformance: not mine'));
  const f = refused?.forbidden;
  if (f === undefined) {
    fail(`forbidden: the write of deal_stage was not refused as forbidden: ${refused ? describe(refused) : 'it committed'}`);
  }
  return { field: f.field, agent: f.agent, writers: f.writers };
}

function actStale(target: EntityRef): object {
  const current = read(target);
  const action = act('ticket.notify', '{"n":1}', target, current.version);
  let recorded: bigint;
  try {
    recorded = act('ticket.notify', '{"n":1}', target, current.version - 1n, 'stale');
  } catch (e) {
    if (e instanceof Refused) return { action, stale: e.kind };
    throw e;
  }
  fail(`an act based on a stale version was recorded as ${recorded}`);
}

function handoff(target: EntityRef): object {
  const request = requestChange('sales', target, { deal_stage: text('expansion_candidate') }, 'conformance');
  return { request };
}

function changeRequest(target: EntityRef, message: Message): object {
  const body = message.bodyJson();
  const request = body.request;
  if (typeof request !== 'number' || !Number.isSafeInteger(request)) fail('change_request: the body has no request id');
  const proposed = body.proposed;
  if (proposed === null || typeof proposed !== 'object' || Array.isArray(proposed)) {
    fail('change_request: the body has no proposed fields');
  }
  const current = read(target);
  const w = Write.update(current);
  for (const [name, value] of Object.entries(proposed)) {
    if (typeof value !== 'string') fail('change_request: a proposed value that is not text');
    w.set(name, text(value));
  }
  const [version] = commit([w], `conformance: applying change request ${request}`);
  resolveChange(request, true, 'applied');
  return { applied: request, version };
}

function fencedLease(target: EntityRef): object {
  const { token } = lease(target, 5000);
  const leased = read(target);
  const [fencedVersion] = commit(
    [Write.update(leased).set('last_interaction', text('leased')).fenced(token)],
    'conformance: under a lease',
  );
  const released = release(target, token);
  const after = read(target);
  const late = refusal(() =>
    commit([Write.update(after).set('last_interaction', text('late')).fenced(token)], 'conformance: a released fence'),
  );
  if (late?.kind !== 'stale-fence') {
    fail(`lease: the late fenced commit was not refused as a stale fence: ${late ? describe(late) : 'it committed'}`);
  }
  return { token, fenced_version: fencedVersion, released, late: late.kind };
}

function awareness(target: EntityRef): object {
  read(target);
  const sinceRead = changesSinceRead(target).length;
  const events = recent(target, 3_600_000);
  return { since_read: sinceRead, recent: events.length, recent_agents: events.map((e) => e.agent) };
}

const LEVELS: Level[] = ['trace', 'debug', 'info', 'warn', 'error'];

function logged(): object {
  for (const level of LEVELS) log(level, `conformance ${level}`);
  return { logged: LEVELS.length };
}

// For the benchmarks (BENCHMARKS.md, per language).

function reads(target: EntityRef, message: Message): object {
  const n = message.bodyJson().n;
  const count = typeof n === 'number' && Number.isSafeInteger(n) && n >= 0 ? n : 1;
  for (let i = 0; i < count; i++) get(target);
  return { reads: count };
}

function bump(target: EntityRef): object {
  const current = read(target);
  const [version] = commit(
    [Write.update(current).set('open_tickets', int((current.integer('open_tickets') ?? 0n) + 1n))],
    'conformance: bump',
  );
  return { version };
}

const behaviours: Record<string, (target: EntityRef, message: Message) => object> = {
  commit_retry: commitRetry,
  forbidden,
  act: actStale,
  request_change: handoff,
  change_request: changeRequest,
  lease: fencedLease,
  awareness,
  log: logged,
  reads,
  bump,
  trap: () => {
    // A bug, as TypeScript fails on one: an uncaught Error.
    throw new Error('conformance trap');
  },
};

export const handler = defineHandler((message) => {
  // No host call at all: the cost of an invocation.
  if (message.kind === 'ping') return stringify({ pong: true });
  const target = message.entity ?? fail('conformance needs an entity');
  const behaviour = Object.hasOwn(behaviours, message.kind) ? behaviours[message.kind] : undefined;
  if (behaviour === undefined) fail(`conformance does not handle ${message.kind}`);
  return stringify(behaviour(target, message));
});
