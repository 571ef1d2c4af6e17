"""The SDK's helpers, in plain CPython over freshly generated bindings."""

import json
import sys
import types as pytypes
import unittest

import bindings  # noqa: F401  (the path)
from fake import FakeHost, message

import concord_agent as ca
from componentize_py_types import Err
from concord_agent import model
from wit_world.imports import coord, types
from wit_world.imports import model as wit_model

ACME = types.EntityRef(kind="customer", id="acme")


class Refs(unittest.TestCase):
    def test_entity(self):
        self.assertEqual(ca.entity("customer/acme"), ACME)
        self.assertEqual(ca.entity("customer", "acme"), ACME)
        self.assertEqual(ca.entity("customer/a/b").id, "a/b")
        self.assertEqual(str(ACME), "customer/acme")
        self.assertEqual(f"{ACME}", "customer/acme")
        for bad in ("acme", "/acme", "customer/"):
            with self.assertRaises(ValueError):
                ca.entity(bad)


class Values(unittest.TestCase):
    def test_python_to_wit(self):
        self.assertEqual(ca.value(None), types.Value_Null())
        self.assertEqual(ca.value(True), types.Value_Boolean(True))
        self.assertEqual(ca.value(3), types.Value_Integer(3))
        self.assertEqual(ca.value(0.5), types.Value_Float(0.5))
        self.assertEqual(ca.value("x"), types.Value_Text("x"))
        self.assertEqual(ca.value({"a": [1, 2]}), types.Value_Json('{"a":[1,2]}'))
        self.assertEqual(ca.value([1]), types.Value_Json("[1]"))
        self.assertEqual(ca.value(ca.Json.of_text('{"b":1}')), types.Value_Json('{"b":1}'))
        kept = types.Value_Text("kept")
        self.assertIs(ca.value(kept), kept)
        with self.assertRaises(TypeError):
            ca.value(object())

    def test_wit_to_python_and_display(self):
        self.assertIsNone(ca.python_value(types.Value_Null()))
        self.assertIsNone(ca.python_value(None))
        self.assertEqual(ca.python_value(types.Value_Json('{"a":1}')), {"a": 1})
        self.assertEqual(ca.python_value(types.Value_Json("nope")), "nope")
        self.assertEqual(ca.python_value(types.Value_Integer(4)), 4)
        self.assertEqual(str(types.Value_Null()), "null")
        self.assertEqual(str(types.Value_Boolean(False)), "false")
        self.assertEqual(str(types.Value_Float(1.0)), "1")
        self.assertEqual(str(types.Value_Float(0.25)), "0.25")
        self.assertEqual(str(types.Value_Text("hi")), "hi")


def acme(version=3, **fields):
    return types.Entity(
        kind="customer",
        id="acme",
        version=version,
        fields=[types.Field(name=n, value=ca.value(v)) for n, v in fields.items()],
        updated_at_ms=5,
        updated_by="sales",
    )


class Entities(unittest.TestCase):
    def test_accessors(self):
        e = ca.Entity(acme(status="active", open_tickets=2, score=0.5, vip=True, tags=["a"]))
        self.assertEqual((e.version, e.updated_by, e.kind, e.id), (3, "sales", "customer", "acme"))
        self.assertEqual(e.reference, ACME)
        self.assertEqual(str(e), "customer/acme")
        self.assertEqual(e.text("status"), "active")
        self.assertIsNone(e.text("open_tickets"), "typed: not a text")
        self.assertEqual(e.integer("open_tickets"), 2)
        self.assertEqual(e.float("score"), 0.5)
        self.assertTrue(e.boolean("vip"))
        self.assertEqual(e.json("tags"), ["a"])
        self.assertEqual(e.get("tags"), ["a"])
        self.assertEqual(e.get("nothing", 7), 7)
        self.assertIsNone(e.field("nothing"))
        self.assertTrue(e.has("status"))
        self.assertEqual(e.as_dict()["open_tickets"], 2)
        self.assertEqual(ca.entity_field(e.raw, "status"), types.Value_Text("active"))
        self.assertEqual(ca.entity_field(e, "status"), types.Value_Text("active"))


class Writes(unittest.TestCase):
    def test_update(self):
        w = ca.Write.update(ca.Entity(acme(version=7))).set("status", "at_risk").set("open_tickets", 1).unset("x").fenced(9)
        self.assertEqual(
            w.to_wit(),
            types.Write(
                entity=ACME,
                expect=types.Expect_Version(7),
                set=[
                    types.Field(name="status", value=types.Value_Text("at_risk")),
                    types.Field(name="open_tickets", value=types.Value_Integer(1)),
                ],
                unset=["x"],
                fence=9,
            ),
        )
        self.assertEqual(ca.Write.update(acme(version=2)).to_wit().expect, types.Expect_Version(2), "a raw entity too")

    def test_create_and_at(self):
        self.assertEqual(ca.Write.create(ACME).to_wit().expect, types.Expect_Absent())
        self.assertEqual(ca.Write.create("customer/acme").to_wit().entity, ACME)
        self.assertEqual(ca.Write.at("customer/acme", 4).to_wit().expect, types.Expect_Version(4))
        self.assertIsNone(ca.Write.create(ACME).to_wit().fence)


def conflict(**kw):
    c = dict(entity=ACME, expected=types.Expect_Version(2), current_version=4, changed_by="support, sales",
             changed_at_ms=9, changed_fields=["status", "open_tickets"], events_since=[])
    c.update(kw)
    return types.WriteError_Conflict(types.Conflict(**c))


class Describe(unittest.TestCase):
    """The same sentences as the Rust SDK's `describe`."""

    def test_every_variant(self):
        forbid = lambda field, writers: types.WriteError_Forbidden(  # noqa: E731
            types.Forbidden(entity=ACME, field=field, agent="product", writers=writers))
        cases = [
            (conflict(), "conflict: customer/acme is at version 4; last changed by support, sales (status, open_tickets)"),
            (conflict(current_version=None, changed_fields=[], changed_by=""),
             "conflict: customer/acme does not exist; last changed by "),
            (forbid("deal_stage", ["sales"]), "forbidden: product may not write customer/acme.deal_stage; it belongs to sales"),
            (forbid("*", ["sales", "support"]),
             "forbidden: product may not lease customer/acme: it writes none of its fields; those who may lease it: "
             "sales, support (more are granted in `[kinds.customer] leases`)"),
            (forbid("action:email.upsell", ["sales"]),
             "forbidden: product may not request action `email.upsell` on customer/acme; who may: sales"),
            (forbid("action:x", []),
             "forbidden: product may not request action `x` on customer/acme; "
             "the kind is not declared under [actions.kinds] in concord.toml"),
            (types.WriteError_Deferred(types.Deferral(entity=ACME, rule="r", reason="not now")),
             "deferred by rule `r` on customer/acme: not now"),
            (types.WriteError_Denied(types.Deferral(entity=ACME, rule="r", reason="never")),
             "denied by rule `r` on customer/acme: never"),
            (types.WriteError_Pinned(types.Pinned(entity=ACME, field="status", by="human:alice", reason="CEO call")),
             "pinned: customer/acme.status is pinned by human:alice: CEO call"),
            (types.WriteError_Leased(types.Leased(entity=ACME, holder="sales", expires_at_ms=123)),
             "leased: customer/acme is leased by sales until 123 ms"),
            (types.WriteError_StaleFence(types.StaleFence(entity=ACME, token=3, current=5)),
             "stale fence: token 3 for customer/acme is superseded by 5"),
            (types.WriteError_StaleFence(types.StaleFence(entity=ACME, token=3, current=None)),
             "stale fence: token 3 for customer/acme has expired, or was released or broken"),
            (types.WriteError_Invalid("no such field `x`"), "invalid: no such field `x`"),
        ]
        for error, text in cases:
            with self.subTest(text=text):
                self.assertEqual(ca.describe(error), text)
                refused = ca.Refused.of(error)
                self.assertEqual(str(refused), text)
                self.assertEqual(ca.describe(refused), text)

    def test_model_errors(self):
        self.assertEqual(model.describe(wit_model.ModelError_Refused("no")), "refused by the host: no")
        self.assertEqual(model.describe(wit_model.ModelError_Unavailable("down")), "model unavailable: down")
        self.assertEqual(model.describe(wit_model.ModelError_Invalid("junk")), "invalid answer: junk")
        self.assertEqual(ca.describe(wit_model.ModelError_Invalid("junk")), "invalid answer: junk")
        self.assertEqual(ca.describe(model.ModelError(wit_model.ModelError_Unavailable("x"))), "model unavailable: x")


class WithHost(unittest.TestCase):
    def setUp(self):
        self.host = FakeHost().install()
        self.addCleanup(self.host.uninstall)


class Kb(WithHost):
    def test_get(self):
        self.assertIsNone(ca.get(ACME))
        self.host.put(ACME, {"status": types.Value_Text("active")})
        e = ca.get("customer/acme")
        self.assertIsInstance(e, ca.Entity)
        self.assertEqual((e.version, e.text("status")), (1, "active"))

    def test_host_errors(self):
        def broken(*_):
            raise Err("store unavailable")

        for name in ("get", "history", "recent"):
            with self.subTest(name=name):
                saved = getattr(ca.kb, name)
                setattr(ca.kb, name, broken)
                try:
                    with self.assertRaises(ca.HostError) as raised:
                        {"get": lambda: ca.get(ACME), "history": lambda: ca.history(ACME),
                         "recent": lambda: ca.recent(ACME, 10)}[name]()
                    self.assertEqual(str(raised.exception), "store unavailable")
                    self.assertIsInstance(raised.exception, ca.AgentError)
                finally:
                    setattr(ca.kb, name, saved)

    def test_commit_and_conflict(self):
        self.host.put(ACME, {"status": types.Value_Text("active")})
        read = ca.get(ACME)
        self.assertEqual(ca.commit([ca.Write.update(read).set("status", "at_risk")], "why"), [2])
        self.assertEqual(self.host.commits[-1][1], "why")
        self.assertEqual(ca.commit(ca.Write.update(ca.get(ACME)).set("open_tickets", 1), "one write"), [3])
        with self.assertRaises(ca.Conflict) as raised:
            ca.commit([ca.Write.update(read).set("status", "active")], "stale")
        c = raised.exception
        self.assertIsInstance(c, ca.Refused)
        self.assertEqual(c.variant, "conflict")
        self.assertEqual((c.current_version, c.changed_by, c.changed_fields, len(c.events_since)),
                         (3, "support", ["open_tickets", "status"], 2))
        self.assertIsInstance(c.error, types.WriteError_Conflict)
        self.assertIsInstance(c.detail, types.Conflict)
        self.assertTrue(str(c).startswith("conflict: customer/acme is at version 3"))

    def test_each_refusal_is_its_own_class(self):
        classes = {
            ca.Forbidden: types.WriteError_Forbidden(types.Forbidden(entity=ACME, field="f", agent="a", writers=["b"])),
            ca.Deferred: types.WriteError_Deferred(types.Deferral(entity=ACME, rule="r", reason="x")),
            ca.Denied: types.WriteError_Denied(types.Deferral(entity=ACME, rule="r", reason="x")),
            ca.Pinned: types.WriteError_Pinned(types.Pinned(entity=ACME, field="f", by="h", reason="x")),
            ca.Leased: types.WriteError_Leased(types.Leased(entity=ACME, holder="h", expires_at_ms=1)),
            ca.StaleFence: types.WriteError_StaleFence(types.StaleFence(entity=ACME, token=1, current=None)),
            ca.Invalid: types.WriteError_Invalid("bad"),
        }
        for cls, error in classes.items():
            with self.subTest(cls=cls.__name__):
                self.host.refusals.append(error)
                with self.assertRaises(cls) as raised:
                    ca.commit([ca.Write.create(ACME)], "r")
                self.assertIs(raised.exception.error, error)
        self.assertEqual(ca.Forbidden.of(classes[ca.Forbidden]).writers, ["b"])
        self.assertEqual(ca.Invalid.of(classes[ca.Invalid]).message, "bad")
        self.assertEqual(ca.Pinned.of(classes[ca.Pinned]).by, "h")

    def test_who_set(self):
        self.host.put(ACME, {"status": types.Value_Text("active")}, by="sales")
        self.host.put(ACME, {"open_tickets": types.Value_Integer(1)}, by="support")
        self.assertEqual(ca.who_set(ACME, "status"), "sales")
        self.assertEqual(ca.who_set(ACME, "open_tickets"), "support")
        self.assertIsNone(ca.who_set(ACME, "deal_stage"))


class Coord(WithHost):
    def patch(self, name, fn):
        saved = getattr(coord, name)
        setattr(coord, name, fn)
        self.addCleanup(setattr, coord, name, saved)

    def test_act(self):
        calls = []
        self.patch("act", lambda *a: calls.append(a) or 11)
        self.assertEqual(ca.act("email.upsell", {"offer": "x"}, "customer/acme", 3), 11)
        self.assertEqual(calls[-1], ("email.upsell", '{"offer":"x"}', ACME, 3, None))
        ca.act("k", '{"raw":1}', ACME, 3, "key")
        self.assertEqual(calls[-1], ("k", '{"raw":1}', ACME, 3, "key"))

        def refuse(*_):
            raise Err(conflict())

        self.patch("act", refuse)
        with self.assertRaises(ca.Conflict):
            ca.act("k", "{}", ACME, 2)

    def test_request_and_resolve(self):
        seen = []
        self.patch("request_change", lambda owner, ref, proposed, reason: seen.append((owner, ref, proposed, reason)) or 5)
        self.assertEqual(ca.request_change("sales", ACME, {"deal_stage": "x"}, "why"), 5)
        self.assertEqual(seen[-1], ("sales", ACME, [types.Field(name="deal_stage", value=types.Value_Text("x"))], "why"))
        ca.request_change("sales", ACME, [("deal_stage", "y")], "why")
        self.assertEqual(seen[-1][2][0].value, types.Value_Text("y"))

        def unknown(*_):
            raise Err("no open request 9")

        self.patch("resolve_change", unknown)
        with self.assertRaises(ca.HostError) as raised:
            ca.resolve_change(9, True, "applied")
        self.assertEqual(str(raised.exception), "no open request 9")

    def test_leases(self):
        grant = types.LeaseGrant(token=4, expires_at_ms=100)
        self.patch("lease", lambda ref, ttl: grant)
        self.patch("renew", lambda ref, token, ttl: types.LeaseGrant(token=token, expires_at_ms=ttl))
        self.patch("release", lambda ref, token: token == 4)
        self.assertEqual(ca.lease(ACME, 5000).token, 4)
        self.assertEqual(ca.renew(ACME, 4, 200), types.LeaseGrant(token=4, expires_at_ms=200))
        self.assertTrue(ca.release(ACME, 4))
        self.assertFalse(ca.release(ACME, 5))

        def stale(*_):
            raise Err(types.WriteError_StaleFence(types.StaleFence(entity=ACME, token=4, current=None)))

        self.patch("renew", stale)
        with self.assertRaises(ca.StaleFence) as raised:
            ca.renew(ACME, 4, 100)
        self.assertEqual(raised.exception.token, 4)

    def test_changes_since_read(self):
        self.patch("changes_since_read", lambda ref: [])
        self.assertEqual(ca.changes_since_read(ACME), [])


class Logs(WithHost):
    def test_levels(self):
        for fn in (ca.trace, ca.debug, ca.info, ca.warn, ca.error):
            fn(f"line {fn.__name__}")
        self.assertEqual(self.host.logs, [(n, f"line {n}") for n in ("trace", "debug", "info", "warn", "error")])


class Models(WithHost):
    def test_granted_and_ask(self):
        self.assertFalse(model.is_granted("default"))
        self.host.granted = ["default"]
        self.assertTrue(model.is_granted("default"))
        self.assertEqual(model.granted(), ["default"])
        self.host.answers = ["high"]
        self.assertEqual(model.ask("sys", "user"), "high")
        asked = self.host.asked[-1]
        self.assertEqual((asked.model, asked.temperature, asked.max_tokens), (None, 0.0, None))
        self.assertEqual([(m.role, m.content) for m in asked.messages], [("system", "sys"), ("user", "user")])

    def test_errors(self):
        self.host.answers = [wit_model.ModelError_Unavailable("timed out")]
        with self.assertRaises(model.ModelError) as raised:
            model.ask("s", "u")
        e = raised.exception
        self.assertEqual((e.kind, e.reason, str(e)), ("unavailable", "timed out", "model unavailable: timed out"))
        self.assertIsInstance(e, ca.AgentError)


class Handlers(unittest.TestCase):
    def define(self, fn):
        module = pytypes.ModuleType("agent_under_test")
        sys.modules[module.__name__] = module
        self.addCleanup(sys.modules.pop, module.__name__, None)
        fn.__module__ = module.__name__
        ca.handler(fn)
        return module.Handler()

    def test_defines_the_export_class(self):
        h = self.define(lambda m: f"got {m.kind} about {m.entity}: {m.body_json()['x']}")
        from wit_world import exports

        self.assertIn(exports.Handler, type(h).__mro__)
        self.assertEqual(type(h).__name__, "Handler")
        self.assertEqual(h.handle(message("hello", ACME, '{"x": 1}')), "got hello about customer/acme: 1")

    def test_reports(self):
        self.assertEqual(self.define(lambda m: {"logged": 5}).handle(message("k")), '{"logged":5}')
        self.assertEqual(self.define(lambda m: None).handle(message("k")), "")

    def test_message_helpers(self):
        m = ca.Message(message("k", None, "not json"))
        self.assertEqual(m.body_json(), {})
        m = ca.Message(message("k", None, '{"ticket": "T-1"}'))
        self.assertEqual((m.body_field("ticket"), m.body_field("none", "d")), ("T-1", "d"))
        self.assertEqual(ca.Message(message("k", None, "[1]")).body_field("x"), None)
        self.assertEqual((m.kind, m.invocation, m.causation), ("k", 1, None))

    def failure(self, fn):
        with self.assertRaises(Err) as raised:
            self.define(fn).handle(message("k"))
        return raised.exception.value

    def test_meant_failures_are_their_message(self):
        def fail(m):
            raise ca.Fail("no such customer")

        self.assertEqual(self.failure(fail), "no such customer")

        def refused(m):
            raise ca.Refused.of(types.WriteError_Invalid("bad field"))

        self.assertEqual(self.failure(refused), "invalid: bad field")

        def err(m):
            raise Err("as the bindings say it")

        self.assertEqual(self.failure(err), "as the bindings say it")

    def test_a_bug_fails_with_its_type_message_and_traceback(self):
        def inner():
            raise RuntimeError("conformance trap")

        def buggy(m):
            inner()

        stderr, sys.stderr = sys.stderr, open("/dev/null", "w")
        try:
            text = self.failure(buggy)
        finally:
            sys.stderr.close()
            sys.stderr = stderr
        lines = text.split("\n")
        self.assertEqual(lines[0], "RuntimeError: conformance trap")
        self.assertTrue(lines[1].startswith("Traceback (most recent call last"), text)
        self.assertIn("in inner", text)
        self.assertIn('raise RuntimeError("conformance trap")', text)
        self.assertLessEqual(len(lines), 2 + ca.TRACEBACK_LINES)

        def key(m):
            return {}["missing"]

        stderr, sys.stderr = sys.stderr, open("/dev/null", "w")
        try:
            self.assertTrue(self.failure(key).startswith("KeyError: 'missing'\n"))
        finally:
            sys.stderr.close()
            sys.stderr = stderr


if __name__ == "__main__":
    unittest.main()
