// The tests of the `{{name}}` agent: the decision natively, and the handler
// against a stand-in host. Run: scripts/test_js_agent.sh agents/{{name}}
// (or `npm test` here), which bundles this file with the SDK, the
// `concord:agent/*` imports pointing at agents/sdk-js/test/stubs/, and runs
// it with `node --test`.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { Entity, int } from 'concord-agent';
// The stand-in host: each call is recorded, and answered by `host.answers`.
import { host, err } from 'concord:agent/host';
import { handler, note } from './index.ts';

const target = { kind: '{{kind}}', id: 'first' };

beforeEach(() => host.reset());

test('the first note creates the entity, with count 1', () => {
  const first = note(target, undefined, 'hello');
  assert.deepEqual(first.entity, target);
  assert.deepEqual(first.expect, { tag: 'absent' });
  assert.deepEqual(first.setFields, [
    { name: 'note', value: { tag: 'text', val: 'hello' } },
    { name: 'count', value: { tag: 'integer', val: 1n } },
  ]);
});

test('a later note updates against the version read, and counts', () => {
  const read = new Entity({
    kind: '{{kind}}',
    id: 'first',
    version: 4n,
    fields: [{ name: 'count', value: int(3) }],
    updatedAtMs: 0n,
    updatedBy: '{{name}}',
  });
  const next = note(target, read, 'again');
  assert.deepEqual(next.expect, { tag: 'version', val: 4n }, 'written against the version read');
  assert.deepEqual(next.setFields, [
    { name: 'note', value: { tag: 'text', val: 'again' } },
    { name: 'count', value: { tag: 'integer', val: 4n } },
  ]);
});

const message = (kind: string, body: string) => ({
  kind,
  entity: target as typeof target | undefined,
  body,
  invocation: 1n,
  causation: undefined,
});

test('the handler re-reads after a conflict, and reports the version', async () => {
  let reads = 0;
  host.answers['kb.get'] = () => {
    reads++;
    return reads === 1
      ? undefined
      : { ...target, version: 1n, fields: [{ name: 'count', value: int(1) }], updatedAtMs: 0n, updatedBy: 'someone' };
  };
  let commits = 0;
  host.answers['kb.commit'] = () => {
    commits++;
    if (commits === 1) {
      throw err({
        tag: 'conflict',
        val: { entity: target, expected: { tag: 'absent' }, currentVersion: 1n, changedBy: 'someone', changedAtMs: 0n, changedFields: ['count'], eventsSince: [] },
      });
    }
    return new BigUint64Array([2n]);
  };
  const result = await handler.handle(message('note', '{"text":"hello"}'));
  assert.deepEqual(result, { tag: 'ok', val: 'noted "hello" on {{kind}}/first (version 2)' });
  const writes = host.calls.filter(([, fn]) => fn === 'commit').map(([, , [w]]) => w[0]);
  assert.deepEqual(writes[0].expect, { tag: 'absent' });
  assert.deepEqual(writes[1].expect, { tag: 'version', val: 1n });
  assert.deepEqual(writes[1].set[1], { name: 'count', value: { tag: 'integer', val: 2n } });
});

test('another refusal fails with its description', async () => {
  host.answers['kb.get'] = () => undefined;
  host.answers['kb.commit'] = () => {
    throw err({ tag: 'invalid', val: 'field `count` is not declared' });
  };
  assert.deepEqual(await handler.handle(message('note', '{"text":"hello"}')), {
    tag: 'err',
    val: 'invalid: field `count` is not declared',
  });
});

test('the handler refuses other kinds, and messages without an entity', async () => {
  assert.deepEqual(await handler.handle(message('hello', '{}')), {
    tag: 'err',
    val: '{{name}} does not handle `hello` messages (it handles note)',
  });
  assert.deepEqual(await handler.handle({ ...message('note', '{"text":"x"}'), entity: undefined }), {
    tag: 'err',
    val: '{{name}} needs an entity, such as {{kind}}/first',
  });
});
