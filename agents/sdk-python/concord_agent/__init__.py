"""Write Concord agents in Python.

The bindings (the module ``wit_world``) are generated from ``wit/`` (the
single source of truth) by componentize-py when an agent is built
(``scripts/build_python_agent.sh``); this package adds helpers over them so
that agents read like their decisions, as the Rust SDK (``agents/sdk``) does
for Rust agents. An agent is a module, ``app.py`` by default::

    from concord_agent import Fail, Write, describe, get, commit, handler, Conflict, Refused

    @handler
    def handle(message):
        target = message.entity or Fail.now("billing needs an entity")
        for _ in range(3):
            customer = get(target) or Fail.now("no such customer")
            try:
                versions = commit([Write.update(customer).set("invoice_status", "sent")], "monthly invoice")
                return f"invoiced {target} (version {versions[0]})"
            except Conflict:
                continue  # someone changed it since the read: re-read and reconsider
        raise Fail("the customer kept changing; not invoiced")

The handler returns the report (a ``str``; a ``dict`` or ``list`` is sent as
JSON text). To fail, raise: an :class:`AgentError` (``Fail``, an uncaught
``Refused``, ``HostError`` or ``ModelError``) fails with its message alone;
any other exception (a bug) fails with ``Type: message`` and the last lines
of its traceback, which the host audits.
"""

from __future__ import annotations

import json as _json
import math as _math
import sys as _sys
import traceback as _traceback
from typing import Any, Callable, Iterable, List, Optional, Union

from componentize_py_types import Err
from wit_world import exports as _exports
from wit_world.imports import coord, kb, log, types
from wit_world.imports import model as _wit_model

__all__ = [
    "AgentError",
    "Fail",
    "HostError",
    "Refused",
    "Conflict",
    "Forbidden",
    "Deferred",
    "Denied",
    "Pinned",
    "Leased",
    "StaleFence",
    "Invalid",
    "ModelError",
    "Entity",
    "Message",
    "Write",
    "entity",
    "ref_str",
    "value",
    "python_value",
    "value_str",
    "entity_field",
    "describe",
    "get",
    "commit",
    "history",
    "recent",
    "who_set",
    "act",
    "request_change",
    "resolve_change",
    "lease",
    "renew",
    "release",
    "changes_since_read",
    "trace",
    "debug",
    "info",
    "warn",
    "error",
    "model",
    "handler",
    "run_handler",
    "failure_text",
    "types",
    "kb",
    "coord",
    "log",
]

# --------------------------------------------------------------------------
# Entity references


def entity(kind_or_ref: str, id: Optional[str] = None) -> types.EntityRef:
    """``entity("customer/acme")`` or ``entity("customer", "acme")``."""
    if id is None:
        kind, sep, rest = kind_or_ref.partition("/")
        if not sep or not kind or not rest:
            raise ValueError(f"`{kind_or_ref}` is not `kind/id`")
        return types.EntityRef(kind=kind, id=rest)
    return types.EntityRef(kind=kind_or_ref, id=id)


def ref_str(ref: Any) -> str:
    """``kind/id``, as the Rust SDK displays an ``EntityRef``."""
    return f"{ref.kind}/{ref.id}"


# The generated dataclasses print as ``EntityRef(kind=..., id=...)``; make
# them read as they do everywhere else (``customer/acme``) in f-strings.
types.EntityRef.__str__ = ref_str  # type: ignore[method-assign]

# --------------------------------------------------------------------------
# Values

_VALUE_TYPES = (
    types.Value_Null,
    types.Value_Boolean,
    types.Value_Integer,
    types.Value_Float,
    types.Value_Text,
    types.Value_Json,
)


class Json:
    """Marks a Python object to be written as a ``json`` value (also for a
    string that holds JSON text already: ``Json.text('{"a":1}')``)."""

    def __init__(self, obj: Any = None, *, text: Optional[str] = None):
        self.text = text if text is not None else _json.dumps(obj, separators=(",", ":"))

    @classmethod
    def of_text(cls, text: str) -> "Json":
        return cls(text=text)


def value(v: Any) -> types.Value:
    """A Python value as a field value: ``None`` -> null, ``bool`` ->
    boolean, ``int`` -> integer, ``float`` -> float, ``str`` -> text,
    ``dict``/``list``/``tuple`` (or :class:`Json`) -> json. A value of the
    generated variant is kept as it is."""
    if isinstance(v, _VALUE_TYPES):
        return v
    if v is None:
        return types.Value_Null()
    if isinstance(v, bool):
        return types.Value_Boolean(v)
    if isinstance(v, int):
        return types.Value_Integer(v)
    if isinstance(v, float):
        return types.Value_Float(v)
    if isinstance(v, str):
        return types.Value_Text(v)
    if isinstance(v, Json):
        return types.Value_Json(v.text)
    if isinstance(v, (dict, list, tuple)):
        return types.Value_Json(_json.dumps(v, separators=(",", ":")))
    raise TypeError(f"no field value for a {type(v).__name__}: use None, bool, int, float, str, dict or list")


# The Rust SDK's name for the same mapping (from a JSON document's values).
value_of_json = value


def python_value(v: Optional[types.Value]) -> Any:
    """A field value as Python: null -> ``None``, json -> the parsed
    document (its text if it does not parse), the others as they are."""
    if v is None or isinstance(v, types.Value_Null):
        return None
    if isinstance(v, types.Value_Json):
        try:
            return _json.loads(v.value)
        except ValueError:
            return v.value
    return v.value


def _rust_float(x: float) -> str:
    # Rust's `Display` for f64: no exponent, no `.0` on whole numbers.
    if _math.isfinite(x) and x == int(x) and abs(x) < 1e16:
        return str(int(x))
    return repr(x)


def value_str(v: types.Value) -> str:
    """A value as the Rust SDK displays it: ``null``, ``true``, ``3``, the
    text itself, the JSON text."""
    if isinstance(v, types.Value_Null):
        return "null"
    if isinstance(v, types.Value_Boolean):
        return "true" if v.value else "false"
    if isinstance(v, types.Value_Float):
        return _rust_float(v.value)
    return str(v.value)


for _t in _VALUE_TYPES:
    _t.__str__ = value_str  # type: ignore[method-assign]

# --------------------------------------------------------------------------
# Entities, as read


def entity_field(e: Any, name: str) -> Optional[types.Value]:
    """The value of field ``name`` of an entity (raw or :class:`Entity`),
    or ``None`` when it has no such field."""
    for f in e.fields:
        if f.name == name:
            return f.value
    return None


class Entity:
    """An entity as read (``get``), with typed accessors; ``.raw`` is the
    generated record, and its attributes (``version``, ``updated_by``, ...)
    are read through."""

    __slots__ = ("raw",)

    def __init__(self, raw: types.Entity):
        self.raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    def __repr__(self) -> str:
        return f"Entity({self.raw!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entity) and other.raw == self.raw

    @property
    def reference(self) -> types.EntityRef:
        return types.EntityRef(kind=self.raw.kind, id=self.raw.id)

    ref = reference

    def __str__(self) -> str:
        return f"{self.raw.kind}/{self.raw.id}"

    def field(self, name: str) -> Optional[types.Value]:
        return entity_field(self.raw, name)

    def has(self, name: str) -> bool:
        return self.field(name) is not None

    def get(self, name: str, default: Any = None) -> Any:
        """The field as a Python value (see :func:`python_value`)."""
        v = self.field(name)
        return default if v is None else python_value(v)

    def as_dict(self) -> dict:
        return {f.name: python_value(f.value) for f in self.raw.fields}

    def _typed(self, name: str, cls: type) -> Any:
        v = self.field(name)
        return v.value if isinstance(v, cls) else None

    def text(self, name: str) -> Optional[str]:
        return self._typed(name, types.Value_Text)

    def integer(self, name: str) -> Optional[int]:
        return self._typed(name, types.Value_Integer)

    def float(self, name: str) -> Optional[float]:
        return self._typed(name, types.Value_Float)

    def boolean(self, name: str) -> Optional[bool]:
        return self._typed(name, types.Value_Boolean)

    def json(self, name: str) -> Any:
        v = self.field(name)
        return python_value(v) if isinstance(v, types.Value_Json) else None


def _raw_entity(e: Any) -> types.Entity:
    return e.raw if isinstance(e, Entity) else e


# --------------------------------------------------------------------------
# Writes


class Write:
    """A write, built like the Rust SDK's::

        Write.update(customer).set("status", "at_risk").unset("renewal_date")
        Write.create(entity("customer/acme")).set("name", "Acme")
    """

    __slots__ = ("entity", "expect", "fields", "unsets", "fence")

    def __init__(self, ref: types.EntityRef, expect: types.Expect):
        self.entity = ref
        self.expect = expect
        self.fields: List[types.Field] = []
        self.unsets: List[str] = []
        self.fence: Optional[int] = None

    @classmethod
    def create(cls, ref: Union[types.EntityRef, str]) -> "Write":
        """A write that creates the entity; a conflict if it exists."""
        if isinstance(ref, str):
            ref = entity(ref)
        return cls(ref, types.Expect_Absent())

    @classmethod
    def update(cls, read: Any) -> "Write":
        """A write based on what was read: a conflict if it changed since."""
        raw = _raw_entity(read)
        return cls(types.EntityRef(kind=raw.kind, id=raw.id), types.Expect_Version(raw.version))

    @classmethod
    def at(cls, ref: Union[types.EntityRef, str], version: int) -> "Write":
        """A write expecting ``ref`` at exactly ``version``."""
        if isinstance(ref, str):
            ref = entity(ref)
        return cls(ref, types.Expect_Version(version))

    def set(self, name: str, v: Any) -> "Write":
        self.fields.append(types.Field(name=name, value=value(v)))
        return self

    def unset(self, name: str) -> "Write":
        self.unsets.append(name)
        return self

    def fenced(self, token: int) -> "Write":
        """Carries a lease's fencing token."""
        self.fence = token
        return self

    def to_wit(self) -> types.Write:
        return types.Write(
            entity=self.entity,
            expect=self.expect,
            set=list(self.fields),
            unset=list(self.unsets),
            fence=self.fence,
        )

    def __repr__(self) -> str:
        return f"Write({self.to_wit()!r})"


def _wit_write(w: Any) -> types.Write:
    return w.to_wit() if isinstance(w, Write) else w


# --------------------------------------------------------------------------
# Errors


class AgentError(Exception):
    """A failure the agent means: raised out of the handler, the invocation
    fails with this message alone (no traceback)."""


class Fail(AgentError):
    """Fails the invocation with this text: ``raise Fail("no such customer")``."""

    @classmethod
    def now(cls, message: str) -> Any:
        """Raises at once; for ``x = maybe or Fail.now("why")``."""
        raise cls(message)


class HostError(AgentError):
    """A host call answered ``err`` with a text (``kb.get``, ``history``, ...)."""


class Refused(AgentError):
    """A refused commit, action, change request or lease. ``.error`` is the
    generated ``WriteError`` variant, ``.detail`` its payload (a ``Conflict``
    record, ...), whose attributes are read through (``e.changed_by``);
    ``str(e)`` is :func:`describe`'s sentence. Caught as ``Refused`` or as
    the subclass of its variant: ``Conflict``, ``Forbidden``, ``Deferred``,
    ``Denied``, ``Pinned``, ``Leased``, ``StaleFence``, ``Invalid``."""

    #: The variant's name in the WIT (`conflict`, `stale-fence`, ...).
    variant = ""

    def __init__(self, error: types.WriteError):
        self.error = error
        self.detail = error.value
        super().__init__(describe(error))

    def __getattr__(self, name: str) -> Any:
        if name in ("error", "detail"):
            raise AttributeError(name)
        return getattr(self.detail, name)

    @staticmethod
    def of(error: types.WriteError) -> "Refused":
        """The exception for a ``WriteError`` variant."""
        return _REFUSALS.get(type(error), Refused)(error)


class Conflict(Refused):
    variant = "conflict"


class Forbidden(Refused):
    variant = "forbidden"


class Deferred(Refused):
    variant = "deferred"


class Denied(Refused):
    variant = "denied"


class Pinned(Refused):
    variant = "pinned"


class Leased(Refused):
    variant = "leased"


class StaleFence(Refused):
    variant = "stale-fence"


class Invalid(Refused):
    variant = "invalid"

    @property
    def message(self) -> str:
        return self.detail


_REFUSALS = {
    types.WriteError_Conflict: Conflict,
    types.WriteError_Forbidden: Forbidden,
    types.WriteError_Deferred: Deferred,
    types.WriteError_Denied: Denied,
    types.WriteError_Pinned: Pinned,
    types.WriteError_Leased: Leased,
    types.WriteError_StaleFence: StaleFence,
    types.WriteError_Invalid: Invalid,
}


def _describe_write_error(error: types.WriteError) -> str:
    v = error.value
    if isinstance(error, types.WriteError_Conflict):
        now = "does not exist" if v.current_version is None else f"is at version {v.current_version}"
        fields = f" ({', '.join(v.changed_fields)})" if v.changed_fields else ""
        return f"conflict: {ref_str(v.entity)} {now}; last changed by {v.changed_by}{fields}"
    if isinstance(error, types.WriteError_Forbidden):
        # `coord.lease` by an agent that writes none of the entity's fields.
        if v.field == "*":
            return (
                f"forbidden: {v.agent} may not lease {ref_str(v.entity)}: it writes none of its fields; "
                f"those who may lease it: {', '.join(v.writers)} "
                f"(more are granted in `[kinds.{v.entity.kind}] leases`)"
            )
        # `coord.act` of a kind this agent may not request.
        if v.field.startswith("action:"):
            who = (
                f"who may: {', '.join(v.writers)}"
                if v.writers
                else "the kind is not declared under [actions.kinds] in concord.toml"
            )
            return f"forbidden: {v.agent} may not request action `{v.field[len('action:'):]}` on {ref_str(v.entity)}; {who}"
        return f"forbidden: {v.agent} may not write {ref_str(v.entity)}.{v.field}; it belongs to {', '.join(v.writers)}"
    if isinstance(error, types.WriteError_Deferred):
        return f"deferred by rule `{v.rule}` on {ref_str(v.entity)}: {v.reason}"
    if isinstance(error, types.WriteError_Denied):
        return f"denied by rule `{v.rule}` on {ref_str(v.entity)}: {v.reason}"
    if isinstance(error, types.WriteError_Pinned):
        return f"pinned: {ref_str(v.entity)}.{v.field} is pinned by {v.by}: {v.reason}"
    if isinstance(error, types.WriteError_Leased):
        return f"leased: {ref_str(v.entity)} is leased by {v.holder} until {v.expires_at_ms} ms"
    if isinstance(error, types.WriteError_StaleFence):
        if v.current is not None:
            return f"stale fence: token {v.token} for {ref_str(v.entity)} is superseded by {v.current}"
        return f"stale fence: token {v.token} for {ref_str(v.entity)} has expired, or was released or broken"
    if isinstance(error, types.WriteError_Invalid):
        return f"invalid: {v}"
    raise TypeError(f"not a write-error: {error!r}")


def describe(error: Any) -> str:
    """Explains a refusal in one sentence, as the Rust SDK's ``describe``:
    takes a ``WriteError`` variant or a :class:`Refused`; also a model error
    (variant or :class:`ModelError`), as ``model.describe``."""
    if isinstance(error, Refused):
        return _describe_write_error(error.error)
    if isinstance(error, model.ModelError):
        return str(error)
    if isinstance(error, _MODEL_ERROR_TYPES):
        return model.describe(error)
    return _describe_write_error(error)


_MODEL_ERROR_TYPES = (_wit_model.ModelError_Refused, _wit_model.ModelError_Unavailable, _wit_model.ModelError_Invalid)

# --------------------------------------------------------------------------
# The knowledge base


def _ref(ref: Any) -> types.EntityRef:
    if isinstance(ref, str):
        return entity(ref)
    if isinstance(ref, Entity):
        return ref.reference
    return ref


def get(ref: Any) -> Optional[Entity]:
    """The entity's current state (an :class:`Entity`), or ``None``.
    Raises :class:`HostError`."""
    try:
        raw = kb.get(_ref(ref))
    except Err as e:
        raise HostError(e.value) from None
    return None if raw is None else Entity(raw)


def commit(writes: Union[Write, types.Write, Iterable[Any]], reason: str) -> List[int]:
    """Commits all the writes or none; returns each entity's new version, in
    order. Raises the :class:`Refused` subclass of the refusal."""
    if isinstance(writes, (Write, types.Write)):
        writes = [writes]
    try:
        return kb.commit([_wit_write(w) for w in writes], reason)
    except Err as e:
        raise Refused.of(e.value) from None


def history(ref: Any, after_seq: int = 0, limit: int = 1000) -> List[types.Event]:
    try:
        return kb.history(_ref(ref), after_seq, limit)
    except Err as e:
        raise HostError(e.value) from None


def recent(ref: Any, within_ms: int) -> List[types.Event]:
    try:
        return kb.recent(_ref(ref), within_ms)
    except Err as e:
        raise HostError(e.value) from None


_U64_MAX = (1 << 64) - 1


def who_set(ref: Any, field: str) -> Optional[str]:
    """Who last changed ``field`` of the entity, from its history."""
    try:
        events = recent(ref, _U64_MAX)
    except HostError:
        return None
    for e in reversed(events):
        if any(c.name == field for c in e.changes):
            return e.agent
    return None


# --------------------------------------------------------------------------
# Coordination


def _fields(proposed: Any) -> List[types.Field]:
    if isinstance(proposed, dict):
        return [types.Field(name=k, value=value(v)) for k, v in proposed.items()]
    return [f if isinstance(f, types.Field) else types.Field(name=f[0], value=value(f[1])) for f in proposed]


def act(kind: str, payload: Any, ref: Any, based_on: int, idempotency_key: Optional[str] = None) -> int:
    """A guarded side effect; returns the action id. ``payload`` is JSON
    text, or an object to send as JSON. Raises :class:`Refused`."""
    if not isinstance(payload, str):
        payload = _json.dumps(payload, separators=(",", ":"))
    try:
        return coord.act(kind, payload, _ref(ref), based_on, idempotency_key)
    except Err as e:
        raise Refused.of(e.value) from None


def request_change(owner: str, ref: Any, proposed: Any, reason: str) -> int:
    """Asks ``owner`` to change fields it owns; ``proposed`` is a dict (or
    ``Field`` records). Returns the request id. Raises :class:`Refused`."""
    try:
        return coord.request_change(owner, _ref(ref), _fields(proposed), reason)
    except Err as e:
        raise Refused.of(e.value) from None


def resolve_change(request: int, applied: bool, reason: str) -> None:
    try:
        coord.resolve_change(request, applied, reason)
    except Err as e:
        raise HostError(e.value) from None


def lease(ref: Any, ttl_ms: int) -> types.LeaseGrant:
    try:
        return coord.lease(_ref(ref), ttl_ms)
    except Err as e:
        raise Refused.of(e.value) from None


def renew(ref: Any, token: int, ttl_ms: int) -> types.LeaseGrant:
    try:
        return coord.renew(_ref(ref), token, ttl_ms)
    except Err as e:
        raise Refused.of(e.value) from None


def release(ref: Any, token: int) -> bool:
    return coord.release(_ref(ref), token)


def changes_since_read(ref: Any) -> List[types.Event]:
    try:
        return coord.changes_since_read(_ref(ref))
    except Err as e:
        raise HostError(e.value) from None


# --------------------------------------------------------------------------
# Logging


def trace(message: str) -> None:
    log.log(log.Level.TRACE, message)


def debug(message: str) -> None:
    log.log(log.Level.DEBUG, message)


def info(message: str) -> None:
    log.log(log.Level.INFO, message)


def warn(message: str) -> None:
    log.log(log.Level.WARN, message)


def error(message: str) -> None:
    log.log(log.Level.ERROR, message)


# --------------------------------------------------------------------------
# Messages and the handler


class Message:
    """The message the handler gets: the generated record's attributes
    (``kind``, ``entity``, ``body``, ``invocation``, ``causation``) and the
    body parsed."""

    __slots__ = ("raw",)

    def __init__(self, raw: types.Message):
        self.raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    def __repr__(self) -> str:
        return f"Message({self.raw!r})"

    def body_json(self) -> Any:
        """The body as JSON (``{}`` if it does not parse)."""
        try:
            return _json.loads(self.raw.body)
        except ValueError:
            return {}

    def body_field(self, name: str, default: Any = None) -> Any:
        body = self.body_json()
        return body.get(name, default) if isinstance(body, dict) else default


#: The most traceback lines a bug's error text carries.
TRACEBACK_LINES = 8


def failure_text(e: BaseException) -> str:
    """The error text for an exception out of the handler: an
    :class:`AgentError`'s message alone; for anything else (a bug),
    ``Type: message`` and the innermost frames of its traceback."""
    if isinstance(e, AgentError):
        return str(e)
    if isinstance(e, Err):
        return e.value if isinstance(e.value, str) else repr(e.value)
    head = "".join(_traceback.format_exception_only(type(e), e)).strip()
    frames = "".join(_traceback.format_tb(e.__traceback__)).rstrip("\n").split("\n")
    frames = [line for line in frames if line.strip()]
    kept = frames[-TRACEBACK_LINES:]
    more = "" if len(kept) == len(frames) else ", innermost frames"
    return f"{head}\nTraceback (most recent call last{more}):\n" + "\n".join(kept)


def _report(result: Any) -> str:
    if result is None:
        return ""
    if isinstance(result, str):
        return result
    if isinstance(result, (dict, list, tuple, int, float, bool)):
        return _json.dumps(result, separators=(",", ":"))
    return str(result)


def run_handler(fn: Callable[[Message], Any], raw: types.Message) -> str:
    """Runs ``fn`` on a message as the export does: returns the report, or
    raises ``Err(text)`` (the invocation's error) for any exception."""
    try:
        return _report(fn(Message(raw)))
    except BaseException as e:  # noqa: BLE001: every failure becomes the error text
        text = failure_text(e)
        if not isinstance(e, (AgentError, Err)):
            # Also to stderr (the host log), whole.
            try:
                _traceback.print_exception(e, file=_sys.stderr)
            except Exception:  # noqa: BLE001
                pass
        raise Err(text) from None


def handler(fn: Callable[[Message], Any]) -> Callable[[Message], Any]:
    """Makes ``fn(message)`` the agent's handler: defines the export class
    (``Handler``) in ``fn``'s module, where componentize-py looks for it.
    ``fn`` gets a :class:`Message` and returns the report; it fails by
    raising (see :func:`failure_text`)."""

    class Handler(_exports.Handler):
        def handle(self, message: types.Message) -> str:
            return run_handler(fn, message)

    Handler.__module__ = fn.__module__
    Handler.__qualname__ = "Handler"
    # The module being defined (the decorator runs in its body), or the one
    # `fn` says it belongs to.
    caller = _sys._getframe(1).f_globals
    if caller.get("__name__") == fn.__module__:
        caller["Handler"] = Handler
    else:
        module = _sys.modules.get(fn.__module__)
        if module is not None:
            module.Handler = Handler  # type: ignore[attr-defined]
    fn.Handler = Handler  # type: ignore[attr-defined]
    return fn


# Imported here, with everything it needs from this module defined: the
# component holds only what was imported when it was built.
from . import model  # noqa: E402
