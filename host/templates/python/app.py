"""The `{{name}}` agent, made by `concord new`. It writes the fields of the
`{{kind}}` kind that concord.toml gives it: `note` and `count`.

Messages:
- `note` `{"text": "..."}` about `{{kind}}/ID`: records the text as the
  entity's note and counts the notes, creating the entity the first time.

Build it with `concord build {{name}}`; test it with
`{{root}}/scripts/test_python_agent.sh .`; try it with
`concord invoke {{name}} note --entity {{kind}}/first --body '{"text":"hello"}'`
against a running `concord serve`.
"""

import json

from concord_agent import Conflict, Fail, Refused, Write, commit, describe, get, handler, ref_str


def note(target, current, text):
    """The write for one note, from the entity as just read (`None`: it
    does not exist yet). Pure, so the tests run it without a host."""
    count = ((current.integer("count") if current else None) or 0) + 1
    write = Write.update(current) if current else Write.create(target)
    return write.set("note", text).set("count", count)


@handler
def handle(message):
    target = message.entity or Fail.now("{{name}} needs an entity, such as {{kind}}/first")
    if message.kind != "note":
        raise Fail(f"{{name}} does not handle `{message.kind}` messages (it handles note)")
    text = message.body_field("text", "")
    text = text if isinstance(text, str) else ""
    for _ in range(3):
        current = get(target)
        try:
            versions = commit([note(target, current, text)], "a note")
            return f"noted {json.dumps(text)} on {ref_str(target)} (version {versions[0]})"
        except Conflict:
            continue  # someone wrote in between: re-read and count again
        except Refused as e:
            raise Fail(describe(e))
    raise Fail(f"{ref_str(target)} kept changing; the note was not recorded")
