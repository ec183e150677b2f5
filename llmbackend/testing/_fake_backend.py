"""``FakeBackend``: a scripted in-process backend, and a plugin that builds fakes from config."""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import ClassVar

from attrs import field, frozen

from llmbackend._logging import LoggerFactory
from llmbackend.backends.base import BaseLlmBackend, Capability, SessionFactory
from llmbackend.errors import BackendUnavailableError
from llmbackend.models import (
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishEvent,
    FinishReason,
    LlmResponse,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageEvent,
)
from llmbackend.settings import LlmBackendConfig

__all__ = ["FakeBackend", "FakeBackendPlugin", "FakeReply"]

#: Length of the deterministic vectors ``FakeBackend.embed`` returns.
EMBEDDING_DIMENSIONS = 8


@frozen(kw_only=True)
class FakeReply:
    """One scripted answer.

    ``error`` is raised instead of answering (after ``delay``); for streams,
    ``fail_after_chunks`` raises it after that many text chunks were sent instead.
    ``chunks`` splits the streamed text (default: one chunk per word).
    """

    text: str = "ok"
    delay: float = 0.0
    error: BaseException | None = None
    fail_after_chunks: int | None = None
    tool_calls: tuple[ToolCall, ...] = field(default=(), converter=tuple)
    finish_reason: FinishReason = FinishReason.STOP
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    chunks: tuple[str, ...] | None = None
    model: str | None = None


def _words(text: str) -> int:
    return len(text.split())


class FakeBackend(BaseLlmBackend):
    """A backend that answers from a script and records every request it receives.

    Queue replies with :meth:`push` (a ``FakeReply``, a plain string, or an exception to
    raise). When the queue is empty, ``default_reply`` answers. ``history`` holds every
    request in arrival order; ``calls`` counts them.
    """

    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    default_model: ClassVar[str | None] = "fake-model"

    def __init__(
        self,
        config: LlmBackendConfig | None = None,
        *,
        name: str = "fake",
        replies: Iterable[FakeReply | str | BaseException] = (),
        default_reply: FakeReply | str = "ok",
        logger_factory: LoggerFactory | None = None,
        session_factory: SessionFactory | None = None,
    ) -> None:
        super().__init__(
            config or LlmBackendConfig(name=name, type="custom", custom_backend_type="fake"),
            logger_factory=logger_factory,
            session_factory=session_factory,
        )
        self._queue: collections.deque[FakeReply] = collections.deque()
        self._default_reply = _as_reply(default_reply)
        self.history: list[ChatRequest | EmbeddingRequest] = []
        #: Set whenever a request arrives (await it instead of polling in tests).
        self.request_received = asyncio.Event()
        self.available = True
        self.push(*replies)

    @property
    def default_reply(self) -> FakeReply:
        """The answer given when the queue is empty (assign a string, reply or exception)."""
        return self._default_reply

    @default_reply.setter
    def default_reply(self, reply: FakeReply | str | BaseException) -> None:
        self._default_reply = _as_reply(reply)

    @property
    def calls(self) -> int:
        return len(self.history)

    def push(self, *replies: FakeReply | str | BaseException) -> None:
        """Queue replies, answered in order."""
        self._queue.extend(_as_reply(reply) for reply in replies)

    def _next(self, request: ChatRequest | EmbeddingRequest) -> FakeReply:
        self.history.append(request)
        self.request_received.set()
        return self._queue.popleft() if self._queue else self._default_reply

    def _usage(self, request: ChatRequest, reply: FakeReply) -> Usage:
        prompt = reply.prompt_tokens
        if prompt is None:
            prompt = sum(_words(m.content or "") for m in request.messages)
        completion = reply.completion_tokens
        if completion is None:
            completion = _words(reply.text)
        return Usage.of(prompt, completion)

    async def _chat(self, request: ChatRequest) -> LlmResponse:
        reply = self._next(request)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.error is not None:
            raise reply.error
        usage = self._usage(request, reply)
        return LlmResponse(
            content=reply.text,
            backend=self.name,
            model=reply.model or request.model or self.model or "fake-model",
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            finish_reason=reply.finish_reason,
            raw_finish_reason=reply.finish_reason.value,
            tool_calls=reply.tool_calls,
        )

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        reply = self._next(request)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.error is not None and reply.fail_after_chunks is None:
            raise reply.error
        chunks: Sequence[str] = reply.chunks or _split_words(reply.text)
        for sent, chunk in enumerate(chunks):
            if reply.fail_after_chunks is not None and sent == reply.fail_after_chunks:
                assert reply.error is not None
                raise reply.error
            yield TextDelta(text=chunk)
        for index, call in enumerate(reply.tool_calls):
            yield ToolCallDelta(
                index=index, id=call.id, name=call.name, arguments_delta=call.arguments
            )
        yield UsageEvent(usage=self._usage(request, reply))
        yield FinishEvent(
            reason=reply.finish_reason,
            raw_reason=reply.finish_reason.value,
            backend=self.name,
            model=reply.model or request.model or self.model or "fake-model",
        )

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        reply = self._next(request)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.error is not None:
            raise reply.error
        return EmbeddingResponse(
            embeddings=tuple(_vector(text) for text in request.inputs),
            backend=self.name,
            model=request.model or self.model or "fake-model",
            prompt_tokens=sum(_words(text) for text in request.inputs),
        )

    async def _list_models(self) -> list[str]:
        return [self.model or "fake-model"]

    async def _check_available(self) -> None:
        if not self.available:
            raise BackendUnavailableError("fake backend marked unavailable", backend=self.name)


class FakeBackendPlugin:
    """A plugin providing backend type ``fake``: ``FakeBackend`` built from each config.

    Register it in a registry (or pass it to ``open_service(plugins=[...])``) and configure
    backends with ``custom_backend_type = "fake"``; script them via ``service.backend(name)``.
    """

    plugin_id = "fake"
    plugin_name = "Fake backends for tests"
    version = "1.0.0"
    author = "llmbackend"
    description = "Scripted in-process backends (llmbackend.testing.FakeBackend)."
    supported_backend_types: Sequence[str] = ("fake",)

    def create_backend(
        self,
        backend_type: str,
        config: LlmBackendConfig,
        logger_factory: LoggerFactory,
        session_factory: SessionFactory,
    ) -> FakeBackend:
        return FakeBackend(config, logger_factory=logger_factory, session_factory=session_factory)

    def validate(self) -> bool:
        return True


def _as_reply(reply: FakeReply | str | BaseException) -> FakeReply:
    if isinstance(reply, FakeReply):
        return reply
    if isinstance(reply, BaseException):
        return FakeReply(error=reply)
    return FakeReply(text=reply)


def _split_words(text: str) -> list[str]:
    words = text.split(" ")
    return [word + " " for word in words[:-1]] + [words[-1]] if text else []


def _vector(text: str) -> tuple[float, ...]:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return tuple(byte / 255.0 for byte in digest[:EMBEDDING_DIMENSIONS])
