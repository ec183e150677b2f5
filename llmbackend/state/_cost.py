"""Cheap token estimates and the worst-case cost a budget reserves before a call.

The estimate errs high on purpose (about four characters per token, plus per-message
framing): the reservation is settled to the real cost afterwards, and reserving too little
is the mistake that lets concurrent callers overshoot a budget.
"""

from __future__ import annotations

import json
import math

from llmbackend.models import ChatRequest, LlmRequest
from llmbackend.settings import LlmBackendConfig

__all__ = ["estimate_prompt_tokens", "worst_case_cost"]

_CHARS_PER_TOKEN = 4.0
#: Role markers and separators each message costs on top of its text.
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_REQUEST = 3


def _tokens(text: str | None) -> int:
    return math.ceil(len(text) / _CHARS_PER_TOKEN) if text else 0


def estimate_prompt_tokens(request: ChatRequest | LlmRequest) -> int:
    """A quick, generous estimate of the input tokens of ``request`` (no tokenizer)."""
    chat = request.to_chat() if isinstance(request, LlmRequest) else request
    total = _TOKENS_PER_REQUEST
    for message in chat.messages:
        total += _TOKENS_PER_MESSAGE + _tokens(message.content) + _tokens(message.name)
        for call in message.tool_calls:
            total += _tokens(call.name) + _tokens(call.arguments) + _TOKENS_PER_MESSAGE
    for tool in chat.tools:
        schema = json.dumps(tool.parameters, separators=(",", ":"), default=str)
        total += _tokens(tool.name) + _tokens(tool.description) + _tokens(schema)
    if chat.response_format:
        total += _tokens(json.dumps(chat.response_format, default=str))
    return total


def worst_case_cost(
    config: LlmBackendConfig, prompt_tokens_estimate: int, max_tokens: int
) -> float | None:
    """USD for ``prompt_tokens_estimate`` input tokens and ``max_tokens`` output tokens at the
    backend's prices; ``None`` when the backend has no prices (cost unknown, not free)."""
    input_price = config.cost_per_million_input_tokens
    output_price = config.cost_per_million_output_tokens
    if input_price is None and output_price is None:
        return None
    return (
        max(prompt_tokens_estimate, 0) * (input_price or 0.0)
        + max(max_tokens, 0) * (output_price or 0.0)
    ) / 1_000_000.0
