"""``MockBackend``: plausible canned answers with simulated latency, streaming and usage.

* The last user message is classified (greeting, code, question, translation, summary or
  default, see :mod:`llmbackend_mock.answers`) and answered with a canned reply; the same
  prompt always gets the same answer.
* Latency: ``additional_headers = {"x-mock-delay-ms": "150"}`` in the backend config (default
  20 ms). A chat call waits that long before answering; a stream waits that long before its
  first chunk. The wait is ``asyncio.sleep``: it never blocks the event loop.
* Tokens are estimated like real tokenizers roughly behave: one token per 4 characters.
* Streaming sends the answer in chunks of three words, then a ``UsageEvent`` and a
  ``FinishEvent`` (reason ``stop``).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, ClassVar

from llmbackend.backends.base import BaseLlmBackend, Capability
from llmbackend.errors import ConfigurationError
from llmbackend.models import (
    ChatRequest,
    FinishEvent,
    FinishReason,
    LlmResponse,
    StreamEvent,
    TextDelta,
    Usage,
    UsageEvent,
)
from llmbackend_mock.answers import answer_for

if TYPE_CHECKING:
    from llmbackend._logging import LoggerFactory
    from llmbackend.backends.base import SessionFactory
    from llmbackend.settings import LlmBackendConfig

__all__ = ["DEFAULT_DELAY_MS", "DELAY_HEADER", "MockBackend", "estimate_tokens"]

#: The ``additional_headers`` key that sets the simulated latency, in milliseconds.
DELAY_HEADER = "x-mock-delay-ms"
DEFAULT_DELAY_MS = 20.0
_WORDS_PER_CHUNK = 3
_CHUNK = re.compile(rf"\s*(?:\S+\s*){{1,{_WORDS_PER_CHUNK}}}")


def estimate_tokens(text: str | None) -> int:
    """About one token per four characters (at least one for non-empty text)."""
    return math.ceil(len(text) / 4) if text else 0


class MockBackend(BaseLlmBackend):
    """A backend that answers from canned replies after a simulated delay."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.CHAT, Capability.STREAMING, Capability.MODELS}
    )
    default_model: ClassVar[str | None] = "mock-1"

    def __init__(
        self,
        config: LlmBackendConfig,
        *,
        logger_factory: LoggerFactory | None = None,
        session_factory: SessionFactory | None = None,
    ) -> None:
        super().__init__(config, logger_factory=logger_factory, session_factory=session_factory)
        self.delay_seconds = _delay_ms(config) / 1000.0

    async def _chat(self, request: ChatRequest) -> LlmResponse:
        answer = self._answer(request)
        await asyncio.sleep(self.delay_seconds)
        usage = _usage(request, answer)
        return LlmResponse(
            content=answer,
            backend=self.name,
            model=self.resolve_model(request),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            finish_reason=FinishReason.STOP,
            raw_finish_reason="stop",
        )

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        answer = self._answer(request)
        await asyncio.sleep(self.delay_seconds)
        for chunk in _CHUNK.findall(answer):
            yield TextDelta(text=chunk)
            await asyncio.sleep(0)  # let other tasks run between chunks, like a real stream
        yield UsageEvent(usage=_usage(request, answer))
        yield FinishEvent(
            reason=FinishReason.STOP,
            raw_reason="stop",
            backend=self.name,
            model=self.resolve_model(request),
        )

    async def _list_models(self) -> list[str]:
        return [self.model or "mock-1"]

    @staticmethod
    def _answer(request: ChatRequest) -> str:
        prompt = next((m.content or "" for m in reversed(request.messages) if m.role == "user"), "")
        return answer_for(prompt)[1]


def _usage(request: ChatRequest, answer: str) -> Usage:
    prompt = sum(estimate_tokens(message.content) for message in request.messages)
    return Usage.of(prompt, estimate_tokens(answer))


def _delay_ms(config: LlmBackendConfig) -> float:
    headers = {key.lower(): value for key, value in config.additional_headers.items()}
    raw = headers.get(DELAY_HEADER)
    if raw is None:
        return DEFAULT_DELAY_MS
    try:
        delay = float(raw)
    except ValueError:
        delay = -1.0
    if not math.isfinite(delay) or delay < 0:
        raise ConfigurationError(
            f"backend {config.name!r}: additional_headers[{DELAY_HEADER!r}] must be a "
            f"number of milliseconds >= 0, not {raw!r}"
        )
    return delay
