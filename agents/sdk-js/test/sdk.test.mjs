// The SDK's helpers, against a stand-in host (test/stubs/). Run: npm test.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { host, err } from './stubs/host.mjs';
// The SDK as scripts/test.mjs compiled it, its host imports pointing at ./stubs/.
import * as sdk from '../node_modules/.cache/concord-sdk-test/sdk.mjs';

const { Write, Refused, HostError, ModelError, entity, int, float, text, json, NULL } = sdk;

const acme = { kind: 'customer', id: 'acme' };
const witEntity = (version, fields = []) => ({
  kind: 'customer',
  id: 'acme',
  version,
  fields,
  updatedAtMs: 1700000000000n,
  updatedBy: 'sales',
});
const event = (seq, agent, names) => ({
  seq,
  atMs: 1n,
  agent,
  entity: acme,
  version: seq,
  kind: 'updated',
  changes: names.map((name) => ({ name, before: undefined, after: { tag: 'text', val: 'x' } })),
  reason: 'r',
  invocation: 1n,
  detail: undefined,
});

beforeEach(() => host.reset());

test('entity names kind/id', () => {
  assert.deepEqual(entity('customer/acme'), acme);
  assert.deepEqual(entity('customer', 'acme'), acme);
  assert.deepEqual(entity('customer/a/b'), { kind: 'customer', id: 'a/b' });
  assert.throws(() => entity('acme'), /does not name an entity/);
  assert.equal(sdk.refString(acme), 'customer/acme');
});

test('values: integers and floats are explicit', () => {
  assert.deepEqual(int(3), { tag: 'integer', val: 3n });
  assert.deepEqual(int(3n), { tag: 'integer', val: 3n });
  assert.throws(() => int(0.5), /must be an integer/);
  assert.deepEqual(float(0.5), { tag: 'float', val: 0.5 });
  assert.deepEqual(text('x'), { tag: 'text', val: 'x' });
  assert.deepEqual(json({ a: [1, 2n] }), { tag: 'json', val: '{"a":[1,2]}' });
  assert.deepEqual(sdk.jsonText('[1]'), { tag: 'json', val: '[1]' });
  assert.deepEqual(sdk.toValue('s'), { tag: 'text', val: 's' });
  assert.deepEqual(sdk.toValue(true), { tag: 'boolean', val: true });
  assert.deepEqual(sdk.toValue(7n), { tag: 'integer', val: 7n });
  assert.deepEqual(sdk.toValue(null), NULL);
  assert.deepEqual(sdk.toValue(float(1.5)), { tag: 'float', val: 1.5 });
  assert.throws(() => sdk.toValue(3), /say int\(3\) or float\(3\)/);
  assert.throws(() => sdk.toValue({ a: 1 }), /use json/);
});

test('valueOfJson maps as the Rust value_of_json', () => {
  assert.deepEqual(sdk.valueOfJson(null), NULL);
  assert.deepEqual(sdk.valueOfJson(false), { tag: 'boolean', val: false });
  assert.deepEqual(sdk.valueOfJson(12), { tag: 'integer', val: 12n });
  assert.deepEqual(sdk.valueOfJson(4.5), { tag: 'float', val: 4.5 });
  assert.deepEqual(sdk.valueOfJson('x'), { tag: 'text', val: 'x' });
  assert.deepEqual(sdk.valueOfJson(['SSO']), { tag: 'json', val: '["SSO"]' });
  assert.equal(sdk.valueString(int(5)), '5');
  assert.equal(sdk.valueString(NULL), 'null');
});

test('stringify writes bigints as numbers', () => {
  assert.equal(sdk.stringify({ version: 3n, list: [1n] }), '{"version":3,"list":[1]}');
});

test('Write.update / set / unset / fenced, Write.create', () => {
  const read = new sdk.Entity(witEntity(4n));
  const w = Write.update(read).set('status', 'active').set('open_tickets', int(2)).unset('renewal_date').fenced(9);
  assert.deepEqual(w.toWit(), {
    entity: acme,
    expect: { tag: 'version', val: 4n },
    set: [
      { name: 'status', value: { tag: 'text', val: 'active' } },
      { name: 'open_tickets', value: { tag: 'integer', val: 2n } },
    ],
    unset: ['renewal_date'],
    fence: 9n,
  });
  assert.deepEqual(Write.create('customer/globex').toWit(), {
    entity: { kind: 'customer', id: 'globex' },
    expect: { tag: 'absent' },
    set: [],
    unset: [],
    fence: undefined,
  });
  assert.deepEqual(Write.at(acme, 2).toWit().expect, { tag: 'version', val: 2n });
});

test('get gives an Entity with field readers, or undefined', () => {
  host.answers['kb.get'] = () =>
    witEntity(3n, [
      { name: 'status', value: text('active') },
      { name: 'open_tickets', value: int(2) },
      { name: 'satisfaction_score', value: float(4.5) },
      { name: 'usage_metrics', value: json({ active_users: 412 }) },
    ]);
  const e = sdk.get('customer/acme');
  assert.deepEqual(host.calls, [['kb', 'get', [acme]]]);
  assert.equal(e.version, 3n);
  assert.equal(e.text('status'), 'active');
  assert.equal(e.integer('open_tickets'), 2n);
  assert.equal(e.float('satisfaction_score'), 4.5);
  assert.deepEqual(e.json('usage_metrics'), { active_users: 412 });
  assert.equal(e.text('open_tickets'), undefined, 'not text');
  assert.equal(e.integer('missing'), undefined);
  assert.deepEqual(e.ref, acme);
  assert.equal(String(e), 'customer/acme');
  host.answers['kb.get'] = () => undefined;
  assert.equal(sdk.get(acme), undefined);
  host.answers['kb.get'] = () => {
    throw err('no kind `nope` in concord.toml');
  };
  assert.throws(() => sdk.get('nope/x'), (e) => e instanceof HostError && e.message === 'no kind `nope` in concord.toml');
});

test('commit returns the versions', () => {
  host.answers['kb.commit'] = () => new BigUint64Array([5n, 1n]);
  const v = sdk.commit([Write.create('customer/a'), Write.create('customer/b')], 'why');
  assert.deepEqual(v, [5n, 1n]);
  assert.ok(Array.isArray(v));
  const [, , [writes, reason]] = host.calls[0];
  assert.equal(writes.length, 2);
  assert.equal(reason, 'why');
  sdk.commit(Write.create('customer/c'), 'one write');
  assert.equal(host.calls[1][2][0].length, 1);
});

const conflict = {
  tag: 'conflict',
  val: {
    entity: acme,
    expected: { tag: 'version', val: 2n },
    currentVersion: 4n,
    changedBy: 'support, sales',
    changedAtMs: 10n,
    changedFields: ['status', 'open_tickets'],
    eventsSince: [event(3n, 'sales', ['status']), event(4n, 'support', ['open_tickets'])],
  },
};

test('a refused commit throws Refused with the typed refusal', () => {
  host.answers['kb.commit'] = () => {
    throw err(conflict);
  };
  let caught;
  try {
    sdk.commit(Write.create(acme), 'x');
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof Refused);
  assert.ok(caught instanceof Error);
  assert.equal(caught.kind, 'conflict');
  assert.equal(caught.conflict.changedBy, 'support, sales');
  assert.deepEqual(caught.conflict.changedFields, ['status', 'open_tickets']);
  assert.equal(caught.conflict.eventsSince.length, 2);
  assert.equal(caught.conflict.currentVersion, 4n);
  assert.equal(caught.forbidden, undefined);
  assert.equal(caught.message, 'conflict: customer/acme is at version 4; last changed by support, sales (status, open_tickets)');
  assert.equal(sdk.describe(caught), caught.message);
});

test('describe: the Rust texts, for every refusal', () => {
  const cases = [
    [
      { tag: 'conflict', val: { ...conflict.val, currentVersion: undefined, changedFields: [] } },
      'conflict: customer/acme does not exist; last changed by support, sales',
    ],
    [
      { tag: 'forbidden', val: { entity: acme, field: 'deal_stage', agent: 'support', writers: ['sales'] } },
      'forbidden: support may not write customer/acme.deal_stage; it belongs to sales',
    ],
    [
      { tag: 'forbidden', val: { entity: acme, field: '*', agent: 'x', writers: ['sales', 'support'] } },
      'forbidden: x may not lease customer/acme: it writes none of its fields; those who may lease it: sales, support (more are granted in `[kinds.customer] leases`)',
    ],
    [
      { tag: 'forbidden', val: { entity: acme, field: 'action:email.upsell', agent: 'support', writers: ['sales'] } },
      'forbidden: support may not request action `email.upsell` on customer/acme; who may: sales',
    ],
    [
      { tag: 'forbidden', val: { entity: acme, field: 'action:fax', agent: 'support', writers: [] } },
      'forbidden: support may not request action `fax` on customer/acme; the kind is not declared under [actions.kinds] in concord.toml',
    ],
    [
      { tag: 'deferred', val: { entity: acme, rule: 'r1', reason: 'not now' } },
      'deferred by rule `r1` on customer/acme: not now',
    ],
    [{ tag: 'denied', val: { entity: acme, rule: 'r2', reason: 'never' } }, 'denied by rule `r2` on customer/acme: never'],
    [
      { tag: 'pinned', val: { entity: acme, field: 'status', by: 'human:alice', reason: 'CEO call' } },
      'pinned: customer/acme.status is pinned by human:alice: CEO call',
    ],
    [
      { tag: 'leased', val: { entity: acme, holder: 'support', expiresAtMs: 1700000005000n } },
      'leased: customer/acme is leased by support until 1700000005000 ms',
    ],
    [
      { tag: 'stale-fence', val: { entity: acme, token: 3n, current: 4n } },
      'stale fence: token 3 for customer/acme is superseded by 4',
    ],
    [
      { tag: 'stale-fence', val: { entity: acme, token: 3n, current: undefined } },
      'stale fence: token 3 for customer/acme has expired, or was released or broken',
    ],
    [{ tag: 'invalid', val: 'field `x` is not declared' }, 'invalid: field `x` is not declared'],
  ];
  for (const [error, want] of cases) {
    assert.equal(sdk.describe(error), want);
    const r = new Refused(error);
    assert.equal(r.kind, error.tag);
    assert.equal(r.message, want);
  }
  const stale = new Refused(cases[9][0]);
  assert.equal(stale.staleFence.current, 4n);
  assert.equal(new Refused(cases[11][0]).invalid, 'field `x` is not declared');
  assert.equal(new Refused(cases[5][0]).deferred.rule, 'r1');
});

test('history, recent, whoSet', () => {
  host.answers['kb.history'] = () => [event(1n, 'sales', ['name'])];
  assert.equal(sdk.history('customer/acme').length, 1);
  assert.deepEqual(host.calls[0][2], [acme, 0n, 1000]);
  sdk.history(acme, 5, 10);
  assert.deepEqual(host.calls[1][2], [acme, 5n, 10]);
  host.answers['kb.recent'] = () => [event(1n, 'sales', ['status']), event(2n, 'support', ['status']), event(3n, 'product', ['usage_metrics'])];
  assert.equal(sdk.recent(acme, 3600000).length, 3);
  assert.deepEqual(host.calls[2][2], [acme, 3600000n]);
  assert.equal(sdk.whoSet(acme, 'status'), 'support');
  assert.equal(sdk.whoSet(acme, 'deal_stage'), undefined);
  assert.deepEqual(host.calls[3][2], [acme, 18446744073709551615n]);
});

test('coord wrappers convert their arguments and refusals', () => {
  host.answers['coord.act'] = () => 7n;
  assert.equal(sdk.act('email.upsell', { offer: 'x' }, 'customer/acme', 3), 7n);
  assert.deepEqual(host.calls[0][2], ['email.upsell', '{"offer":"x"}', acme, 3n, undefined]);
  sdk.act('email.upsell', '{}', acme, 3n, 'key');
  assert.deepEqual(host.calls[1][2], ['email.upsell', '{}', acme, 3n, 'key']);
  host.answers['coord.act'] = () => {
    throw err(conflict);
  };
  assert.throws(() => sdk.act('k', '{}', acme, 2n), (e) => e instanceof Refused && e.kind === 'conflict');

  host.answers['coord.requestChange'] = () => 5n;
  assert.equal(sdk.requestChange('sales', acme, { deal_stage: text('expansion_candidate') }, 'why'), 5n);
  assert.deepEqual(host.calls.at(-1)[2], ['sales', acme, [{ name: 'deal_stage', value: text('expansion_candidate') }], 'why']);
  sdk.requestChange('sales', acme, [{ name: 'deal_stage', value: text('x') }], 'why');
  assert.deepEqual(host.calls.at(-1)[2][2], [{ name: 'deal_stage', value: text('x') }]);

  host.answers['coord.resolveChange'] = () => undefined;
  sdk.resolveChange(5, true, 'applied');
  assert.deepEqual(host.calls.at(-1)[2], [5n, true, 'applied']);
  host.answers['coord.resolveChange'] = () => {
    throw err('change request 5 is already resolved');
  };
  assert.throws(() => sdk.resolveChange(5n, false, 'no'), (e) => e instanceof HostError && /already resolved/.test(e.message));

  host.answers['coord.lease'] = () => ({ token: 11n, expiresAtMs: 99n });
  assert.deepEqual(sdk.lease(acme, 5000), { token: 11n, expiresAtMs: 99n });
  assert.deepEqual(host.calls.at(-1)[2], [acme, 5000n]);
  host.answers['coord.renew'] = () => {
    throw err({ tag: 'stale-fence', val: { entity: acme, token: 11n, current: undefined } });
  };
  assert.throws(() => sdk.renew(acme, 11n, 5000), (e) => e instanceof Refused && e.staleFence.token === 11n);
  host.answers['coord.release'] = () => true;
  assert.equal(sdk.release(acme, 11), true);
  assert.deepEqual(host.calls.at(-1)[2], [acme, 11n]);
  host.answers['coord.changesSinceRead'] = () => [];
  assert.deepEqual(sdk.changesSinceRead('customer/acme'), []);
});

test('log helpers', () => {
  host.answers['log.log'] = () => undefined;
  sdk.info('a');
  sdk.warn('b');
  sdk.log('trace', 'c');
  sdk.error('d');
  assert.deepEqual(
    host.calls.map((c) => c[2]),
    [
      ['info', 'a'],
      ['warn', 'b'],
      ['trace', 'c'],
      ['error', 'd'],
    ],
  );
});

test('model: isGranted, ask, ModelError', () => {
  host.answers['model.granted'] = () => ['default'];
  assert.equal(sdk.model.isGranted('default'), true);
  assert.equal(sdk.model.isGranted('big'), false);
  host.answers['model.complete'] = (request) => ({
    content: 'high',
    model: 'm',
    promptTokens: 1,
    completionTokens: 1,
    finishReason: 'stop',
  });
  assert.equal(sdk.model.ask('Answer with one word.', 'Checkout is down.'), 'high');
  assert.deepEqual(host.calls.at(-1)[2][0], {
    model: undefined,
    messages: [
      { role: 'system', content: 'Answer with one word.' },
      { role: 'user', content: 'Checkout is down.' },
    ],
    temperature: 0,
    maxTokens: undefined,
  });
  const texts = [
    [{ tag: 'refused', val: 'not granted' }, 'refused by the host: not granted'],
    [{ tag: 'unavailable', val: 'timeout' }, 'model unavailable: timeout'],
    [{ tag: 'invalid', val: 'no choices' }, 'invalid answer: no choices'],
  ];
  for (const [e, want] of texts) {
    host.answers['model.complete'] = () => {
      throw err(e);
    };
    assert.throws(
      () => sdk.model.ask('s', 'u'),
      (thrown) => thrown instanceof ModelError && thrown.kind === e.tag && thrown.message === want,
    );
    assert.equal(sdk.model.describe(e), want);
  }
});

const message = (kind, body = '{}', entity = acme) => ({ kind, entity, body, invocation: 12n, causation: undefined });

test('defineHandler: a report is ok, a Failure or an SDK error is its message', async () => {
  const h = sdk.defineHandler((m) => {
    if (m.kind === 'fail') sdk.fail('no such customer');
    if (m.kind === 'refused') throw new Refused({ tag: 'invalid', val: 'bad' });
    if (m.kind === 'host') throw new HostError('the host said no');
    if (m.kind === 'model') throw new ModelError({ tag: 'unavailable', val: 'down' });
    if (m.kind === 'none') return undefined;
    return `${m.kind}: ${m.bodyField('n')} ${m.bodyField('absent')} ${m.invocation}`;
  });
  assert.deepEqual(await h.handle(message('hello', '{"n":3}')), { tag: 'ok', val: 'hello: 3 null 12' });
  assert.deepEqual(await h.handle(message('fail')), { tag: 'err', val: 'no such customer' });
  assert.deepEqual(await h.handle(message('refused')), { tag: 'err', val: 'invalid: bad' });
  assert.deepEqual(await h.handle(message('host')), { tag: 'err', val: 'the host said no' });
  assert.deepEqual(await h.handle(message('model')), { tag: 'err', val: 'model unavailable: down' });
  assert.deepEqual(await h.handle(message('none')), {
    tag: 'err',
    val: 'Error: the handler returned undefined, not a report (a string)',
  });
});

test('defineHandler: an uncaught throw is "Error: msg" and the head of its stack', async () => {
  function deepInTheAgent() {
    throw new Error('conformance trap');
  }
  const h = sdk.defineHandler((m) => {
    if (m.kind === 'type') return null.x;
    if (m.kind === 'string') throw 'just a string';
    if (m.kind === 'payload') throw Object.assign(new Error('x'), { payload: { tag: 'invalid', val: 'y' } });
    deepInTheAgent();
  });
  const r = await h.handle(message('trap'));
  assert.equal(r.tag, 'err');
  const lines = r.val.split('\n');
  assert.equal(lines[0], 'Error: conformance trap');
  assert.match(lines[1], /deepInTheAgent/);
  assert.ok(lines.length >= 2 && lines.length <= 7, r.val);
  const t = await h.handle(message('type'));
  assert.match(t.val, /^TypeError: .*null/);
  assert.deepEqual(await h.handle(message('string')), { tag: 'err', val: 'Error: uncaught just a string' });
  const p = await h.handle(message('payload'));
  assert.match(p.val, /^Error: x\n/);
});

test('defineHandler: async handlers, and the message body', async () => {
  const h = sdk.defineHandler(async (m) => {
    await Promise.resolve();
    return sdk.stringify(m.bodyJson());
  });
  assert.deepEqual(await h.handle(message('a', '{"x":[1]}')), { tag: 'ok', val: '{"x":[1]}' });
  assert.deepEqual(await h.handle(message('a', 'not json')), { tag: 'ok', val: '{}' });
  assert.deepEqual(await h.handle(message('a', '[1,2]')), { tag: 'ok', val: '{}' });
});
