"""A small in-memory stand-in for the host, for the SDK's tests: it replaces
the generated import functions (which raise `NotImplementedError` outside a
component) with functions over a dict of entities."""

import bindings  # noqa: F401  (the path)

from componentize_py_types import Err
from wit_world.imports import coord, kb, log, model, types


class FakeHost:
    def __init__(self, agent="support"):
        self.agent = agent
        self.entities = {}  # "kind/id" -> types.Entity
        self.events = []
        self.logs = []  # (level name, message)
        self.commits = []  # (writes, reason)
        self.refusals = []  # WriteErrors to answer the next commits with
        self.before_commit = None  # called before each commit (to interfere)
        self.granted = []
        self.answers = []  # model answers: str, or a ModelError variant
        self.asked = []
        self.owners = {}  # field -> [writers]
        self.seq = 0
        self._saved = []

    # -- setup
    def put(self, ref, fields, by="alice"):
        key = f"{ref.kind}/{ref.id}"
        old = self.entities.get(key)
        version = old.version + 1 if old else 1
        merged = {f.name: f.value for f in (old.fields if old else [])}
        changes = []
        for name, v in fields.items():
            changes.append(types.FieldChange(name=name, before=merged.get(name), after=v))
            merged[name] = v
        self.entities[key] = types.Entity(
            kind=ref.kind,
            id=ref.id,
            version=version,
            fields=[types.Field(name=n, value=v) for n, v in merged.items()],
            updated_at_ms=1000 + version,
            updated_by=by,
        )
        self.seq += 1
        self.events.append(
            types.Event(
                seq=self.seq,
                at_ms=1000 + version,
                agent=by,
                entity=ref,
                version=version,
                kind="created" if old is None else "updated",
                changes=changes,
                reason="",
                invocation=0,
                detail=None,
            )
        )
        return self.entities[key]

    # -- the imports
    def _get(self, ref):
        return self.entities.get(f"{ref.kind}/{ref.id}")

    def _commit(self, writes, reason):
        if self.before_commit:
            self.before_commit(self)
        self.commits.append((writes, reason))
        if self.refusals:
            raise Err(self.refusals.pop(0))
        for w in writes:
            if not isinstance(w, types.Write):
                raise TypeError(f"not a types.Write: {w!r}")
            for f in w.set:
                writers = self.owners.get(f.name)
                if writers is not None and self.agent not in writers:
                    raise Err(
                        types.WriteError_Forbidden(types.Forbidden(entity=w.entity, field=f.name, agent=self.agent, writers=writers))
                    )
            cur = self._get(w.entity)
            ok = cur is None if isinstance(w.expect, types.Expect_Absent) else cur is not None and cur.version == w.expect.value
            if not ok:
                since = [e for e in self.events if e.entity == w.entity and isinstance(w.expect, types.Expect_Version) and e.version > w.expect.value]
                raise Err(
                    types.WriteError_Conflict(
                        types.Conflict(
                            entity=w.entity,
                            expected=w.expect,
                            current_version=cur.version if cur else None,
                            changed_by=", ".join(dict.fromkeys(e.agent for e in reversed(since))),
                            changed_at_ms=since[-1].at_ms if since else 0,
                            changed_fields=sorted({c.name for e in since for c in e.changes}),
                            events_since=since,
                        )
                    )
                )
        versions = []
        for w in writes:
            fields = {f.name: f.value for f in w.set}
            e = self.put(w.entity, fields, by=self.agent)
            if w.unset:
                e.fields = [f for f in e.fields if f.name not in w.unset]
            versions.append(e.version)
        return versions

    def _history(self, ref, after, limit):
        return [e for e in self.events if e.entity == ref and e.seq > after][:limit]

    def _recent(self, ref, within):
        return [e for e in self.events if e.entity == ref]

    def _log(self, level, message):
        self.logs.append((level.name.lower(), message))

    def _complete(self, request):
        self.asked.append(request)
        answer = self.answers.pop(0)
        if not isinstance(answer, str):
            raise Err(answer)
        return model.Completion(content=answer, model="fake", prompt_tokens=1, completion_tokens=1, finish_reason="stop")

    def install(self):
        patches = [
            (kb, "get", self._get),
            (kb, "commit", self._commit),
            (kb, "history", self._history),
            (kb, "recent", self._recent),
            (log, "log", self._log),
            (model, "complete", self._complete),
            (model, "granted", lambda: list(self.granted)),
        ]
        for module, name, fn in patches:
            self._saved.append((module, name, getattr(module, name)))
            setattr(module, name, fn)
        return self

    def uninstall(self):
        for module, name, fn in reversed(self._saved):
            setattr(module, name, fn)
        self._saved.clear()

    def warns(self):
        return [m for level, m in self.logs if level == "warn"]


def message(kind, entity=None, body="{}", invocation=1):
    return types.Message(kind=kind, entity=entity, body=body, invocation=invocation, causation=None)
