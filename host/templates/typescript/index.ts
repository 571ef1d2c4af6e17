// The `{{name}}` agent, made by `concord new`. It writes the fields of the
// `{{kind}}` kind that concord.toml gives it: `note` and `count`.
//
// Messages:
// - `note` `{"text": "..."}` about `{{kind}}/ID`: records the text as the
//   entity's note and counts the notes, creating the entity the first time.
//
// Build it with `concord build {{name}}`; test it with
// `scripts/test_js_agent.sh agents/{{name}}`; try it with
// `concord invoke {{name}} note --entity {{kind}}/first --body '{"text":"hello"}'`
// against a running `concord serve`.
import { Entity, type EntityRef, Refused, Write, commit, defineHandler, describe, fail, get, int, refString, text } from 'concord-agent';

/**
 * The write for one note, from the entity as just read (`undefined`: it
 * does not exist yet). Pure, so the tests run it natively.
 */
export function note(target: EntityRef, current: Entity | undefined, noteText: string): Write {
  const count = (current?.integer('count') ?? 0n) + 1n;
  const write = current === undefined ? Write.create(target) : Write.update(current);
  return write.set('note', text(noteText)).set('count', int(count));
}

export const handler = defineHandler((message) => {
  const target = message.entity ?? fail('{{name}} needs an entity, such as {{kind}}/first');
  const shown = refString(target);
  switch (message.kind) {
    case 'note': {
      const body = message.bodyField('text');
      const noteText = typeof body === 'string' ? body : '';
      for (let attempt = 0; attempt < 3; attempt++) {
        const current = get(target);
        try {
          const [version] = commit(note(target, current, noteText), 'a note');
          // JSON.stringify quotes plain text as Rust's `{:?}` does.
          return `noted ${JSON.stringify(noteText)} on ${shown} (version ${version})`;
        } catch (e) {
          // Someone wrote in between: re-read and count again.
          if (e instanceof Refused && e.kind === 'conflict') continue;
          if (e instanceof Refused) fail(describe(e));
          throw e;
        }
      }
      return fail(`${shown} kept changing; the note was not recorded`);
    }
    default:
      return fail(`{{name}} does not handle \`${message.kind}\` messages (it handles note)`);
  }
});
