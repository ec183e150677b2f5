"""The OpenAI chat-completions wire format: request bodies out, answers and stream chunks in.

Pure functions, no I/O, so the backend stays small and the parsing is testable on its own.
Every shape check raises :class:`MalformedResponseError` with a message naming what was wrong,
never a bare ``KeyError``.
"""

from __future__ import annotations

import array
import base64
import binascii
import json
import sys
from collections.abc import Iterator, Mapping
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
    "StreamState",
    "decode_chunk",
    "decode_embedding",
    "encode_chat",
    "encode_message",
    "encode_tool",
    "filtered_error",
    "finish_reason",
    "parse_chat_answer",
    "parse_tool_call_deltas",
    "parse_usage",
    "refusal_error",
]

_FINISH_REASONS: Mapping[str, FinishReason] = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    # The legacy `functions` API reports this; it is a tool call in today's vocabulary.
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
}


def _malformed(backend: str, what: str, status: int | None = None) -> MalformedResponseError:
    return MalformedResponseError(what, backend=backend, status=status)


def _as_dict(value: Any, backend: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(backend, f"{what} is not a JSON object: {str(value)[:80]!r}")
    return value


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- requests ------------------------------------------------------------------------------


def encode_message(message: ChatMessage) -> dict[str, Any]:
    """One chat message in OpenAI's shape."""
    encoded: dict[str, Any] = {"role": message.role}
    if message.role == "assistant" and message.tool_calls:
        # An assistant turn that only called tools carries no content at all.
        if message.content is not None:
            encoded["content"] = message.content
        encoded["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    else:
        encoded["content"] = message.content or ""
    if message.role == "tool" and message.tool_call_id is not None:
        encoded["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        encoded["name"] = message.name
    return encoded


def encode_tool(tool: ToolDefinition) -> dict[str, Any]:
    """One tool definition in OpenAI's ``{"type": "function", "function": {...}}`` shape."""
    function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.parameters)}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def encode_chat(request: ChatRequest, model: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The body of a non-streaming ``chat/completions`` call."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [encode_message(message) for message in request.messages],
    }
    body.update(parameters)
    if request.tools:
        body["tools"] = [encode_tool(tool) for tool in request.tools]
    if request.tool_choice is not None:
        body["tool_choice"] = (
            request.tool_choice
            if isinstance(request.tool_choice, str)
            else dict(request.tool_choice)
        )
    if request.response_format is not None:
        body["response_format"] = dict(request.response_format)
    return body


# --- answers -------------------------------------------------------------------------------


def finish_reason(raw: Any) -> FinishReason | None:
    """The normalised finish reason (``None`` when absent or unknown; keep ``raw`` beside it)."""
    return _FINISH_REASONS.get(raw) if isinstance(raw, str) else None


def parse_usage(raw: Any) -> Usage:
    """Token counts from a ``usage`` object (zeros for anything missing)."""
    if not isinstance(raw, dict):
        return Usage()
    details = raw.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    prompt = _int(raw.get("prompt_tokens"))
    completion = _int(raw.get("completion_tokens"))
    total = raw.get("total_tokens")
    return Usage.of(prompt, completion, _int(total) if total is not None else None, cached)


def _arguments(value: Any) -> str:
    # Some OpenAI-compatible servers send the arguments as an object instead of JSON text.
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _tool_calls(message: Mapping[str, Any], backend: str) -> tuple[ToolCall, ...]:
    calls: list[ToolCall] = []
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise _malformed(backend, "message.tool_calls is not a list")
    for raw in raw_calls:
        call = _as_dict(raw, backend, "a tool call")
        function = _as_dict(call.get("function"), backend, "tool_call.function")
        name = function.get("name")
        if not isinstance(name, str):
            raise _malformed(backend, "a tool call has no function name")
        calls.append(
            ToolCall(
                id=str(call.get("id") or ""),
                name=name,
                arguments=_arguments(function.get("arguments")) or "{}",
            )
        )
    legacy = message.get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("name"), str):
        # The legacy `functions` API names no call id; "" says so honestly.
        calls.append(
            ToolCall(id="", name=legacy["name"], arguments=_arguments(legacy.get("arguments")))
        )
    return tuple(calls)


def refusal_error(refusal: str, backend: str) -> ContentFilteredError:
    """A model refusal (an assistant ``refusal`` with no content) as the SDK error."""
    return ContentFilteredError(
        f"the model refused: {refusal[:300]}", backend=backend, code="refusal", retryable=False
    )


def filtered_error(backend: str) -> ContentFilteredError:
    """An answer the provider's filter withheld entirely (finish reason content_filter)."""
    return ContentFilteredError(
        "the provider's content filter withheld the answer", backend=backend, code="content_filter"
    )


def parse_chat_answer(
    body: Any, backend: str
) -> tuple[str, str | None, tuple[ToolCall, ...], str | None, Usage]:
    """(content, model, tool calls, raw finish reason, usage) from a chat-completions body."""
    answer = _as_dict(body, backend, "the chat answer")
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _malformed(backend, "the chat answer has no choices")
    choice = _as_dict(choices[0], backend, "choices[0]")
    message = _as_dict(choice.get("message"), backend, "choices[0].message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise _malformed(backend, "choices[0].message.content is not a string")
    tool_calls = _tool_calls(message, backend)
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal and not content and not tool_calls:
        raise refusal_error(refusal, backend)
    raw_reason = choice.get("finish_reason")
    if raw_reason == "content_filter" and not content and not tool_calls:
        raise filtered_error(backend)
    model = answer.get("model")
    return (
        content or "",
        model if isinstance(model, str) else None,
        tool_calls,
        raw_reason if isinstance(raw_reason, str) else None,
        parse_usage(answer.get("usage")),
    )


def parse_tool_call_deltas(delta: Mapping[str, Any], backend: str) -> Iterator[ToolCallDelta]:
    """Tool-call fragments of one streamed ``delta`` (including the legacy ``function_call``)."""
    raw_calls = delta.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise _malformed(backend, "delta.tool_calls is not a list")
    for position, raw in enumerate(raw_calls):
        call = _as_dict(raw, backend, "a tool-call delta")
        function = call.get("function") or {}
        if not isinstance(function, dict):
            raise _malformed(backend, "tool-call delta function is not an object")
        index = call.get("index")
        # Mistral sends each whole call in one delta without an index: use its position.
        yield ToolCallDelta(
            index=index if isinstance(index, int) else position,
            id=call.get("id") if isinstance(call.get("id"), str) else None,
            name=function.get("name") if isinstance(function.get("name"), str) else None,
            arguments_delta=_arguments(function.get("arguments")),
        )
    legacy = delta.get("function_call")
    if isinstance(legacy, dict):
        name = legacy.get("name")
        yield ToolCallDelta(
            index=0,
            name=name if isinstance(name, str) else None,
            arguments_delta=_arguments(legacy.get("arguments")),
        )


# --- streams ------------------------------------------------------------------------------


def decode_chunk(data: str, backend: str) -> dict[str, Any]:
    """One SSE ``data:`` payload as a JSON object."""
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise _malformed(backend, f"malformed stream chunk (not JSON): {data[:80]!r}") from exc
    if not isinstance(chunk, dict):
        raise _malformed(backend, f"malformed stream chunk (not a JSON object): {data[:80]!r}")
    return chunk


@attrs.define
class StreamState:
    """What one streamed answer has said so far; turns chunks into stream events."""

    backend: str
    #: The requested model until a chunk names the one that answered.
    model: str
    raw_reason: str | None = None
    refusal: list[str] = attrs.field(factory=list)
    answered: bool = False

    def feed(self, chunk: Mapping[str, Any]) -> list[StreamEvent]:
        """The events of one decoded chunk (not an error frame)."""
        events: list[StreamEvent] = []
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]
        choice = self._first_choice(chunk)
        if choice is not None:
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise _malformed(self.backend, "a stream chunk's delta is not an object")
            text = delta.get("content")
            if isinstance(text, str) and text:
                events.append(TextDelta(text=text))
            events.extend(parse_tool_call_deltas(delta, self.backend))
            self.answered = self.answered or bool(events)
            if isinstance(delta.get("refusal"), str):
                self.refusal.append(delta["refusal"])
            if isinstance(choice.get("finish_reason"), str):
                self.raw_reason = choice["finish_reason"]
        if isinstance(chunk.get("usage"), dict):
            events.append(UsageEvent(usage=parse_usage(chunk["usage"])))
        return events

    def finish(self) -> FinishEvent:
        """The closing event of a complete stream (or the refusal error it amounts to)."""
        if self.refusal and not self.answered:
            raise refusal_error("".join(self.refusal), self.backend)
        if self.raw_reason == "content_filter" and not self.answered:
            raise filtered_error(self.backend)
        return FinishEvent(
            reason=finish_reason(self.raw_reason),
            raw_reason=self.raw_reason,
            backend=self.backend,
            model=self.model,
        )

    def _first_choice(self, chunk: Mapping[str, Any]) -> dict[str, Any] | None:
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise _malformed(self.backend, "a stream chunk's choices is not a list")
        # Only the first choice is streamed (the SDK never asks for n > 1).
        for choice in choices:
            if not isinstance(choice, dict):
                raise _malformed(self.backend, "a stream chunk's choice is not an object")
            if choice.get("index", 0) == 0:
                return choice
        return None


# --- embeddings ----------------------------------------------------------------------------


def decode_embedding(value: Any, backend: str) -> tuple[float, ...]:
    """A vector from a float list or from base64 little-endian float32 bytes."""
    if isinstance(value, list):
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
            raise _malformed(backend, "an embedding contains a non-number")
        return tuple(float(x) for x in value)
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _malformed(backend, "an embedding is neither a list nor base64") from exc
        if len(raw) % 4:
            raise _malformed(backend, "a base64 embedding is not a whole number of float32s")
        floats = array.array("f")
        floats.frombytes(raw)
        if sys.byteorder == "big":
            floats.byteswap()
        return tuple(floats)
    raise _malformed(backend, f"an embedding has an unexpected type: {type(value).__name__}")
