"""The OpenAI wire format of the fake provider server: chat completions, embeddings, models.

Error bodies are the real API's: ``{"error": {"message", "type", "param", "code"}}`` with the
codes clients key on (``rate_limit_exceeded``, ``context_length_exceeded``, ...). Content
filtering comes in the two shapes the real services use: an HTTP 200 answer with
``finish_reason: "content_filter"`` (OpenAI, when the output is filtered) and an HTTP 400
with ``code: "content_filter"`` and an ``innererror`` (Azure OpenAI, when the prompt is).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from llmbackend.testing._fake_behavior import Behavior, Problem
from llmbackend.testing._fake_stream import Rendered

__all__ = ["chat", "embeddings", "error_body", "models", "words"]

_MALFORMED = b'data: {"choices": [{"delta": {"content": "oops"\n\n'
_CONTENT_FILTER_MESSAGE = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management "
    "policy. Please modify your prompt and retry. To learn more about our content filtering "
    "policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766"
)
_PREFILL_MESSAGE = (
    "This model does not support assistant message prefill. "
    "The conversation must end with a user message."
)
#: problem -> (type, code, param, message)
_ERRORS: Mapping[Problem, tuple[str | None, str | None, str | None, str]] = {
    Problem.INVALID_REQUEST: ("invalid_request_error", None, None, "Invalid request."),
    Problem.AUTHENTICATION: (
        "invalid_request_error",
        "invalid_api_key",
        None,
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    Problem.NOT_FOUND: (
        "invalid_request_error",
        "model_not_found",
        None,
        "The model does not exist or you do not have access to it.",
    ),
    Problem.RATE_LIMIT: (
        "requests",
        "rate_limit_exceeded",
        None,
        "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. "
        "Please try again later.",
    ),
    Problem.SERVER_ERROR: (
        "server_error",
        None,
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    Problem.UNAVAILABLE: (
        "server_error",
        None,
        None,
        "The server is overloaded or not ready yet.",
    ),
    Problem.OVERLOADED: (
        "server_error",
        None,
        None,
        "The server is overloaded or not ready yet.",
    ),
    Problem.CONTEXT_LENGTH: (
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
        "This model's maximum context length is 128000 tokens. However, your messages "
        "resulted in 131072 tokens. Please reduce the length of the messages.",
    ),
    Problem.CONTENT_FILTER: (None, "content_filter", "prompt", _CONTENT_FILTER_MESSAGE),
    Problem.PREFILL: ("invalid_request_error", None, "messages", _PREFILL_MESSAGE),
}


def words(text: Any) -> int:
    """The fake's token count: whitespace-separated words."""
    return len(str(text).split()) if text else 0


def error_body(problem: Problem, status: int) -> dict[str, Any]:
    kind, code, param, message = _ERRORS[problem]
    error: dict[str, Any] = {"message": message, "type": kind, "param": param, "code": code}
    if problem is Problem.CONTENT_FILTER:
        error["status"] = status
        error["innererror"] = {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                "hate": {"filtered": False, "severity": "safe"},
                "jailbreak": {"filtered": True, "detected": True},
                "self_harm": {"filtered": False, "severity": "safe"},
                "sexual": {"filtered": False, "severity": "safe"},
                "violence": {"filtered": False, "severity": "safe"},
            },
        }
    return {"error": error}


def _frame(chunk: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def chat(
    body: Mapping[str, Any], behavior: Behavior, *, reply: str, model: str, chunk_size: int
) -> Rendered:
    """The ``/v1/chat/completions`` answer to ``body``, whole and as SSE frames."""
    text = reply if behavior.text is None and not behavior.tool_calls else behavior.text
    text = text or ""
    reason = behavior.finish_reason or ("tool_calls" if behavior.tool_calls else "stop")
    model = str(body.get("model") or model)
    messages = body.get("messages")
    prompt = (
        sum(words(m.get("content")) for m in (messages or []) if isinstance(m, dict))
        if isinstance(messages, list)
        else 0
    )
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": words(text),
        "total_tokens": prompt + words(text),
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    base = {"id": "chatcmpl-fake", "created": 0, "model": model}
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if behavior.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in behavior.tool_calls
        ]
    whole = base | {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": reason}],
        "usage": usage,
    }
    chunk = base | {"object": "chat.completion.chunk"}
    content = tuple(
        _frame(chunk | {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        for delta in _deltas(text, behavior, chunk_size)
    )
    closing = [_frame(chunk | {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})]
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        closing.append(_frame(chunk | {"choices": [], "usage": usage}))
    problem = behavior.error_problem
    return Rendered(
        whole=whole,
        content=content,
        closing=tuple(closing),
        terminator=(b"data: [DONE]\n\n",),
        malformed=_MALFORMED,
        error_event=_frame(error_body(problem, behavior.status)),
    )


def _deltas(text: str, behavior: Behavior, size: int) -> list[dict[str, Any]]:
    deltas: list[dict[str, Any]] = [
        {"content": text[i : i + size]} for i in range(0, len(text), size)
    ]
    for index, call in enumerate(behavior.tool_calls):
        function = {"name": call.name, "arguments": ""}
        deltas.append(
            {
                "tool_calls": [
                    {"index": index, "id": call.id, "type": "function", "function": function}
                ]
            }
        )
        deltas.extend(
            {
                "tool_calls": [
                    {"index": index, "function": {"arguments": call.arguments[i : i + size]}}
                ]
            }
            for i in range(0, len(call.arguments), size)
        )
    if not deltas:
        deltas.append({"content": ""})
    deltas[0] = {"role": "assistant"} | deltas[0]
    return deltas


def _vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit-scale vector for ``text`` (same text, same vector)."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((byte - 127.5) / 127.5 for byte in digest)
        counter += 1
    # Round-trip through float32 so base64 answers decode to exactly these values.
    packed = struct.pack(f"<{dimensions}f", *values[:dimensions])
    return list(struct.unpack(f"<{dimensions}f", packed))


def _base64_vector(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embeddings(body: Mapping[str, Any], *, model: str, dimensions: int) -> Rendered:
    """The ``/v1/embeddings`` answer: deterministic vectors, floats or base64."""
    inputs = body.get("input", [])
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    size = int(body.get("dimensions") or dimensions)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(inputs):
        vector = _vector(str(text), size)
        embedding = _base64_vector(vector) if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(words(text) for text in inputs)
    whole = {
        "object": "list",
        "data": data,
        "model": body.get("model") or model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Rendered(whole=whole)


def models(names: Sequence[str]) -> Rendered:
    data = [{"id": name, "object": "model", "owned_by": "fake"} for name in names]
    return Rendered(whole={"object": "list", "data": data})
