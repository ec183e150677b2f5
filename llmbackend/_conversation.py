"""What quick calls and chat sessions send.

A quick call's keywords are checked (an unknown one is a ``TypeError`` naming it and every
accepted one) and mapped onto ``ChatRequest`` fields. A :class:`Conversation` is a chat
session's state: history, parameters and totals, and the turns made from them.

The system prompt is not part of the history: it is sent first on every turn. A turn adds
the user message and the answer to the history only when the answer is complete, so a
failed, cut or abandoned turn leaves the history as it was. Each turn remembers the history
version it started from; an answer is added only onto that same history, so two turns run
at once (or ``clear()`` during a turn) raise instead of interleaving.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from llmbackend._config_problems import find_suggestion
from llmbackend.models import ChatMessage, ChatRequest, ToolCall, ToolDefinition

if TYPE_CHECKING:
    from llmbackend._answer import Answer
    from llmbackend._session_file import SessionData

__all__ = [
    "PARAMETERS",
    "Conversation",
    "Turn",
    "build_request",
    "check_params",
    "check_prompt",
    "new_conversation",
]

#: ``ChatRequest`` fields set from a quick call's keywords. ``messages`` is built by the call,
#: ``model`` is a keyword of its own and ``preferred_backend`` is spelt ``backend=``.
PARAMETERS: tuple[str, ...] = tuple(
    sorted(
        field.name
        for field in attrs.fields(ChatRequest)
        if field.name not in {"messages", "model", "preferred_backend"}
    )
)
_ACCEPTED = frozenset(PARAMETERS)


def check_params(call: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` without ``None`` values; ``TypeError`` naming any unknown keyword (with
    a suggestion and every accepted one) or a tool that is not a ``ToolDefinition``."""
    unknown = sorted(name for name in params if name not in _ACCEPTED)
    if unknown:
        name = unknown[0]
        if name == "preferred_backend":
            hint = "; use backend= to name the backend to try first"
        elif (suggestion := find_suggestion(name, PARAMETERS)) is not None:
            hint = f"; did you mean {suggestion!r}?"
        else:
            hint = ""
        raise TypeError(
            f"{call} got an unexpected keyword argument {name!r}{hint}\n"
            f"  request parameters (besides system, model and backend): {', '.join(PARAMETERS)}"
        )
    chosen = {name: value for name, value in params.items() if value is not None}
    if "tools" in chosen:
        chosen["tools"] = _tools(call, chosen["tools"])
    return chosen


def _tools(call: str, tools: Iterable[object]) -> tuple[ToolDefinition, ...]:
    if isinstance(tools, ToolDefinition | str | Mapping) or not isinstance(tools, Iterable):
        raise TypeError(f"{call}: tools must be a list of ToolDefinition")
    checked: list[ToolDefinition] = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, ToolDefinition):
            raise TypeError(
                f"{call}: tools[{index}] is a {type(tool).__name__}, not a ToolDefinition "
                "(from llmbackend import ToolDefinition)"
            )
        checked.append(tool)
    return tuple(checked)


def build_request(
    messages: Sequence[ChatMessage],
    *,
    model: str | None,
    backend: str | None,
    params: Mapping[str, Any],
) -> ChatRequest:
    """The request for ``messages`` with already checked ``params``."""
    return ChatRequest(messages=messages, model=model, preferred_backend=backend, **params)


def check_prompt(call: str, prompt: object) -> str:
    """``prompt`` when it is text; a clear ``TypeError`` otherwise."""
    if not isinstance(prompt, str):
        raise TypeError(f"{call}: the prompt must be a str, not {type(prompt).__name__}")
    return prompt


@attrs.frozen
class Turn:
    """One turn: the request to send, the history version it was built from, and the
    messages it adds (before the answer) when it completes."""

    request: ChatRequest
    version: int
    new: tuple[ChatMessage, ...]


def _normalise(call: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Checked parameters in the form a request holds them (tuples, enums): what is sent
    and what a saved session stores. Bad values fail here, not on the first turn."""
    checked = check_params(call, params)
    probe = ChatRequest(messages=(ChatMessage.user(""),), **checked)
    return {name: getattr(probe, name) for name in checked}


@attrs.define
class Conversation:
    system: str | None
    model: str | None
    backend: str | None
    params: dict[str, Any]
    messages: list[ChatMessage] = attrs.field(factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = None
    turns: int = 0
    #: Bumped by every change of ``messages``.
    version: int = 0

    def pending_tool_calls(self) -> tuple[ToolCall, ...]:
        answered: set[str | None] = set()
        for message in reversed(self.messages):
            if message.role == "tool":
                answered.add(message.tool_call_id)
                continue
            if message.role == "assistant":
                return tuple(call for call in message.tool_calls if call.id not in answered)
            break
        return ()

    def user_turn(self, call: str, prompt: object) -> Turn:
        text = check_prompt(call, prompt)
        if pending := self.pending_tool_calls():
            raise ValueError(
                f"{call}: the model's tool calls {_ids(pending)} have no result yet; add "
                "each with add_tool_result(tool_call_id, content), then call resume()"
            )
        return self._turn((ChatMessage.user(text),))

    def resume_turn(self, call: str) -> Turn:
        if pending := self.pending_tool_calls():
            raise ValueError(
                f"{call}: the tool calls {_ids(pending)} still have no result; add them "
                "with add_tool_result(tool_call_id, content) first"
            )
        if not self.messages or self.messages[-1].role != "tool":
            raise ValueError(
                f"{call}: nothing to resume; resume() continues after add_tool_result(), "
                "use send(prompt) to ask something"
            )
        return self._turn(())

    def _turn(self, new: tuple[ChatMessage, ...]) -> Turn:
        system = (ChatMessage.system(self.system),) if self.system else ()
        request = build_request(
            (*system, *self.messages, *new),
            model=self.model,
            backend=self.backend,
            params=self.params,
        )
        return Turn(request=request, version=self.version, new=new)

    def commit(self, turn: Turn, answer: Answer) -> None:
        if turn.version != self.version:
            raise RuntimeError(
                "the conversation changed while this answer was produced (another turn, "
                "add_tool_result() or clear()); the answer was not added to the history"
            )
        # An answer that only calls tools has no text: the providers want null, not "".
        content = answer.text if answer.text or not answer.tool_calls else None
        self.messages.extend(
            (*turn.new, ChatMessage.assistant(content, tool_calls=answer.tool_calls))
        )
        self.version += 1
        self.prompt_tokens += answer.prompt_tokens
        self.completion_tokens += answer.completion_tokens
        self.total_tokens += answer.total_tokens
        if answer.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + answer.cost_usd
        self.turns += 1

    def add_tool_result(self, tool_call_id: str, content: object) -> None:
        pending = self.pending_tool_calls()
        call = next((call for call in pending if call.id == tool_call_id), None)
        if call is None:
            waiting = f"waiting: {_ids(pending)}" if pending else "no tool call is waiting"
            raise ValueError(
                f"add_tool_result(): no pending tool call {tool_call_id!r} ({waiting})"
            )
        text = content if isinstance(content, str) else json.dumps(content)
        # No name: OpenAI's tool message has none; Gemini and Ollama look it up by call id.
        self.messages.append(ChatMessage.tool(text, tool_call_id=tool_call_id))
        self.version += 1

    def clear(self) -> None:
        self.messages.clear()
        self.version += 1

    def data(self) -> SessionData:
        from llmbackend._session_file import VERSION, SessionData, Totals

        totals = Totals(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.total_tokens,
            cost_usd=self.cost_usd,
            turns=self.turns,
        )
        return SessionData(
            version=VERSION,
            system=self.system,
            model=self.model,
            backend=self.backend,
            params=dict(self.params),
            messages=tuple(self.messages),
            totals=totals,
        )

    @classmethod
    def of(cls, data: SessionData) -> Conversation:
        totals = data.totals
        return cls(
            system=data.system,
            model=data.model,
            backend=data.backend,
            params=dict(data.params),
            messages=list(data.messages),
            prompt_tokens=totals.prompt_tokens,
            completion_tokens=totals.completion_tokens,
            total_tokens=totals.total_tokens,
            cost_usd=totals.cost_usd,
            turns=totals.turns,
        )


def _ids(calls: Sequence[ToolCall]) -> str:
    return ", ".join(f"{call.id!r} ({call.name})" for call in calls)


def new_conversation(
    call: str, system: str | None, model: str | None, backend: str | None, params: Mapping[str, Any]
) -> Conversation:
    if system is not None and not isinstance(system, str):
        raise TypeError(f"{call}: the system prompt must be a str, not {type(system).__name__}")
    return Conversation(
        system=system, model=model, backend=backend, params=_normalise(call, params)
    )
