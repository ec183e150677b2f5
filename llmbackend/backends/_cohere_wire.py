"""The Cohere v2 chat wire format: request bodies out, answers and stream events in.

Pure functions and a small state object, no I/O. Shapes that are wrong raise
:class:`MalformedResponseError` naming what was wrong, never a bare ``KeyError``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from llmbackend.errors import ContentFilteredError, MalformedResponseError
from llmbackend.models import (
    ChatMessage,
    ChatRequest,
    FinishEvent,
    FinishReason,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    Usage,
    UsageEvent,
)

__all__ = [
    "Answer",
    "StreamState",
    "decode_event",
    "encode_chat",
    "encode_message",
    "encode_tool",
    "finish_reason",
    "parse_answer",
    "parse_usage",
]

_FINISH_REASONS: Mapping[str, FinishReason] = {
    "COMPLETE": FinishReason.STOP,
    "STOP_SEQUENCE": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "TOOL_CALL": FinishReason.TOOL_CALLS,
    "ERROR": FinishReason.ERROR,
    "TIMEOUT": FinishReason.ERROR,
    "ERROR_TOXIC": FinishReason.CONTENT_FILTER,
    "ERROR_LIMIT": FinishReason.LENGTH,
}
_PARAMETERS: Mapping[str, str] = {
    "temperature": "temperature",
    "top_p": "p",
    "max_tokens": "max_tokens",
    "stop": "stop_sequences",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}


def _malformed(backend: str, what: str) -> MalformedResponseError:
    return MalformedResponseError(what, backend=backend)


def _as_dict(value: Any, backend: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(backend, f"{what} is not a JSON object: {str(value)[:80]!r}")
    return value


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- requests ------------------------------------------------------------------------------


def encode_message(message: ChatMessage) -> dict[str, Any]:
    """One v2 chat message. Text sent beside tool calls travels as the ``tool_plan``."""
    encoded: dict[str, Any] = {"role": message.role}
    if message.role == "assistant" and message.tool_calls:
        if message.content:
            encoded["tool_plan"] = message.content
        encoded["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments or "{}"},
            }
            for call in message.tool_calls
        ]
        return encoded
    encoded["content"] = message.content or ""
    if message.role == "tool":
        encoded["tool_call_id"] = message.tool_call_id or ""
    return encoded


def encode_tool(tool: ToolDefinition) -> dict[str, Any]:
    """One tool in the v2 ``{"type": "function", "function": {...}}`` shape."""
    function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.parameters)}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _tool_choice(
    choice: str | Mapping[str, Any], tools: list[dict[str, Any]]
) -> tuple[str | None, list[dict[str, Any]]]:
    """(``tool_choice``, tools): v2 knows only REQUIRED and NONE, so a named function is
    expressed as REQUIRED over a tool list narrowed to that function."""
    if isinstance(choice, str):
        lowered = choice.lower()
        if lowered in ("required", "any"):
            return "REQUIRED", tools
        return ("NONE" if lowered == "none" else None), tools
    function = choice.get("function")
    name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
    narrowed = [tool for tool in tools if tool["function"]["name"] == name]
    return "REQUIRED", narrowed or tools


def _response_format(value: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI-style response format in v2's shape (``json_object`` with a schema)."""
    kind = value.get("type")
    if kind == "json_schema":
        wrapper = value.get("json_schema")
        schema = wrapper.get("schema") if isinstance(wrapper, Mapping) else None
        encoded: dict[str, Any] = {"type": "json_object"}
        if isinstance(schema, Mapping):
            encoded["json_schema"] = dict(schema)
        return encoded
    return dict(value)


def encode_chat(
    request: ChatRequest, model: str, parameters: Mapping[str, Any], *, stream: bool
) -> dict[str, Any]:
    """The body of a ``POST /v2/chat`` call."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [encode_message(message) for message in request.messages],
    }
    body.update(
        (_PARAMETERS[key], value) for key, value in parameters.items() if key in _PARAMETERS
    )
    tools = [encode_tool(tool) for tool in request.tools]
    if request.tool_choice is not None and tools:
        choice, tools = _tool_choice(request.tool_choice, tools)
        if choice is not None:
            body["tool_choice"] = choice
    if tools:
        body["tools"] = tools
    if request.response_format is not None:
        body["response_format"] = _response_format(request.response_format)
    body["stream"] = stream
    return body


# --- answers -------------------------------------------------------------------------------


def finish_reason(raw: Any) -> FinishReason | None:
    """The normalised finish reason (``None`` when absent or unknown; keep ``raw`` beside it)."""
    return _FINISH_REASONS.get(raw) if isinstance(raw, str) else None


def parse_usage(raw: Any) -> Usage:
    """Token counts: ``usage.tokens`` (what the model processed), else ``billed_units``."""
    if not isinstance(raw, dict):
        return Usage()
    counts = raw.get("tokens")
    if not isinstance(counts, dict):
        counts = raw.get("billed_units")
    if not isinstance(counts, dict):
        return Usage(cached_prompt_tokens=_int(raw.get("cached_tokens")))
    return Usage.of(
        _int(counts.get("input_tokens")),
        _int(counts.get("output_tokens")),
        cached=_int(raw.get("cached_tokens")),
    )


def _filtered(raw_reason: str, backend: str) -> ContentFilteredError:
    return ContentFilteredError(
        f"the answer was blocked: {raw_reason}", backend=backend, code=raw_reason, retryable=False
    )


def _tool_calls(message: Mapping[str, Any], backend: str) -> tuple[ToolCall, ...]:
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise _malformed(backend, "message.tool_calls is not a list")
    calls: list[ToolCall] = []
    for raw in raw_calls:
        call = _as_dict(raw, backend, "a tool call")
        function = _as_dict(call.get("function"), backend, "tool_call.function")
        name = function.get("name")
        if not isinstance(name, str):
            raise _malformed(backend, "a tool call has no function name")
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments if arguments is not None else {})
        calls.append(ToolCall(id=str(call.get("id") or ""), name=name, arguments=arguments))
    return tuple(calls)


@attrs.frozen
class Answer:
    """A whole ``/v2/chat`` answer."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    raw_reason: str | None
    usage: Usage


def parse_answer(body: Any, backend: str) -> Answer:
    """Parse a ``/v2/chat`` answer. Text is the ``text`` content items joined (thinking
    items and the ``tool_plan`` are not answer text)."""
    answer = _as_dict(body, backend, "the chat answer")
    message = _as_dict(answer.get("message"), backend, "the answer's message")
    content = message.get("content") or []
    if not isinstance(content, list):
        raise _malformed(backend, "message.content is not a list")
    texts = [
        item["text"]
        for item in (_as_dict(raw, backend, "a content item") for raw in content)
        if item.get("type", "text") == "text" and isinstance(item.get("text"), str)
    ]
    calls = _tool_calls(message, backend)
    raw_reason = answer.get("finish_reason")
    raw_reason = raw_reason if isinstance(raw_reason, str) else None
    if finish_reason(raw_reason) is FinishReason.CONTENT_FILTER and not texts and not calls:
        # An empty answer would pass for a real one: say what blocked it instead.
        raise _filtered(raw_reason or "", backend)
    return Answer("".join(texts), calls, raw_reason, parse_usage(answer.get("usage")))


# --- streams ------------------------------------------------------------------------------


def decode_event(data: str, backend: str) -> dict[str, Any]:
    """One SSE ``data:`` payload as a JSON object."""
    try:
        event = json.loads(data)
    except ValueError as exc:
        raise _malformed(backend, f"malformed stream event (not JSON): {data[:80]!r}") from exc
    return _as_dict(event, backend, "a stream event")


def _delta_message(event: Mapping[str, Any], backend: str) -> dict[str, Any]:
    delta = _as_dict(event.get("delta") or {}, backend, f"the {event.get('type')} delta")
    return _as_dict(delta.get("message") or {}, backend, f"the {event.get('type')} message")


@attrs.define
class StreamState:
    """What one streamed answer has said so far; turns v2 events into stream events.

    ``tool-plan-delta`` events are not text: the plan is the model's note on which tools it
    will call, and the non-streamed answer keeps it out of ``content`` too.
    """

    backend: str
    model: str
    raw_reason: str | None = None
    finished: bool = False
    answered: bool = False

    def feed(self, event: Mapping[str, Any]) -> list[StreamEvent]:
        """The stream events of one decoded v2 event."""
        kind = event.get("type")
        index = event.get("index")
        index = index if isinstance(index, int) else 0
        events: list[StreamEvent] = []
        if kind in ("content-start", "content-delta"):
            content = _delta_message(event, self.backend).get("content") or {}
            text = content.get("text") if isinstance(content, dict) else None
            if isinstance(text, str) and text:
                events.append(TextDelta(text=text))
        elif kind in ("tool-call-start", "tool-call-delta"):
            call = _delta_message(event, self.backend).get("tool_calls") or {}
            call = _as_dict(call, self.backend, f"the {kind} tool call")
            function = _as_dict(call.get("function") or {}, self.backend, "a tool-call function")
            name, call_id = function.get("name"), call.get("id")
            arguments = function.get("arguments")
            events.append(
                ToolCallDelta(
                    index=index,
                    id=call_id if isinstance(call_id, str) else None,
                    name=name if isinstance(name, str) else None,
                    arguments_delta=arguments if isinstance(arguments, str) else "",
                )
            )
        elif kind == "message-end":
            delta = _as_dict(event.get("delta") or {}, self.backend, "the message-end delta")
            reason = delta.get("finish_reason")
            self.raw_reason = reason if isinstance(reason, str) else None
            self.finished = True
            if isinstance(delta.get("usage"), dict):
                events.append(UsageEvent(usage=parse_usage(delta["usage"])))
        self.answered = self.answered or any(
            isinstance(item, TextDelta | ToolCallDelta) for item in events
        )
        return events

    def finish(self) -> FinishEvent:
        """The closing event (or the content-filter error an empty, blocked answer is)."""
        reason = finish_reason(self.raw_reason)
        if reason is FinishReason.CONTENT_FILTER and not self.answered:
            raise _filtered(self.raw_reason or "", self.backend)
        return FinishEvent(
            reason=reason, raw_reason=self.raw_reason, backend=self.backend, model=self.model
        )
