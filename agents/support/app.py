"""The Support agent, in Python. Owns `open_tickets`, `last_interaction` and
`satisfaction_score`; shares `status` with Sales.

Messages:
- `escalation` `{ticket, summary}`: opens a ticket, rates its severity and
  marks the customer `at_risk`. The severity comes from the `default` model
  when `concord.toml` declares one and grants it to Support
  (`[models.default]`, `[agents.support] models`); otherwise, or when the
  model is down or answers something else, from Support's own rule.
- `resolved` `{ticket, satisfaction}`: closes a ticket; with none left open
  the customer is `active` again.

Each change is computed from a fresh read and committed against that read's
version; on a conflict Support re-reads and recomputes (a ticket count is
never blindly re-applied to a stale value).

Built with `scripts/build_python_agent.sh agents/support agents/support.wasm`.
"""

from concord_agent import (
    Conflict,
    Deferred,
    Denied,
    Fail,
    Pinned,
    Refused,
    Write,
    commit,
    describe,
    get,
    handler,
    model,
    warn,
)

ATTEMPTS = 5

LEVELS = ("low", "medium", "high")


def rule_severity(summary):
    """Support's own rule: outages, data loss and security are high;
    anything a customer calls urgent or blocking is medium; the rest low."""
    s = summary.lower()
    if any(w in s for w in ("outage", "down", "data loss", "breach", "security")):
        return "high"
    if any(w in s for w in ("urgent", "blocking", "escalat", "cannot")):
        return "medium"
    return "low"


def rust_debug(s):
    """A string quoted as Rust's `{:?}` quotes it."""
    out = ['"']
    for c in s:
        if c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif c == "\n":
            out.append("\\n")
        elif c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif c == "\0":
            out.append("\\0")
        elif c.isprintable() or c == " ":
            out.append(c)
        else:
            out.append("\\u{%x}" % ord(c))
    out.append('"')
    return "".join(out)


def severity(summary):
    """Asks the model when there is one; falls back to the rule, saying
    why. Returns (level, who rated it)."""
    if not model.is_granted("default"):
        return rule_severity(summary), "rule"
    try:
        answer = model.ask(
            "You triage customer escalations. Answer with exactly one word: low, medium or high.", summary
        )
    except model.ModelError as e:
        # A budget spent, or a server down: the rule decides.
        warn(f"{model.describe(e)}; using the rule")
        return rule_severity(summary), "rule"
    word = answer.strip()
    start, end = 0, len(word)
    while start < end and not word[start].isalnum():
        start += 1
    while end > start and not word[end - 1].isalnum():
        end -= 1
    word = word[start:end].lower()
    if word in LEVELS:
        return word, "the model"
    warn(f"the model answered {rust_debug(answer)}, not low, medium or high; using the rule")
    return rule_severity(summary), "rule"


class Escalation:
    def __init__(self, ticket, summary, rated):
        self.ticket, self.summary, self.rated = ticket, summary, rated

    def apply(self, c):
        """The write and its reason, computed from the customer as just read."""
        open_ = (c.integer("open_tickets") or 0) + 1
        w = (
            Write.update(c)
            .set("status", "at_risk")
            .set("open_tickets", open_)
            .set("last_interaction", f"{self.ticket}: {self.summary}")
        )
        level, by = self.rated
        why = (
            f"escalation {self.ticket}: {self.summary} (severity {level} by {by}); "
            f"{open_} ticket(s) open, customer at risk"
        )
        return w, why


class Resolved:
    def __init__(self, ticket, satisfaction):
        self.ticket, self.satisfaction = ticket, satisfaction

    def apply(self, c):
        open_ = max((c.integer("open_tickets") or 0) - 1, 0)
        w = Write.update(c).set("open_tickets", open_).set("last_interaction", f"{self.ticket}: resolved")
        if open_ == 0:
            w = w.set("status", "active")
        if self.satisfaction is not None:
            w = w.set("satisfaction_score", float(self.satisfaction))
        status = "customer active again" if open_ == 0 else "still at risk"
        return w, f"ticket {self.ticket} resolved; {open_} open, {status}"


def _text(body, name):
    v = body.get(name) if isinstance(body, dict) else None
    return v if isinstance(v, str) else None


def _number(body, name):
    v = body.get(name) if isinstance(body, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@handler
def handle(message):
    target = message.entity
    if target is None:
        raise Fail("support needs an entity, such as customer/acme")
    body = message.body_json()
    ticket = _text(body, "ticket")
    ticket = "?" if ticket is None else ticket
    if message.kind == "escalation":
        summary = _text(body, "summary")
        summary = "escalation" if summary is None else summary
        # Rated once, before the retries: a conflict re-reads the customer,
        # not the model.
        plan = Escalation(ticket, summary, severity(summary))
    elif message.kind == "resolved":
        plan = Resolved(ticket, _number(body, "satisfaction"))
    else:
        raise Fail(f"support does not handle `{message.kind}` messages (it handles escalation, resolved)")
    for attempt in range(1, ATTEMPTS + 1):
        customer = get(target)
        if customer is None:
            raise Fail(f"{target} does not exist")
        w, why = plan.apply(customer)
        try:
            versions = commit([w], why)
        except Conflict as e:
            warn(f"attempt {attempt}: {describe(e)}; re-reading")
            continue
        except (Pinned, Deferred, Denied) as e:
            # A human override or a rule holds this change back: report it
            # (a person will pick it up), do not fight it.
            return f"not recorded: {describe(e)} ({why})"
        except Refused as e:
            raise Fail(describe(e)) from None
        return f"{why} ({target} version {versions[0]})"
    raise Fail(f"{target} kept changing under {ATTEMPTS} attempts; ticket {ticket} not recorded")
