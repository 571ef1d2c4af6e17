"""The Python agents of this repository (agents/support, the conformance
agent), run in plain CPython against the fake host: the same reports and
warn lines as the Rust Support agent (agents/support/src/lib.rs)."""

import importlib.util
import os
import unittest

import bindings
from fake import FakeHost, message

from componentize_py_types import Err
from wit_world.imports import model as wit_model
from wit_world.imports import types

ACME = types.EntityRef(kind="customer", id="acme")


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(bindings.ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


support = load("agents/support/app.py", "support_app")
conformance = load("tests/agents/conformance-py/app.py", "conformance_app")


class Support(unittest.TestCase):
    def setUp(self):
        self.host = FakeHost("support").install()
        self.addCleanup(self.host.uninstall)
        self.host.put(ACME, {"name": types.Value_Text("Acme"), "status": types.Value_Text("active")}, by="sales")

    def send(self, kind, body, entity=ACME):
        return support.Handler().handle(message(kind, entity, body))

    def fails(self, kind, body, entity=ACME):
        with self.assertRaises(Err) as raised:
            self.send(kind, body, entity)
        return raised.exception.value

    def test_escalation_by_rule(self):
        report = self.send("escalation", '{"ticket": "T-1042", "summary": "checkout down for EU customers"}')
        self.assertEqual(
            report,
            "escalation T-1042: checkout down for EU customers (severity high by rule); "
            "1 ticket(s) open, customer at risk (customer/acme version 2)",
        )
        acme = self.host.entities["customer/acme"]
        fields = {f.name: f.value for f in acme.fields}
        self.assertEqual(fields["status"], types.Value_Text("at_risk"))
        self.assertEqual(fields["open_tickets"], types.Value_Integer(1))
        self.assertEqual(fields["last_interaction"], types.Value_Text("T-1042: checkout down for EU customers"))
        self.assertEqual(self.host.commits[-1][1], report.rsplit(" (customer/acme", 1)[0])
        self.assertEqual(self.host.asked, [], "no model granted: none asked")

    def test_rule(self):
        for summary, level in [("Data loss!", "high"), ("URGENT: cannot log in", "medium"), ("a question", "low")]:
            self.assertEqual(support.rule_severity(summary), level)

    def test_defaults(self):
        report = self.send("escalation", "{}")
        self.assertTrue(report.startswith("escalation ?: escalation (severity medium by rule); 1 ticket(s) open"), report)

    def test_by_the_model_and_its_fallbacks(self):
        self.host.granted = ["default"]
        self.host.answers = [" High. "]
        self.assertIn("(severity high by the model)", self.send("escalation", '{"ticket": "T-7", "summary": "a question"}'))
        self.host.answers = ['"very bad"\n']
        self.assertIn("(severity low by rule)", self.send("escalation", '{"ticket": "T-8", "summary": "a question"}'))
        self.assertEqual(self.host.warns()[-1], 'the model answered "\\"very bad\\"\\n", not low, medium or high; using the rule')
        self.host.answers = [wit_model.ModelError_Unavailable("connection refused")]
        self.assertIn("(severity high by rule)", self.send("escalation", '{"ticket": "T-9", "summary": "outage"}'))
        self.assertEqual(self.host.warns()[-1], "model unavailable: connection refused; using the rule")
        self.assertEqual(len(self.host.asked), 3)

    def test_resolved(self):
        self.send("escalation", '{"ticket": "T-1", "summary": "outage"}')
        self.send("escalation", '{"ticket": "T-2", "summary": "outage"}')
        self.assertEqual(
            self.send("resolved", '{"ticket": "T-1", "satisfaction": 4}'),
            "ticket T-1 resolved; 1 open, still at risk (customer/acme version 4)",
        )
        fields = {f.name: f.value for f in self.host.entities["customer/acme"].fields}
        self.assertEqual(fields["satisfaction_score"], types.Value_Float(4.0))
        self.assertEqual(fields["status"], types.Value_Text("at_risk"))
        self.assertEqual(
            self.send("resolved", '{"ticket": "T-2"}'),
            "ticket T-2 resolved; 0 open, customer active again (customer/acme version 5)",
        )
        fields = {f.name: f.value for f in self.host.entities["customer/acme"].fields}
        self.assertEqual((fields["status"], fields["open_tickets"]), (types.Value_Text("active"), types.Value_Integer(0)))
        self.assertEqual(self.send("resolved", '{"ticket": "T-3", "satisfaction": true}'),
                         "ticket T-3 resolved; 0 open, customer active again (customer/acme version 6)")

    def test_conflict_rereads_and_recomputes(self):
        interfered = []

        def sales_changes_it(host):
            if not interfered:
                interfered.append(1)
                host.put(ACME, {"open_tickets": types.Value_Integer(2)}, by="sales")

        self.host.before_commit = sales_changes_it
        report = self.send("escalation", '{"ticket": "T-1", "summary": "outage"}')
        self.assertEqual(self.host.warns(), [
            "attempt 1: conflict: customer/acme is at version 2; last changed by sales (open_tickets); re-reading"
        ])
        self.assertIn("; 3 ticket(s) open, customer at risk (customer/acme version 3)", report)

    def test_kept_changing(self):
        self.host.before_commit = lambda host: host.put(ACME, {"name": types.Value_Text("Acme")}, by="sales")
        self.assertEqual(
            self.fails("escalation", '{"ticket": "T-1", "summary": "outage"}'),
            "customer/acme kept changing under 5 attempts; ticket T-1 not recorded",
        )
        self.assertEqual(len(self.host.warns()), 5)

    def test_held_back(self):
        self.host.refusals = [types.WriteError_Pinned(types.Pinned(entity=ACME, field="status", by="human:alice", reason="CEO call"))]
        self.assertEqual(
            self.send("resolved", '{"ticket": "T-1"}'),
            "not recorded: pinned: customer/acme.status is pinned by human:alice: CEO call "
            "(ticket T-1 resolved; 0 open, customer active again)",
        )
        self.host.refusals = [types.WriteError_Deferred(types.Deferral(entity=ACME, rule="r", reason="later"))]
        self.assertTrue(self.send("resolved", '{"ticket": "T-1"}').startswith("not recorded: deferred by rule `r`"))

    def test_failures(self):
        self.host.refusals = [types.WriteError_Invalid("no such field")]
        self.assertEqual(self.fails("resolved", "{}"), "invalid: no such field")
        self.assertEqual(self.fails("resolved", "{}", entity=None), "support needs an entity, such as customer/acme")
        self.assertEqual(self.fails("resolved", "{}", entity=types.EntityRef(kind="customer", id="nobody")),
                         "customer/nobody does not exist")
        self.assertEqual(self.fails("upsell", "{}"),
                         "support does not handle `upsell` messages (it handles escalation, resolved)")


class Conformance(unittest.TestCase):
    def setUp(self):
        self.host = FakeHost("support").install()
        self.addCleanup(self.host.uninstall)
        self.host.owners = {"deal_stage": ["sales"]}
        self.host.put(ACME, {"status": types.Value_Text("active")}, by="human:alice")
        self.host.put(ACME, {"status": types.Value_Text("at_risk")}, by="human:alice")

    def send(self, kind):
        return conformance.Handler().handle(message(kind, ACME))

    def test_commit_retry(self):
        self.assertEqual(
            self.send("commit_retry"),
            '{"conflict":{"current_version":2,"changed_by":"human:alice","changed_fields":["status"],"events":1},'
            '"version":3,"open_tickets":1}',
        )

    def test_forbidden_log_and_failures(self):
        self.assertEqual(self.send("forbidden"), '{"field":"deal_stage","agent":"support","writers":["sales"]}')
        self.assertEqual(self.send("log"), '{"logged":5}')
        self.assertEqual([m for _, m in self.host.logs], [f"conformance {lv}" for lv in ("trace", "debug", "info", "warn", "error")])
        with self.assertRaises(Err) as raised:
            self.send("nope")
        self.assertEqual(raised.exception.value, "conformance does not handle nope")
        with self.assertRaises(Err) as raised:
            import contextlib
            import io

            with contextlib.redirect_stderr(io.StringIO()):
                self.send("trap")
        self.assertTrue(raised.exception.value.startswith("RuntimeError: conformance trap\n"), raised.exception.value)


if __name__ == "__main__":
    unittest.main()
