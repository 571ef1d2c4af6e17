"""The `{{name}}` agent's tests, in plain CPython: the pure decision, and
the handler against the SDK's fake host. Run them with
`{{root}}/scripts/test_python_agent.sh .` (it puts the SDK, the fake host
and bindings generated from wit/ on the path)."""

import unittest

import bindings  # noqa: F401  (the SDK and the generated bindings, on the path)
from fake import FakeHost, message

from componentize_py_types import Err
from wit_world.imports import types

from concord_agent import Entity

import app

FIRST = types.EntityRef(kind="{{kind}}", id="first")


class Note(unittest.TestCase):
    def test_the_first_note_creates_the_entity_and_later_ones_count(self):
        first = app.note(FIRST, None, "hello")
        self.assertIsInstance(first.expect, types.Expect_Absent)
        self.assertEqual([f.value for f in first.fields][1], types.Value_Integer(1))

        read = Entity(
            types.Entity(
                kind="{{kind}}",
                id="first",
                version=4,
                fields=[types.Field(name="count", value=types.Value_Integer(3))],
                updated_at_ms=0,
                updated_by="{{name}}",
            )
        )
        later = app.note(FIRST, read, "again")
        self.assertEqual(later.expect, types.Expect_Version(4), "written against the version read")
        self.assertEqual([f.value for f in later.fields], [types.Value_Text("again"), types.Value_Integer(4)])


class Handler(unittest.TestCase):
    def setUp(self):
        self.host = FakeHost("{{name}}").install()
        self.addCleanup(self.host.uninstall)

    def send(self, kind, body='{"text": "hello"}', entity=FIRST):
        return app.Handler().handle(message(kind, entity, body))

    def test_a_note_creates_then_counts(self):
        self.assertEqual(self.send("note"), 'noted "hello" on {{kind}}/first (version 1)')
        self.assertEqual(self.send("note", '{"text": "again"}'), 'noted "again" on {{kind}}/first (version 2)')
        fields = {f.name: f.value for f in self.host.entities["{{kind}}/first"].fields}
        self.assertEqual(fields["count"], types.Value_Integer(2))

    def test_other_kinds_and_no_entity_fail(self):
        with self.assertRaises(Err) as raised:
            self.send("hello")
        self.assertEqual(raised.exception.value, "{{name}} does not handle `hello` messages (it handles note)")
        with self.assertRaises(Err) as raised:
            self.send("note", entity=None)
        self.assertEqual(raised.exception.value, "{{name}} needs an entity, such as {{kind}}/first")


if __name__ == "__main__":
    unittest.main()
