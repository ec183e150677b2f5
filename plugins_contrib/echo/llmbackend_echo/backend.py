"""``EchoBackend``: answers with the last user message. Deterministic, offline, instant.

* The answer is the content of the last ``user`` message, unchanged (empty if there is none).
* ``model_name`` is only a label: it is reported as the answer's model (default ``echo``).
* Tokens are counted by whitespace: each word is one token.
* ``max_tokens`` (request, else config) truncates the answer to that many words; the finish
  reason is then ``length``, otherwise ``stop``.
* Streaming sends one word (with its trailing whitespace) per ``TextDelta``, then a
  ``UsageEvent`` and the ``FinishEvent``.
* Embeddings are deterministic hash-based unit vectors (64 dimensions unless the request asks
  for another number): equal texts get equal vectors, different texts different ones.
* Tools are not supported: a request with tools raises ``NotSupportedError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import struct
from collections.abc import AsyncGenerator
from typing import ClassVar

from llmbackend.backends.base import BaseLlmBackend, Capability
from llmbackend.models import (
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishEvent,
    FinishReason,
    LlmResponse,
    StreamEvent,
    TextDelta,
    Usage,
    UsageEvent,
)

__all__ = ["DEFAULT_DIMENSIONS", "EchoBackend", "count_tokens"]

#: Length of the vectors ``embed`` returns when the request names no ``dimensions``.
DEFAULT_DIMENSIONS = 64
#: A word and the whitespace after it; leading whitespace stays with the first word.
_WORD = re.compile(r"\s*\S+\s*")


def count_tokens(text: str | None) -> int:
    """The echo tokenizer: one token per whitespace-separated word."""
    return len(text.split()) if text else 0


class EchoBackend(BaseLlmBackend):
    """A backend that repeats the last user message back."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.CHAT, Capability.STREAMING, Capability.EMBEDDINGS, Capability.MODELS}
    )
    default_model: ClassVar[str | None] = "echo"

    async def _chat(self, request: ChatRequest) -> LlmResponse:
        words, reason = self._answer(request)
        answer = "".join(words)
        usage = self._usage(request, answer)
        return LlmResponse(
            content=answer,
            backend=self.name,
            model=self.resolve_model(request),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            finish_reason=reason,
            raw_finish_reason=reason.value,
        )

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        words, reason = self._answer(request)
        for word in words:
            yield TextDelta(text=word)
            await asyncio.sleep(0)  # let other tasks run between chunks, like a real stream
        yield UsageEvent(usage=self._usage(request, "".join(words)))
        yield FinishEvent(
            reason=reason,
            raw_reason=reason.value,
            backend=self.name,
            model=self.resolve_model(request),
        )

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        dimensions = request.dimensions or DEFAULT_DIMENSIONS
        return EmbeddingResponse(
            embeddings=tuple(_vector(text, dimensions) for text in request.inputs),
            backend=self.name,
            model=self.resolve_model(request),
            prompt_tokens=sum(count_tokens(text) for text in request.inputs),
        )

    async def _list_models(self) -> list[str]:
        return [self.model or "echo"]

    def _answer(self, request: ChatRequest) -> tuple[list[str], FinishReason]:
        last_user = next(
            (
                message.content or ""
                for message in reversed(request.messages)
                if message.role == "user"
            ),
            "",
        )
        words = _WORD.findall(last_user)
        limit = self.resolve_parameters(request).get("max_tokens")
        if limit is not None and len(words) > limit:
            return words[:limit], FinishReason.LENGTH
        return words, FinishReason.STOP

    @staticmethod
    def _usage(request: ChatRequest, answer: str) -> Usage:
        prompt = sum(count_tokens(message.content) for message in request.messages)
        return Usage.of(prompt, count_tokens(answer))


def _vector(text: str, dimensions: int) -> tuple[float, ...]:
    """A unit vector derived from the SHA-256 stream of ``text`` (counter mode)."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        block = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        # 8 unsigned 32-bit integers per block, mapped to [-1, 1].
        values += [n / 0xFFFFFFFF * 2.0 - 1.0 for n in struct.unpack(">8I", block)]
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return tuple(v / norm for v in values)
