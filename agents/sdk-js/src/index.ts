/// <reference path="../generated/agent.d.ts" />
/// <reference path="./globals.d.ts" />
/**
 * Write Concord agents in TypeScript.
 *
 * The declarations of the host calls are generated from `wit/` (the single
 * source of truth) by jco into `generated/`; componentize-js provides the
 * calls themselves at run time, as the modules `concord:agent/*@0.1.0`. This
 * module adds helpers that mirror the Rust SDK (`agents/sdk`), so that an
 * agent reads like its decisions:
 *
 * ```ts
 * import { defineHandler, get, commit, Write, info } from 'concord-agent';
 *
 * export const handler = defineHandler((message) => {
 *   info(`got ${message.kind}`);
 *   return 'said hello';
 * });
 * ```
 *
 * Conventions (componentize-js maps WIT types so): `u64`/`s64` are `bigint`
 * (versions, tokens, ids, integer field values), `option<T>` is
 * `T | undefined`, and a call whose result is `err` throws. The wrappers
 * here throw typed errors instead: {@link Refused} (a `write-error`),
 * {@link HostError} (a host call's error text) and {@link ModelError}.
 */
import * as kbHost from 'concord:agent/kb@0.1.0';
import * as coordHost from 'concord:agent/coord@0.1.0';
import * as logHost from 'concord:agent/log@0.1.0';
import * as modelHost from 'concord:agent/model@0.1.0';
import type * as T from 'concord:agent/types@0.1.0';

export type EntityRef = T.EntityRef;
export type Value = T.Value;
export type Field = T.Field;
export type FieldChange = T.FieldChange;
export type Event = T.Event;
export type Expect = T.Expect;
export type WriteError = T.WriteError;
export type Conflict = T.Conflict;
export type Forbidden = T.Forbidden;
export type Deferral = T.Deferral;
export type Pinned = T.Pinned;
export type Leased = T.Leased;
export type StaleFence = T.StaleFence;
export type LeaseGrant = T.LeaseGrant;
export type WitEntity = T.Entity;
export type WitWrite = T.Write;
export type WitMessage = T.Message;
export type Level = logHost.Level;

/** A `u64` or `s64` argument: a `bigint`, or a safe integer `number`. */
export type Int = bigint | number;

function big(n: Int, what: string): bigint {
  if (typeof n === 'bigint') return n;
  if (!Number.isSafeInteger(n)) throw new TypeError(`${what} must be an integer, not ${n}`);
  return BigInt(n);
}

// ---------------------------------------------------------------------------
// Entities

/** `entity("customer/acme")` or `entity("customer", "acme")`. */
export function entity(kindOrRef: string, id?: string): EntityRef {
  if (id !== undefined) return { kind: kindOrRef, id };
  const slash = kindOrRef.indexOf('/');
  if (slash <= 0 || slash === kindOrRef.length - 1) {
    throw new TypeError(`\`${kindOrRef}\` does not name an entity: expected kind/id, such as customer/acme`);
  }
  return { kind: kindOrRef.slice(0, slash), id: kindOrRef.slice(slash + 1) };
}

/** `kind/id`, as the Rust SDK displays an entity reference. */
export function refString(ref: EntityRef): string {
  return `${ref.kind}/${ref.id}`;
}

/** The state of an entity as read from the knowledge base, with field readers. */
export class Entity implements T.Entity {
  kind: string;
  id: string;
  version: bigint;
  fields: Field[];
  updatedAtMs: bigint;
  updatedBy: string;

  constructor(e: T.Entity) {
    this.kind = e.kind;
    this.id = e.id;
    this.version = e.version;
    this.fields = e.fields;
    this.updatedAtMs = e.updatedAtMs;
    this.updatedBy = e.updatedBy;
  }

  /** Its reference (`kind` and `id`). */
  get ref(): EntityRef {
    return { kind: this.kind, id: this.id };
  }

  toString(): string {
    return refString(this);
  }

  /** The field's value, or `undefined` if the entity has no such field. */
  field(name: string): Value | undefined {
    return this.fields.find((f) => f.name === name)?.value;
  }

  /** The field if it is text. */
  text(name: string): string | undefined {
    const v = this.field(name);
    return v?.tag === 'text' ? v.val : undefined;
  }

  /** The field if it is an integer (a `bigint`). */
  integer(name: string): bigint | undefined {
    const v = this.field(name);
    return v?.tag === 'integer' ? v.val : undefined;
  }

  /** The field if it is a float. */
  float(name: string): number | undefined {
    const v = this.field(name);
    return v?.tag === 'float' ? v.val : undefined;
  }

  /** The field if it is a boolean. */
  boolean(name: string): boolean | undefined {
    const v = this.field(name);
    return v?.tag === 'boolean' ? v.val : undefined;
  }

  /** The field if it is a JSON document, parsed. */
  json(name: string): unknown {
    const v = this.field(name);
    return v?.tag === 'json' ? JSON.parse(v.val) : undefined;
  }
}

// ---------------------------------------------------------------------------
// Values

/** An integer value: `int(3)` or `int(3n)`. Fractions are refused. */
export function int(n: Int): Value {
  return { tag: 'integer', val: big(n, 'int()') };
}

/** A float value: `float(0.5)`; the host refuses NaN and infinities. */
export function float(x: number): Value {
  return { tag: 'float', val: x };
}

export function text(s: string): Value {
  return { tag: 'text', val: s };
}

export function bool(b: boolean): Value {
  return { tag: 'boolean', val: b };
}

/** A JSON value: `json({ active_users: 5 })` serialises the document. */
export function json(doc: unknown): Value {
  return { tag: 'json', val: stringify(doc) };
}

/** A JSON value from text that already is JSON. */
export function jsonText(s: string): Value {
  return { tag: 'json', val: s };
}

export const NULL: Value = { tag: 'null' };

/**
 * What `set` takes: a {@link Value}, or a JS value whose variant is not in
 * doubt: a string is text, a boolean is boolean, a bigint is an integer,
 * `null` is null. A `number` is not taken: say `int(n)` or `float(x)`.
 */
export type ValueLike = Value | string | boolean | bigint | null;

const VALUE_TAGS = new Set(['null', 'boolean', 'integer', 'float', 'text', 'json']);

/** A {@link ValueLike} as a {@link Value}. */
export function toValue(v: ValueLike): Value {
  if (v === null) return NULL;
  switch (typeof v) {
    case 'string':
      return text(v);
    case 'boolean':
      return bool(v);
    case 'bigint':
      return { tag: 'integer', val: v };
    case 'object':
      if (typeof v.tag === 'string' && VALUE_TAGS.has(v.tag)) return v;
      break;
    case 'number':
      throw new TypeError(`a number is ambiguous as a field value: say int(${v}) or float(${v})`);
  }
  throw new TypeError(`not a field value: ${String(v)} (use json(...) for a document)`);
}

/**
 * A parsed JSON value as a field value, as the Rust `value_of_json`:
 * strings, integers, other numbers, booleans and null map to the matching
 * variant; arrays and objects to `json`. (JSON `1.0` parses to the number 1,
 * an integer here; Rust would say float.)
 */
export function valueOfJson(j: unknown): Value {
  if (j === null || j === undefined) return NULL;
  switch (typeof j) {
    case 'boolean':
      return bool(j);
    case 'number':
      return Number.isSafeInteger(j) ? { tag: 'integer', val: BigInt(j) } : float(j);
    case 'bigint':
      return { tag: 'integer', val: j };
    case 'string':
      return text(j);
    default:
      return json(j);
  }
}

/** A value as text, as the Rust SDK displays it. */
export function valueString(v: Value): string {
  switch (v.tag) {
    case 'null':
      return 'null';
    case 'boolean':
    case 'integer':
    case 'float':
      return String(v.val);
    case 'text':
    case 'json':
      return v.val;
  }
}

/**
 * `JSON.stringify` that writes bigints (versions, ids, integer fields) as
 * numbers: `stringify({ version: 3n })` is `{"version":3}`.
 */
export function stringify(doc: unknown, space?: number): string {
  return JSON.stringify(doc, (_k, v) => (typeof v === 'bigint' ? Number(v) : v), space);
}

// ---------------------------------------------------------------------------
// Writes

/** One write of a commit; build it with `Write.create` or `Write.update`. */
export class Write {
  entity: EntityRef;
  expect: Expect;
  setFields: Field[] = [];
  unsetFields: string[] = [];
  fence: bigint | undefined = undefined;

  private constructor(entity: EntityRef, expect: Expect) {
    this.entity = entity;
    this.expect = expect;
  }

  /** A write that creates `ref`; it fails with a conflict if it exists. */
  static create(ref: EntityRef | string): Write {
    return new Write(typeof ref === 'string' ? entity(ref) : { kind: ref.kind, id: ref.id }, { tag: 'absent' });
  }

  /** A write based on what was read: a conflict if the entity changed since. */
  static update(read: { kind: string; id: string; version: bigint }): Write {
    return new Write({ kind: read.kind, id: read.id }, { tag: 'version', val: read.version });
  }

  /** A write expecting exactly `version` (`Write.update` is usually what you want). */
  static at(ref: EntityRef | string, version: Int): Write {
    const r = typeof ref === 'string' ? entity(ref) : ref;
    return new Write({ kind: r.kind, id: r.id }, { tag: 'version', val: big(version, 'version') });
  }

  set(name: string, value: ValueLike): this {
    this.setFields.push({ name, value: toValue(value) });
    return this;
  }

  unset(name: string): this {
    this.unsetFields.push(name);
    return this;
  }

  /** Carries a lease's fencing token. */
  fenced(token: Int): this {
    this.fence = big(token, 'fence');
    return this;
  }

  /** The write as the host takes it. */
  toWit(): WitWrite {
    return { entity: this.entity, expect: this.expect, set: this.setFields, unset: this.unsetFields, fence: this.fence };
  }
}

// ---------------------------------------------------------------------------
// Errors

/**
 * A refused commit, action, handoff or lease: `error` is the host's typed
 * refusal, and the getters give each kind (`undefined` unless it is that
 * kind). The message is `describe(error)`.
 */
export class Refused extends Error {
  readonly error: WriteError;

  constructor(error: WriteError) {
    super(describe(error));
    this.name = 'Refused';
    this.error = error;
  }

  /** `conflict`, `forbidden`, `deferred`, `denied`, `pinned`, `leased`, `stale-fence` or `invalid`. */
  get kind(): WriteError['tag'] {
    return this.error.tag;
  }
  get conflict(): Conflict | undefined {
    return this.error.tag === 'conflict' ? this.error.val : undefined;
  }
  get forbidden(): Forbidden | undefined {
    return this.error.tag === 'forbidden' ? this.error.val : undefined;
  }
  get deferred(): Deferral | undefined {
    return this.error.tag === 'deferred' ? this.error.val : undefined;
  }
  get denied(): Deferral | undefined {
    return this.error.tag === 'denied' ? this.error.val : undefined;
  }
  get pinned(): Pinned | undefined {
    return this.error.tag === 'pinned' ? this.error.val : undefined;
  }
  get leased(): Leased | undefined {
    return this.error.tag === 'leased' ? this.error.val : undefined;
  }
  get staleFence(): StaleFence | undefined {
    return this.error.tag === 'stale-fence' ? this.error.val : undefined;
  }
  get invalid(): string | undefined {
    return this.error.tag === 'invalid' ? this.error.val : undefined;
  }
}

/** A host call that answered with an error text (`kb.get`, `history`, ...). */
export class HostError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HostError';
  }
}

/**
 * The handler's own failure: `fail("no such customer")` ends the invocation
 * with exactly this text as its `err` (as `Err(...)` in Rust), no stack.
 */
export class Failure extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'Failure';
  }
}

export function fail(message: string): never {
  throw new Failure(message);
}

/** The payload of an import's `err`: componentize-js throws it inside an Error's `payload`. */
function payloadOf(e: unknown): { found: true; payload: unknown } | { found: false } {
  if (e !== null && typeof e === 'object' && Object.prototype.hasOwnProperty.call(e, 'payload')) {
    return { found: true, payload: (e as { payload: unknown }).payload };
  }
  return { found: false };
}

function refusing<R>(call: () => R): R {
  try {
    return call();
  } catch (e) {
    const p = payloadOf(e);
    if (p.found) throw new Refused(p.payload as WriteError);
    throw e;
  }
}

function hostText<R>(call: () => R): R {
  try {
    return call();
  } catch (e) {
    const p = payloadOf(e);
    if (p.found) throw new HostError(String(p.payload));
    throw e;
  }
}

/** Explains a refusal in one sentence (the same texts as the Rust `describe`). */
export function describe(error: WriteError | Refused): string {
  const e = error instanceof Refused ? error.error : error;
  switch (e.tag) {
    case 'conflict': {
      const c = e.val;
      const now = c.currentVersion === undefined ? 'does not exist' : `is at version ${c.currentVersion}`;
      const fields = c.changedFields.length === 0 ? '' : ` (${c.changedFields.join(', ')})`;
      return `conflict: ${refString(c.entity)} ${now}; last changed by ${c.changedBy}${fields}`;
    }
    case 'forbidden': {
      const f = e.val;
      if (f.field === '*') {
        return (
          `forbidden: ${f.agent} may not lease ${refString(f.entity)}: it writes none of its fields; ` +
          `those who may lease it: ${f.writers.join(', ')} (more are granted in \`[kinds.${f.entity.kind}] leases\`)`
        );
      }
      if (f.field.startsWith('action:')) {
        const who =
          f.writers.length === 0
            ? 'the kind is not declared under [actions.kinds] in concord.toml'
            : `who may: ${f.writers.join(', ')}`;
        return `forbidden: ${f.agent} may not request action \`${f.field.slice('action:'.length)}\` on ${refString(f.entity)}; ${who}`;
      }
      return `forbidden: ${f.agent} may not write ${refString(f.entity)}.${f.field}; it belongs to ${f.writers.join(', ')}`;
    }
    case 'deferred':
      return `deferred by rule \`${e.val.rule}\` on ${refString(e.val.entity)}: ${e.val.reason}`;
    case 'denied':
      return `denied by rule \`${e.val.rule}\` on ${refString(e.val.entity)}: ${e.val.reason}`;
    case 'pinned':
      return `pinned: ${refString(e.val.entity)}.${e.val.field} is pinned by ${e.val.by}: ${e.val.reason}`;
    case 'leased':
      return `leased: ${refString(e.val.entity)} is leased by ${e.val.holder} until ${e.val.expiresAtMs} ms`;
    case 'stale-fence': {
      const f = e.val;
      return f.current === undefined
        ? `stale fence: token ${f.token} for ${refString(f.entity)} has expired, or was released or broken`
        : `stale fence: token ${f.token} for ${refString(f.entity)} is superseded by ${f.current}`;
    }
    case 'invalid':
      return `invalid: ${e.val}`;
  }
}

// ---------------------------------------------------------------------------
// The knowledge base

function refOf(ref: EntityRef | string): EntityRef {
  return typeof ref === 'string' ? entity(ref) : { kind: ref.kind, id: ref.id };
}

/** The entity's current state, or `undefined` if it does not exist. Throws {@link HostError}. */
export function get(ref: EntityRef | string): Entity | undefined {
  const e = hostText(() => kbHost.get(refOf(ref)));
  return e === undefined ? undefined : new Entity(e);
}

/**
 * Applies all writes atomically, or none. Returns the new version of each
 * written entity, in order; throws {@link Refused} if the host refuses.
 */
export function commit(writes: Write | Write[], reason: string): bigint[] {
  const list = Array.isArray(writes) ? writes : [writes];
  return Array.from(refusing(() => kbHost.commit(list.map((w) => w.toWit()), reason)));
}

/** Events of the entity with `seq > afterSeq`, oldest first, at most `limit`. */
export function history(ref: EntityRef | string, afterSeq: Int = 0n, limit = 1000): Event[] {
  return hostText(() => kbHost.history(refOf(ref), big(afterSeq, 'afterSeq'), limit));
}

/** Events of the entity in the last `withinMs` milliseconds, oldest first. */
export function recent(ref: EntityRef | string, withinMs: Int): Event[] {
  return hostText(() => kbHost.recent(refOf(ref), big(withinMs, 'withinMs')));
}

const U64_MAX = 18446744073709551615n;

/** Who last changed `field` of the entity, from its history: "who was here?" */
export function whoSet(ref: EntityRef | string, field: string): string | undefined {
  let events: Event[];
  try {
    events = recent(ref, U64_MAX);
  } catch {
    return undefined;
  }
  for (let i = events.length - 1; i >= 0; i--) {
    if (events[i].changes.some((c) => c.name === field)) return events[i].agent;
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// Coordination

/** Fields to propose: `{ deal_stage: "won" }` or a list of {@link Field}s. */
export type Proposed = Record<string, ValueLike> | Field[];

function fieldsOf(p: Proposed): Field[] {
  if (Array.isArray(p)) return p;
  return Object.entries(p).map(([name, v]) => ({ name, value: toValue(v) }));
}

/**
 * Asks the host for a side effect, based on version `basedOn` of `ref`.
 * Returns the action id; throws {@link Refused}. A payload that is not a
 * string is serialised as JSON.
 */
export function act(
  kind: string,
  payload: string | object,
  ref: EntityRef | string,
  basedOn: Int,
  idempotencyKey?: string,
): bigint {
  const body = typeof payload === 'string' ? payload : stringify(payload);
  return refusing(() => coordHost.act(kind, body, refOf(ref), big(basedOn, 'basedOn'), idempotencyKey));
}

/** Asks `owner` to change fields it owns. Returns the request id; throws {@link Refused}. */
export function requestChange(owner: string, ref: EntityRef | string, proposed: Proposed, reason: string): bigint {
  return refusing(() => coordHost.requestChange(owner, refOf(ref), fieldsOf(proposed), reason));
}

/** The owner's answer to a change request. Throws {@link HostError}. */
export function resolveChange(request: Int, applied: boolean, reason: string): void {
  hostText(() => coordHost.resolveChange(big(request, 'request'), applied, reason));
}

/** Takes a lease for `ttlMs`; throws {@link Refused}. */
export function lease(ref: EntityRef | string, ttlMs: Int): LeaseGrant {
  return refusing(() => coordHost.lease(refOf(ref), big(ttlMs, 'ttlMs')));
}

/** Extends the live lease held with `token`; throws {@link Refused}. */
export function renew(ref: EntityRef | string, token: Int, ttlMs: Int): LeaseGrant {
  return refusing(() => coordHost.renew(refOf(ref), big(token, 'token'), big(ttlMs, 'ttlMs')));
}

/** Releases a lease; false if `token` is not the live lease's. */
export function release(ref: EntityRef | string, token: Int): boolean {
  return coordHost.release(refOf(ref), big(token, 'token'));
}

/** The entity's events since this agent last read it. Throws {@link HostError}. */
export function changesSinceRead(ref: EntityRef | string): Event[] {
  return hostText(() => coordHost.changesSinceRead(refOf(ref)));
}

// ---------------------------------------------------------------------------
// Logging

export function log(level: Level, message: string): void {
  logHost.log(level, message);
}
export const trace = (message: string): void => logHost.log('trace', message);
export const debug = (message: string): void => logHost.log('debug', message);
export const info = (message: string): void => logHost.log('info', message);
export const warn = (message: string): void => logHost.log('warn', message);
export const error = (message: string): void => logHost.log('error', message);

// ---------------------------------------------------------------------------
// Language models

export type ChatMessage = modelHost.ChatMessage;
export type ModelRequest = modelHost.Request;
export type Completion = modelHost.Completion;
export type WitModelError = modelHost.ModelError;

/** A refused or failed model call; `error` is the host's variant, the message `model.describe(error)`. */
export class ModelError extends Error {
  readonly error: WitModelError;
  constructor(error: WitModelError) {
    super(describeModelError(error));
    this.name = 'ModelError';
    this.error = error;
  }
  /** `refused`, `unavailable` or `invalid`. */
  get kind(): WitModelError['tag'] {
    return this.error.tag;
  }
}

function describeModelError(e: WitModelError | ModelError): string {
  const m = e instanceof ModelError ? e.error : e;
  switch (m.tag) {
    case 'refused':
      return `refused by the host: ${m.val}`;
    case 'unavailable':
      return `model unavailable: ${m.val}`;
    case 'invalid':
      return `invalid answer: ${m.val}`;
  }
}

/** Language models through the host (`model.complete`), as the Rust `concord_agent::model`. */
export const model = {
  /** What went wrong, in words. */
  describe: describeModelError,
  /** A message with this role and content. */
  message(role: string, content: string): ChatMessage {
    return { role, content };
  },
  /** The models this agent may call. */
  granted(): string[] {
    return modelHost.granted();
  },
  /** Whether this agent may call the model `name`. */
  isGranted(name: string): boolean {
    return modelHost.granted().includes(name);
  },
  /** One completion; throws {@link ModelError}. */
  complete(request: ModelRequest): Completion {
    try {
      return modelHost.complete(request);
    } catch (e) {
      const p = payloadOf(e);
      if (p.found) throw new ModelError(p.payload as WitModelError);
      throw e;
    }
  },
  /**
   * Asks the `default` model, with a system prompt and one user message, at
   * temperature 0; returns the answer's text. Throws {@link ModelError}.
   */
  ask(system: string, user: string): string {
    return model.complete({
      model: undefined,
      messages: [model.message('system', system), model.message('user', user)],
      temperature: 0,
      maxTokens: undefined,
    }).content;
  },
};

// ---------------------------------------------------------------------------
// The handler

/** What an agent is invoked with, with the body's JSON at hand. */
export class Message implements T.Message {
  kind: string;
  entity: EntityRef | undefined;
  body: string;
  invocation: bigint;
  causation: bigint | undefined;

  constructor(m: T.Message) {
    this.kind = m.kind;
    this.entity = m.entity;
    this.body = m.body;
    this.invocation = m.invocation;
    this.causation = m.causation;
  }

  /** The body as JSON (`{}` if it does not parse; the host checks it does). */
  bodyJson(): Record<string, unknown> {
    try {
      const j: unknown = JSON.parse(this.body);
      return j !== null && typeof j === 'object' && !Array.isArray(j) ? (j as Record<string, unknown>) : {};
    } catch {
      return {};
    }
  }

  /** A field of the body (`null` when absent, as in Rust). */
  bodyField(name: string): unknown {
    const v = this.bodyJson()[name];
    return v === undefined ? null : v;
  }
}

/** A `result<string, string>` as componentize-js takes it from an export. */
export type HandleResult = { tag: 'ok'; val: string } | { tag: 'err'; val: string };

/** How many lines of a stack the err text of an uncaught throw keeps. */
const STACK_LINES = 6;

/**
 * The err text for something thrown out of a handler. The SDK's own errors
 * ({@link Failure}, {@link Refused}, {@link HostError}, {@link ModelError})
 * explain themselves: their message alone. Anything else is a bug: its
 * name and message, then the head of its stack.
 */
export function errorText(thrown: unknown): string {
  if (thrown instanceof Failure || thrown instanceof Refused || thrown instanceof HostError || thrown instanceof ModelError) {
    return thrown.message;
  }
  if (thrown instanceof Error) {
    const head = `${thrown.name || 'Error'}: ${thrown.message}`;
    let lines = (thrown.stack ?? '').split('\n').filter((l) => l.trim() !== '');
    // V8 starts the stack with the message; SpiderMonkey (in the component) does not.
    if (lines.length > 0 && lines[0].startsWith(head.split('\n')[0])) lines = lines.slice(1);
    // componentize-js's own glue (`…/sources/initializer.js`) says nothing about the agent.
    lines = lines.filter((l) => !/\/sources\/initializer\.js:/.test(l));
    const stack = lines.slice(0, STACK_LINES).map((l) => (l.startsWith(' ') ? l : `    ${l}`));
    return stack.length > 0 ? `${head}\n${stack.join('\n')}` : head;
  }
  const p = payloadOf(thrown);
  const what = p.found ? p.payload : thrown;
  return `Error: uncaught ${typeof what === 'object' ? stringify(what) : String(what)}`;
}

/** The agent's handler: returns the report, or throws (see {@link errorText}). */
export type HandlerFn = (message: Message) => string | Promise<string>;

/**
 * The export componentize-js expects for the world's `handler` interface:
 * `export const handler = defineHandler((message) => "report")`. Every throw
 * is caught and becomes the invocation's `err` text; a report that is not a
 * string is an error too.
 */
export function defineHandler(fn: HandlerFn): { handle(message: T.Message): Promise<HandleResult> } {
  return {
    async handle(raw: T.Message): Promise<HandleResult> {
      try {
        const report: unknown = await fn(new Message(raw));
        if (typeof report !== 'string') {
          return { tag: 'err', val: `Error: the handler returned ${report === null ? 'null' : typeof report}, not a report (a string)` };
        }
        return { tag: 'ok', val: report };
      } catch (e) {
        return { tag: 'err', val: errorText(e) };
      }
    },
  };
}
