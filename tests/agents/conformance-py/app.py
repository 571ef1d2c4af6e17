"""The agent conformance suite's agent, in Python: every behaviour of
tests/conformance/SPEC.md, one message kind each, with the reports it
specifies (JSON objects). Loaded as both `support` and `sales`.

Built with
    scripts/build_python_agent.sh tests/agents/conformance-py target/agents/conformance-py.wasm
"""

import json

from concord_agent import (
    Conflict,
    Fail,
    Forbidden,
    StaleFence,
    Write,
    act,
    changes_since_read,
    commit,
    debug,
    error,
    get,
    handler,
    info,
    lease,
    recent,
    release,
    request_change,
    resolve_change,
    trace,
    warn,
)


def read(target):
    e = get(target)
    if e is None:
        raise Fail(f"{target} does not exist")
    return e


def commit_retry(target):
    c = read(target)
    stale = Write.at(target, c.version - 1).set("open_tickets", (c.integer("open_tickets") or 0) + 1)
    try:
        commit([stale], "conformance: stale")
    except Conflict as e:
        refused = {
            "current_version": e.current_version,
            "changed_by": e.changed_by,
            "changed_fields": list(e.changed_fields),
            "events": len(e.events_since),
        }
    else:
        raise Fail("the stale commit was not refused with a conflict")
    c = read(target)
    open_tickets = (c.integer("open_tickets") or 0) + 1
    versions = commit([Write.update(c).set("open_tickets", open_tickets)], "conformance: retry")
    return {"conflict": refused, "version": versions[0], "open_tickets": open_tickets}


def forbidden(target):
    c = read(target)
    try:
        commit([Write.update(c).set("deal_stage", "won")], "conformance: forbidden")
    except Forbidden as e:
        return {"field": e.field, "agent": e.agent, "writers": list(e.writers)}
    raise Fail("writing deal_stage was not refused as forbidden")


def act_(target):
    c = read(target)
    action = act("ticket.notify", '{"n":1}', target, c.version, None)
    try:
        act("ticket.notify", '{"n":1}', target, c.version - 1, "stale")
    except Conflict:
        return {"action": action, "stale": "conflict"}
    raise Fail("the stale act was not refused with a conflict")


def request_change_(target):
    request = request_change("sales", target, {"deal_stage": "expansion_candidate"}, "conformance")
    return {"request": request}


def change_request(target, body):
    request = body.get("request")
    proposed = body.get("proposed")
    if not isinstance(request, int) or not isinstance(proposed, dict):
        raise Fail(f"a change_request needs a request id and proposed fields: {json.dumps(body)}")
    c = read(target)
    w = Write.update(c)
    for name, v in proposed.items():
        w = w.set(name, v if isinstance(v, str) else json.dumps(v))
    versions = commit([w], f"conformance: change request {request}")
    resolve_change(request, True, "applied")
    return {"applied": request, "version": versions[0]}


def lease_(target):
    token = lease(target, 5000).token
    c = read(target)
    fenced = commit([Write.update(c).set("last_interaction", "leased").fenced(token)], "conformance: fenced")
    released = release(target, token)
    if not released:
        raise Fail(f"releasing lease {token} answered false")
    c = read(target)
    try:
        commit([Write.update(c).set("last_interaction", "late").fenced(token)], "conformance: late")
    except StaleFence:
        return {"token": token, "fenced_version": fenced[0], "released": True, "late": "stale-fence"}
    raise Fail("the write with a released fence was not refused as a stale fence")


def awareness(target):
    read(target)
    since = changes_since_read(target)
    events = recent(target, 3_600_000)
    return {"since_read": len(since), "recent": len(events), "recent_agents": [e.agent for e in events]}


def log_(target):
    for write, level in ((trace, "trace"), (debug, "debug"), (info, "info"), (warn, "warn"), (error, "error")):
        write(f"conformance {level}")
    return {"logged": 5}


def trap(target):
    # A bug, as Python has them: an uncaught exception.
    raise RuntimeError("conformance trap")


def reads(target, body):
    n = body.get("n", 1) if isinstance(body, dict) else 1
    for _ in range(n):
        get(target)
    return {"reads": n}


def bump(target):
    c = read(target)
    versions = commit([Write.update(c).set("open_tickets", (c.integer("open_tickets") or 0) + 1)], "conformance: bump")
    return {"version": versions[0]}


BEHAVIOURS = {
    "commit_retry": commit_retry,
    "forbidden": forbidden,
    "act": act_,
    "request_change": request_change_,
    "lease": lease_,
    "awareness": awareness,
    "log": log_,
    "trap": trap,
    "bump": bump,
}


@handler
def handle(message):
    if message.kind == "ping":
        return {"pong": True}
    if message.kind == "reads" and message.entity is not None:
        return reads(message.entity, message.body_json())
    if message.kind == "change_request":
        if message.entity is None:
            raise Fail("conformance needs an entity")
        return change_request(message.entity, message.body_json())
    behaviour = BEHAVIOURS.get(message.kind)
    if behaviour is None:
        raise Fail(f"conformance does not handle {message.kind}")
    if message.entity is None:
        raise Fail("conformance needs an entity")
    return behaviour(message.entity)
