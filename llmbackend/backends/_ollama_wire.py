"""The Ollama native wire format: ``/api/chat`` bodies out, answers and NDJSON lines in.

Pure functions, no I/O. The answer and stream parsing accepts both ``/api/chat`` objects
(``message.content``, ``message.tool_calls``) and ``/api/generate`` objects (``response``):
the backend only calls ``/api/chat``, but both endpoints share the envelope (``done``,
``done_reason``, ``prompt_eval_count``, ``eval_count``) and the same parser reads either.

Ollama names no tool-call ids (newer servers may send one; it is kept). A call without one
gets a stable id derived from its position, name and arguments, so the same answer always
yields the same ids (cache replays and retries agree).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from llmbackend.errors import InvalidRequestError, MalformedResponseError
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
)

__all__ = [
    "OllamaAnswer",
    "StreamState",
    "decode_line",
    "encode_chat",
    "encode_format",
    "encode_messages",
    "encode_tool",
    "finish_reason",
    "parse_answer",
    "parse_usage",
    "tool_call_id",
]

#: SDK parameter name -> Ollama ``options`` key.
_OPTION_NAMES: Mapping[str, str] = {
    "temperature": "temperature",
    "max_tokens": "num_predict",
    "top_p": "top_p",
    "stop": "stop",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}
_FINISH_REASONS: Mapping[str, FinishReason] = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
}


def _malformed(backend: str, what: str) -> MalformedResponseError:
    return MalformedResponseError(what, backend=backend)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- requests ------------------------------------------------------------------------------


def _arguments_object(call: ToolCall, backend: str) -> Any:
    """Ollama wants tool-call arguments as a JSON object, not as JSON text."""
    try:
        return call.parsed_arguments()
    except ValueError as exc:
        raise InvalidRequestError(
            f"the arguments of tool call {call.name!r} are not valid JSON", backend=backend
        ) from exc


def encode_messages(messages: Sequence[ChatMessage], backend: str) -> list[dict[str, Any]]:
    """The conversation in Ollama's shape.

    A tool result carries ``tool_name``: the message's ``name``, else the name of the
    assistant tool call whose id it answers (Ollama matches results by name, not by id).
    """
    names: dict[str, str] = {}
    encoded: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content or ""}
        if message.role == "assistant" and message.tool_calls:
            item["tool_calls"] = [
                {"function": {"name": call.name, "arguments": _arguments_object(call, backend)}}
                for call in message.tool_calls
            ]
            names.update((call.id, call.name) for call in message.tool_calls if call.id)
        if message.role == "tool":
            tool_name = message.name or names.get(message.tool_call_id or "")
            if tool_name:
                item["tool_name"] = tool_name
        encoded.append(item)
    return encoded


def encode_tool(tool: ToolDefinition) -> dict[str, Any]:
    """One tool in the OpenAI-style function shape Ollama accepts."""
    function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.parameters)}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def encode_format(response_format: Mapping[str, Any] | None, backend: str) -> Any:
    """Ollama's ``format``: ``"json"``, a JSON schema, or ``None`` for free text.

    Accepts the OpenAI shapes (``json_object``, ``json_schema`` with ``json_schema.schema``,
    ``text``) and a bare JSON schema.
    """
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise InvalidRequestError(
                "response_format json_schema needs json_schema.schema", backend=backend
            )
        return dict(schema)
    if kind == "object" or "properties" in response_format:
        return dict(response_format)  # already a JSON schema
    raise InvalidRequestError(
        f"response_format type {kind!r} is not supported by Ollama "
        "(use json_object, json_schema or a JSON schema)",
        backend=backend,
    )


def encode_chat(
    request: ChatRequest,
    model: str,
    parameters: Mapping[str, Any],
    *,
    stream: bool,
    backend: str,
) -> dict[str, Any]:
    """The body of an ``/api/chat`` call; ``stream`` is always sent (Ollama defaults to true)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": encode_messages(request.messages, backend),
        "stream": stream,
    }
    options = {_OPTION_NAMES[key]: value for key, value in parameters.items()}
    if options:
        body["options"] = options
    # Ollama has no tool_choice; "none" is honoured by not offering the tools at all.
    if request.tools and request.tool_choice != "none":
        body["tools"] = [encode_tool(tool) for tool in request.tools]
    response_format = encode_format(request.response_format, backend)
    if response_format is not None:
        body["format"] = response_format
    return body


# --- answers -------------------------------------------------------------------------------


def decode_line(line: str, backend: str) -> dict[str, Any]:
    """One NDJSON line as a JSON object."""
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise _malformed(backend, f"malformed stream line (not JSON): {line[:80]!r}") from exc
    if not isinstance(value, dict):
        raise _malformed(backend, f"malformed stream line (not a JSON object): {line[:80]!r}")
    return value


def finish_reason(raw: str | None, *, tool_calls: bool) -> FinishReason | None:
    """Ollama says ``stop`` after tool calls too; the SDK reports ``tool_calls`` then."""
    if tool_calls and raw in (None, "stop"):
        return FinishReason.TOOL_CALLS
    return _FINISH_REASONS.get(raw) if raw is not None else None


def parse_usage(body: Mapping[str, Any]) -> Usage:
    """Token counts from ``prompt_eval_count`` / ``eval_count`` (zeros when absent)."""
    return Usage.of(_int(body.get("prompt_eval_count")), _int(body.get("eval_count")))


def tool_call_id(index: int, name: str, arguments: str) -> str:
    """A stable id for a call Ollama sent without one."""
    digest = hashlib.sha256(f"{index}\0{name}\0{arguments}".encode()).hexdigest()[:16]
    return f"call_{index}_{digest}"


def _text_and_calls(
    body: Mapping[str, Any], backend: str, first_index: int
) -> tuple[str, list[ToolCall]]:
    """The text and tool calls of one answer object (chat ``message`` or generate ``response``)."""
    if "message" in body:
        message = body["message"]
        if not isinstance(message, dict):
            raise _malformed(backend, "message is not a JSON object")
        text = message.get("content")
        raw_calls = message.get("tool_calls")
        raw_calls = [] if raw_calls is None else raw_calls
    else:
        text = body.get("response")
        raw_calls = []
    if text is not None and not isinstance(text, str):
        raise _malformed(backend, "the answer text is not a string")
    if not isinstance(raw_calls, list):
        raise _malformed(backend, "message.tool_calls is not a list")
    calls: list[ToolCall] = []
    for offset, raw in enumerate(raw_calls):
        function = raw.get("function") if isinstance(raw, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not isinstance(name, str):
            raise _malformed(backend, "a tool call has no function name")
        arguments = function.get("arguments")
        text_args = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
        given = raw.get("id")
        call_id = given if isinstance(given, str) and given else None
        index = first_index + offset
        calls.append(
            ToolCall(
                id=call_id or tool_call_id(index, name, text_args),
                name=name,
                arguments=text_args,
            )
        )
    return text or "", calls


@attrs.frozen(kw_only=True)
class OllamaAnswer:
    """What a whole (non-streamed) answer says."""

    content: str
    model: str | None
    tool_calls: tuple[ToolCall, ...]
    raw_reason: str | None
    reason: FinishReason | None
    usage: Usage


def parse_answer(body: Any, backend: str) -> OllamaAnswer:
    """Parse an ``/api/chat`` (or ``/api/generate``) answer with ``stream: false``."""
    if not isinstance(body, dict):
        raise _malformed(backend, f"the answer is not a JSON object: {str(body)[:80]!r}")
    text, calls = _text_and_calls(body, backend, 0)
    raw = body.get("done_reason")
    raw_reason = raw if isinstance(raw, str) else None
    model = body.get("model")
    return OllamaAnswer(
        content=text,
        model=model if isinstance(model, str) and model else None,
        tool_calls=tuple(calls),
        raw_reason=raw_reason,
        reason=finish_reason(raw_reason, tool_calls=bool(calls)),
        usage=parse_usage(body),
    )


@attrs.define
class StreamState:
    """What one NDJSON stream has said so far; turns lines into stream events."""

    backend: str
    #: The requested model until a line names the one that answered.
    model: str
    calls: int = 0
    raw_reason: str | None = None
    usage: Usage | None = None
    done: bool = False

    def feed(self, line: Mapping[str, Any]) -> list[StreamEvent]:
        """The content events of one decoded line (not an error line)."""
        if isinstance(line.get("model"), str) and line["model"]:
            self.model = line["model"]
        text, calls = _text_and_calls(line, self.backend, self.calls)
        events: list[StreamEvent] = [TextDelta(text=text)] if text else []
        for call in calls:
            events.append(
                ToolCallDelta(
                    index=self.calls, id=call.id, name=call.name, arguments_delta=call.arguments
                )
            )
            self.calls += 1
        if line.get("done") is True:
            self.done = True
            raw = line.get("done_reason")
            self.raw_reason = raw if isinstance(raw, str) else None
            self.usage = parse_usage(line)
        return events

    def finish(self) -> FinishEvent:
        """The closing event, once the ``done: true`` line arrived."""
        return FinishEvent(
            reason=finish_reason(self.raw_reason, tool_calls=self.calls > 0),
            raw_reason=self.raw_reason,
            backend=self.backend,
            model=self.model,
        )
