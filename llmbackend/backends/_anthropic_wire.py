"""The Anthropic Messages wire format: request bodies out, whole answers in.

Pure functions, no I/O (streams are in ``_anthropic_stream``). Every shape check raises
:class:`MalformedResponseError` naming what was wrong, never a bare ``KeyError``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from llmbackend.errors import ContentFilteredError, InvalidRequestError, MalformedResponseError
from llmbackend.models import (
    ChatMessage,
    ChatRequest,
    FinishReason,
    ToolCall,
    ToolDefinition,
    Usage,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "ERROR_STATUS",
    "as_dict",
    "encode_messages",
    "encode_request",
    "encode_tool_choice",
    "finish_reason",
    "parse_message",
    "parse_usage",
    "refusal_error",
]

#: ``max_tokens`` is required by the API; used when neither request nor config sets one.
DEFAULT_MAX_TOKENS = 4096

_STOP_REASONS: Mapping[str, FinishReason] = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
    # "pause_turn" (a server tool paused the turn) has no normalised equivalent: None.
}

#: Error ``type`` values of Anthropic error bodies and stream ``error`` events, with the
#: HTTP status each stands for (a mid-stream error arrives after the 200 status line).
ERROR_STATUS: Mapping[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

#: SDK (OpenAI-style) tool_choice strings -> Anthropic ``tool_choice.type``.
_TOOL_CHOICE: Mapping[str, str] = {"auto": "auto", "required": "any", "any": "any", "none": "none"}


def _malformed(backend: str, what: str) -> MalformedResponseError:
    return MalformedResponseError(what, backend=backend)


def as_dict(value: Any, backend: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(backend, f"{what} is not a JSON object: {str(value)[:80]!r}")
    return value


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# --- requests ------------------------------------------------------------------------------


def _tool_input(call: ToolCall, backend: str) -> dict[str, Any]:
    try:
        value = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequestError(
            f"tool call {call.id!r} ({call.name}) has arguments that are not a JSON object;"
            " Anthropic needs an object as tool_use input",
            backend=backend,
        )
    return value


def _blocks(message: ChatMessage, backend: str) -> tuple[str, list[dict[str, Any]]]:
    """(Anthropic role, content blocks) of one non-system message."""
    if message.role == "tool":
        if not message.tool_call_id:
            raise InvalidRequestError(
                "a tool message needs tool_call_id (Anthropic's tool_use_id)", backend=backend
            )
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        if message.content:
            result["content"] = message.content
        return "user", [result]
    # The API rejects empty text blocks, so an empty message contributes nothing.
    blocks: list[dict[str, Any]] = (
        [{"type": "text", "text": message.content}] if message.content else []
    )
    if message.role == "assistant":
        blocks += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": _tool_input(c, backend)}
            for c in message.tool_calls
        ]
    return message.role, blocks


def encode_messages(
    messages: Sequence[ChatMessage], backend: str
) -> tuple[str | None, list[dict[str, Any]]]:
    """(top-level ``system`` text, alternating ``messages``) for a conversation.

    System messages, wherever they are, join the top-level ``system`` field. Tool results
    become ``tool_result`` blocks of a user turn; consecutive turns of one role are merged
    (the API wants user and assistant to alternate), with tool results first in a merged user
    turn as the API requires. A final assistant turn is kept last: Anthropic continues it
    (prefill).
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            if message.content:
                system.append(message.content)
            continue
        role, blocks = _blocks(message, backend)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        content = turn["content"]
        if turn["role"] == "user":
            content.sort(key=lambda block: block["type"] != "tool_result")  # stable
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]  # the compact form for a plain text turn
    return ("\n\n".join(system) or None), turns


def encode_tool(tool: ToolDefinition) -> dict[str, Any]:
    """One tool in Anthropic's ``{name, description, input_schema}`` shape."""
    encoded: dict[str, Any] = {"name": tool.name, "input_schema": dict(tool.parameters)}
    if tool.description:
        encoded["description"] = tool.description
    return encoded


def encode_tool_choice(choice: str | Mapping[str, Any]) -> dict[str, Any]:
    """The SDK's OpenAI-style ``tool_choice`` as Anthropic's; Anthropic shapes pass through."""
    if isinstance(choice, str):
        return {"type": _TOOL_CHOICE.get(choice, choice)}
    if choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        return {"type": "tool", "name": name}
    return dict(choice)


def encode_request(
    request: ChatRequest,
    model: str,
    parameters: Mapping[str, Any],
    backend: str,
    *,
    stream: bool = False,
) -> dict[str, Any]:
    """The body of a ``POST /v1/messages`` call.

    ``frequency_penalty`` / ``presence_penalty`` have no Anthropic equivalent and are not sent.
    """
    system, messages = encode_messages(request.messages, backend)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": parameters.get("max_tokens", DEFAULT_MAX_TOKENS),
        "messages": messages,
    }
    if system is not None:
        body["system"] = system
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p")):
        if ours in parameters:
            body[theirs] = parameters[ours]
    if parameters.get("stop"):
        body["stop_sequences"] = list(parameters["stop"])
    if request.tools:
        body["tools"] = [encode_tool(tool) for tool in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = encode_tool_choice(request.tool_choice)
    if stream:
        body["stream"] = True
    return body


# --- answers -------------------------------------------------------------------------------


def finish_reason(raw: str | None) -> FinishReason | None:
    """The normalised finish reason of a ``stop_reason`` (``None`` when absent or unknown)."""
    return _STOP_REASONS.get(raw) if raw is not None else None


def parse_usage(raw: Any) -> Usage:
    """Token counts; prompt tokens include cache reads and writes, cache reads are cached."""
    if not isinstance(raw, Mapping):
        return Usage()
    read = _int(raw.get("cache_read_input_tokens"))
    prompt = _int(raw.get("input_tokens")) + read + _int(raw.get("cache_creation_input_tokens"))
    return Usage.of(prompt, _int(raw.get("output_tokens")), cached=read)


def refusal_error(backend: str) -> ContentFilteredError:
    """An answer that is only a refusal, as the SDK error (an empty reply would look real)."""
    return ContentFilteredError(
        "the model refused to answer (stop_reason refusal)",
        backend=backend,
        code="refusal",
        retryable=False,
    )


def parse_message(
    body: Any, backend: str
) -> tuple[str, str | None, tuple[ToolCall, ...], str | None, Usage]:
    """(text, model, tool calls, raw stop reason, usage) of a Messages API answer."""
    answer = as_dict(body, backend, "the messages answer")
    content = answer.get("content")
    if not isinstance(content, list):
        raise _malformed(backend, "the messages answer has no content list")
    texts: list[str] = []
    calls: list[ToolCall] = []
    for raw in content:
        block = as_dict(raw, backend, "a content block")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise _malformed(backend, "a text block has no text")
            texts.append(text)
        elif kind == "tool_use":
            name, call_id = block.get("name"), block.get("id")
            if not isinstance(name, str) or not isinstance(call_id, str):
                raise _malformed(backend, "a tool_use block lacks its id or name")
            calls.append(ToolCall(id=call_id, name=name, arguments=json.dumps(block.get("input"))))
        # thinking, redacted_thinking and server-tool blocks are not part of the answer text.
    raw_reason = _str(answer.get("stop_reason"))
    if raw_reason == "refusal" and not any(texts) and not calls:
        raise refusal_error(backend)
    usage = parse_usage(answer.get("usage"))
    return "".join(texts), _str(answer.get("model")), tuple(calls), raw_reason, usage
