"""The Anthropic Messages wire format of the fake provider server (``POST /v1/messages``).

Shapes follow the recordings in the shared wire fixtures (``anthropic/messages*.yaml``):
a JSON ``message`` with content blocks, ``stop_reason`` and ``usage``; a stream of named
events ``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``
(``text_delta`` / ``input_json_delta``) ..., ``content_block_stop``, ``message_delta`` (stop
reason and usage), ``message_stop``. Errors are ``{"type": "error", "error": {"type",
"message"}, "request_id"}``, with the real API's types and messages (``overloaded_error`` on
529, ``prompt is too long: ...``, ...); a mid-stream error is an ``event: error``. Anthropic has
no ``[DONE]``: its terminator, which the ``missing_done`` fault drops, is ``message_stop``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from llmbackend.models import ToolCall
from llmbackend.testing._fake_behavior import Behavior, Problem
from llmbackend.testing._fake_stream import Rendered
from llmbackend.testing._fake_wire_openai import words

__all__ = ["HEADERS", "error_body", "messages", "models"]

_REQUEST_ID = "req_fake0123456789"
_MESSAGE_ID = "msg_fake0123456789"
#: Headers on every Anthropic answer.
HEADERS: Mapping[str, str] = {"request-id": _REQUEST_ID}
#: Wire-neutral finish reasons -> Anthropic stop reasons (others pass through verbatim).
_STOP_REASONS: Mapping[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_MALFORMED = (
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"oops"\n\n'
)
#: problem -> (error type, message)
_ERRORS: Mapping[Problem, tuple[str, str]] = {
    Problem.INVALID_REQUEST: ("invalid_request_error", "Invalid request."),
    Problem.AUTHENTICATION: ("authentication_error", "invalid x-api-key"),
    Problem.NOT_FOUND: ("not_found_error", "model: not found"),
    Problem.RATE_LIMIT: (
        "rate_limit_error",
        "This request would exceed your account's rate limit. Please try again later.",
    ),
    Problem.SERVER_ERROR: ("api_error", "Internal server error"),
    Problem.UNAVAILABLE: ("api_error", "Service unavailable"),
    Problem.OVERLOADED: ("overloaded_error", "Overloaded"),
    Problem.CONTEXT_LENGTH: (
        "invalid_request_error",
        "prompt is too long: 208310 tokens > 200000 maximum",
    ),
    Problem.CONTENT_FILTER: ("invalid_request_error", "Output blocked by content filtering policy"),
    Problem.PREFILL: (
        "invalid_request_error",
        "This model does not support assistant message prefill. "
        "The conversation must end with a user message.",
    ),
}


def error_body(problem: Problem, *, with_request_id: bool = True) -> dict[str, Any]:
    kind, message = _ERRORS[problem]
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    if with_request_id:
        body["request_id"] = _REQUEST_ID
    return body


def _event(name: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _text(content: Any) -> str:
    """The text of a string or of a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            block["text"]
            for block in content
            if isinstance(block, dict) and isinstance(block.get("text"), str)
        )
    return ""


def _input(call: ToolCall) -> Any:
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _blocks(text: str, calls: Sequence[ToolCall], size: int) -> list[list[bytes]]:
    """Each content block's events: start, deltas..., stop."""
    blocks: list[list[bytes]] = []
    start: dict[str, Any]
    if text:
        start = {"type": "text", "text": ""}
        deltas = [
            {"type": "text_delta", "text": text[i : i + size]} for i in range(0, len(text), size)
        ]
        blocks.append(_block(len(blocks), start, deltas))
    for call in calls:
        start = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        arguments = call.arguments
        deltas = [{"type": "input_json_delta", "partial_json": ""}] + [
            {"type": "input_json_delta", "partial_json": arguments[i : i + size]}
            for i in range(0, len(arguments), size)
        ]
        blocks.append(_block(len(blocks), start, deltas))
    return blocks


def _block(index: int, start: dict[str, Any], deltas: list[dict[str, Any]]) -> list[bytes]:
    return [
        _event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        ),
        *(
            _event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
            for delta in deltas
        ),
        _event("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


def messages(
    body: Mapping[str, Any], behavior: Behavior, *, reply: str, model: str, chunk_size: int
) -> Rendered:
    """The ``/v1/messages`` answer to ``body``, whole and as named SSE events."""
    text = reply if behavior.text is None and not behavior.tool_calls else behavior.text
    text = text or ""
    neutral = behavior.finish_reason or ("tool_calls" if behavior.tool_calls else "stop")
    stop_reason = _STOP_REASONS.get(neutral, neutral)
    model = str(body.get("model") or model)
    turns = body.get("messages")
    prompt = words(_text(body.get("system"))) + (
        sum(words(_text(m.get("content"))) for m in turns if isinstance(m, dict))
        if isinstance(turns, list)
        else 0
    )
    output = words(text)
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [
        {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call)}
        for call in behavior.tool_calls
    ]
    message: dict[str, Any] = {
        "id": _MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": model,
    }
    whole = message | {
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": output},
    }
    start = message | {
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": 1},
    }
    blocks = _blocks(text, behavior.tool_calls, chunk_size)
    frames = [frame for block in blocks for frame in block]
    ping = _event("ping", {"type": "ping"})
    # As recorded: the first block starts before the ping; its stop belongs to the closing.
    preamble = [_event("message_start", {"type": "message_start", "message": start})]
    if frames:
        preamble.append(frames.pop(0))
    preamble.append(ping)
    closing = [frames.pop()] if frames else []
    closing.append(
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"input_tokens": prompt, "output_tokens": output},
            },
        )
    )
    problem = behavior.error_problem
    return Rendered(
        whole=whole,
        preamble=tuple(preamble),
        content=tuple(frames),
        closing=tuple(closing),
        terminator=(_event("message_stop", {"type": "message_stop"}),),
        malformed=_MALFORMED,
        error_event=_event("error", error_body(problem, with_request_id=False)),
        headers=HEADERS,
    )


def models(names: Sequence[str]) -> Rendered:
    """``GET /v1/models`` as Anthropic lists them (one page)."""
    data = [
        {"type": "model", "id": name, "display_name": name, "created_at": "2025-01-01T00:00:00Z"}
        for name in names
    ]
    whole = {
        "data": data,
        "has_more": False,
        "first_id": names[0] if names else None,
        "last_id": names[-1] if names else None,
    }
    return Rendered(whole=whole, headers=HEADERS)
