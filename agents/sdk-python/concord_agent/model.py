"""Language models through the host (``model.complete``).

``concord.toml`` declares the models (``[models.NAME]``) and grants them to
agents (``[agents.NAME] models``); the agent names a model, never a server or
a key. Each call is audited with the prompt's sha256 and the answer::

    from concord_agent import model

    if model.is_granted("default"):
        try:
            severity = model.ask("Answer with one word: low, medium or high.", summary)
        except model.ModelError as e:
            warn(f"{model.describe(e)}; using the rule")
"""

from __future__ import annotations

from typing import Any, List, Optional

from componentize_py_types import Err
from wit_world.imports import model as _wit

from . import AgentError

ChatMessage = _wit.ChatMessage
Request = _wit.Request
Completion = _wit.Completion


def describe(e: Any) -> str:
    """What went wrong, in words (a ``ModelError`` variant or exception)."""
    if isinstance(e, ModelError):
        e = e.error
    if isinstance(e, _wit.ModelError_Refused):
        return f"refused by the host: {e.value}"
    if isinstance(e, _wit.ModelError_Unavailable):
        return f"model unavailable: {e.value}"
    if isinstance(e, _wit.ModelError_Invalid):
        return f"invalid answer: {e.value}"
    raise TypeError(f"not a model-error: {e!r}")


class ModelError(AgentError):
    """``model.complete`` answered ``err``. ``.error`` is the generated
    variant; ``.kind`` is ``refused``, ``unavailable`` or ``invalid``;
    ``.reason`` its text; ``str(e)`` is :func:`describe`'s sentence."""

    def __init__(self, error: Any):
        self.error = error
        self.reason = error.value
        super().__init__(describe(error))

    @property
    def kind(self) -> str:
        return {
            _wit.ModelError_Refused: "refused",
            _wit.ModelError_Unavailable: "unavailable",
            _wit.ModelError_Invalid: "invalid",
        }[type(self.error)]


def message(role: str, content: str) -> ChatMessage:
    return _wit.ChatMessage(role=role, content=content)


def granted() -> List[str]:
    """The models this agent may call."""
    return list(_wit.granted())


def is_granted(name: str) -> bool:
    """Whether this agent may call the model ``name``."""
    return name in _wit.granted()


def complete(request: Request) -> Completion:
    """One chat completion. Raises :class:`ModelError`."""
    try:
        return _wit.complete(request)
    except Err as e:
        raise ModelError(e.value) from None


def ask(
    system: str,
    user: str,
    *,
    model: Optional[str] = None,
    temperature: Optional[float] = 0.0,
    max_tokens: Optional[int] = None,
) -> str:
    """Asks a model (``default`` unless named), with a system prompt and
    one user message, at temperature 0; returns the answer's text. Raises
    :class:`ModelError`."""
    request = _wit.Request(
        model=model,
        messages=[message("system", system), message("user", user)],
        temperature=temperature,
        max_tokens=max_tokens,
    )
    return complete(request).content
