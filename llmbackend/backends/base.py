"""``BaseLlmBackend``: what every backend shares. Subclasses implement only the wire format.

The base times every call, applies the per-attempt timeout, maps transport errors, logs one
event per call (never the API key; content only when ``log_prompts`` / ``log_responses``),
records success and failure metrics and computes cost from the configured prices.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import enum
import logging
import time
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import aiohttp
import attrs

from llmbackend._logging import LoggerFactory
from llmbackend._metrics import BackendMetrics
from llmbackend._redaction import Redactor, secrets_of_headers
from llmbackend.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    LlmBackendError,
    MalformedResponseError,
    NotSupportedError,
    StreamInterruptedError,
    map_transport_errors,
)
from llmbackend.models import (
    BackendHealth,
    BackendStatistics,
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishEvent,
    LlmRequest,
    LlmResponse,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageEvent,
)
from llmbackend.settings import LlmBackendConfig

__all__ = ["ATTEMPT_DEADLINE", "BaseLlmBackend", "Capability", "SessionFactory", "StreamFrames"]

#: The event-loop time by which a caller's own timer ends the current attempt (the service
#: sets it around each attempt); a backend whose attempt timeout would end later arms none.
ATTEMPT_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "llmbackend_attempt_deadline", default=None
)

#: Returns the shared aiohttp session; backends borrow it and never close it.
SessionFactory = Callable[[], aiohttp.ClientSession]


class Capability(enum.StrEnum):
    """What a backend can do. Calls outside its capabilities raise ``NotSupportedError``."""

    CHAT = "chat"
    STREAMING = "streaming"
    TOOLS = "tools"
    EMBEDDINGS = "embeddings"
    MODELS = "models"
    #: Continues an assistant message given as the last turn (used by stream recovery).
    PREFILL = "prefill"


class BaseLlmBackend(abc.ABC):
    """A configured backend. Subclasses override the ``_chat`` / ``_stream`` / ``_embed`` /
    ``_list_models`` / ``_check_available`` hooks for their wire format and declare
    ``capabilities``; everything else (timing, errors, logs, metrics, cost) lives here.
    """

    #: The capabilities of the backend class (narrowed per instance by the config).
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.CHAT})
    #: Model used when the config names none.
    default_model: ClassVar[str | None] = None

    def __init__(
        self,
        config: LlmBackendConfig,
        *,
        logger_factory: LoggerFactory | None = None,
        session_factory: SessionFactory | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.backend_type = config.resolved_type
        # Whatever else is configured, this backend's own credentials are never logged.
        self._logger_factory = (logger_factory or LoggerFactory()).with_secrets(
            config.api_key, *secrets_of_headers(config.additional_headers)
        )
        self._log = self._logger_factory("llmbackend.backend").bind(
            backend=self.name, backend_type=self.backend_type
        )
        self._session_factory = session_factory
        self._metrics = BackendMetrics()
        self._closed = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} model={self.model!r}>"

    # --- identity ------------------------------------------------------------------------

    @property
    def model(self) -> str | None:
        """The model this backend asks for unless a request overrides it."""
        return self.config.model_name or self.default_model

    def supports(self, capability: Capability) -> bool:
        """Whether this backend, as configured, offers ``capability``."""
        if capability is Capability.STREAMING and not self.config.enable_streaming:
            return False
        if capability is Capability.TOOLS and not self.config.enable_function_calling:
            return False
        return capability in self.capabilities

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared aiohttp session (borrowed: the container owns and closes it)."""
        if self._session_factory is None:
            raise LlmBackendError(f"backend {self.name!r} was built without an HTTP session")
        return self._session_factory()

    def stream_timeouts(self, request: ChatRequest) -> tuple[float | None, float | None]:
        """(first-event, between-events) limits for a stream: request, then config, then
        the attempt timeout."""
        config = self.config
        first = _first(
            request.first_token_timeout_seconds,
            config.first_token_timeout_seconds,
            self.attempt_timeout,
        )
        idle = _first(
            request.stream_idle_timeout_seconds,
            config.stream_idle_timeout_seconds,
            self.attempt_timeout,
        )
        return first, idle

    def _own_timeout(self) -> float | None:
        """The attempt timeout this call must arm itself: ``None`` (no timer) when a caller's
        timer (the service's request deadline, see :data:`ATTEMPT_DEADLINE`) ends the attempt
        no later than this one would, so one timer, not two, bounds each attempt."""
        limit = self.attempt_timeout
        deadline = ATTEMPT_DEADLINE.get()
        if limit is None or deadline is None:
            return limit
        return limit if asyncio.get_running_loop().time() + limit < deadline else None

    @property
    def attempt_timeout(self) -> float | None:
        """Seconds one attempt may take (``timeout_seconds`` of the backend config)."""
        return self.config.timeout_seconds

    # --- public API ------------------------------------------------------------------------

    async def complete(self, request: LlmRequest) -> LlmResponse:
        """A single-prompt completion: chat with one user message (plus the system prompt)."""
        return await self.chat(request.to_chat())

    async def chat(self, request: ChatRequest) -> LlmResponse:
        """Send a chat request and return the whole answer."""
        self._require(Capability.CHAT)
        if request.tools:
            self._require(Capability.TOOLS)
        started = time.perf_counter()
        try:
            with map_transport_errors(self.name):
                async with asyncio.timeout(self._own_timeout()):
                    response = await self._chat(request)
        except LlmBackendError as exc:
            self._failed("chat", exc, started)
            raise
        duration_ms = (time.perf_counter() - started) * 1000.0
        usage = response.usage
        cost = self.cost_of(usage)
        response = attrs.evolve(response, backend=self.name, duration_ms=duration_ms, cost_usd=cost)
        self.record_success(duration_ms, usage, cost)
        if self._debug_enabled():
            self._log.debug(
                "backend_request_succeeded",
                operation="chat",
                model=response.model,
                duration_ms=round(duration_ms, 2),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                finish_reason=response.finish_reason,
                **self._content_fields(request, response.content),
            )
        return response

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream the answer as typed events, ending with a ``FinishEvent``.

        A stream that stops before the provider said it finished raises
        ``StreamInterruptedError`` carrying the text delivered so far; it never ends quietly.
        Each wait for the next event is bounded by the backend's ``timeout_seconds``.
        """
        self._require(Capability.STREAMING)
        if request.tools:
            self._require(Capability.TOOLS)
        started = time.perf_counter()
        parts: list[str] = []
        usage: Usage | None = None
        finished: FinishEvent | None = None
        first_wait, idle_wait = self.stream_timeouts(request)
        wait, waiting_for = first_wait, "the first event"
        try:
            with map_transport_errors(self.name, phase="stream"):
                async with contextlib.aclosing(self._stream(request)) as events:
                    iterator = aiter(events)
                    while True:
                        try:
                            async with asyncio.timeout(wait):
                                event = await anext(iterator)
                        except StopAsyncIteration:
                            break
                        except TimeoutError:
                            raise BackendTimeoutError(
                                f"no event within {wait:g} s while waiting for {waiting_for}",
                                backend=self.name,
                            ) from None
                        wait, waiting_for = idle_wait, "the next event (stalled stream)"
                        if isinstance(event, TextDelta):
                            parts.append(event.text)
                        elif isinstance(event, UsageEvent):
                            usage = event.usage
                        elif isinstance(event, FinishEvent):
                            finished = event
                        yield event
            if finished is None and parts:
                raise StreamInterruptedError(
                    "the stream ended before the provider finished the answer",
                    backend=self.name,
                    partial_text="".join(parts),
                    usage=usage,
                    retryable=False,
                )
            if finished is None:
                # Nothing reached the caller: an ordinary failed attempt, worth a retry.
                raise BackendUnavailableError(
                    "the stream ended before any content or finish", backend=self.name
                )
        except BackendError as exc:
            if parts and not isinstance(exc, StreamInterruptedError):
                # Content already reached the caller: the stream is cut, not merely failed.
                cut = StreamInterruptedError(
                    f"stream interrupted: {self.redactor.text(exc.message)}",
                    backend=self.name,
                    status=exc.status,
                    partial_text="".join(parts),
                    usage=usage,
                )
                self._failed("stream", cut, started, cause=exc)
                raise cut from exc
            self._failed("stream", exc, started)
            raise
        except LlmBackendError as exc:
            self._failed("stream", exc, started)
            raise
        duration_ms = (time.perf_counter() - started) * 1000.0
        cost = self.cost_of(usage) if usage is not None else None
        self.record_success(duration_ms, usage, cost)
        self._log.debug(
            "backend_stream_succeeded",
            model=finished.model,
            duration_ms=round(duration_ms, 2),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            finish_reason=finished.reason,
            **self._content_fields(request, "".join(parts)),
        )

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embed the request's inputs; one vector per input, in order."""
        self._require(Capability.EMBEDDINGS)
        started = time.perf_counter()
        try:
            with map_transport_errors(self.name, phase="embedding"):
                async with asyncio.timeout(self._own_timeout()):
                    response = await self._embed(request)
        except LlmBackendError as exc:
            self._failed("embed", exc, started)
            raise
        duration_ms = (time.perf_counter() - started) * 1000.0
        usage = Usage(prompt_tokens=response.prompt_tokens, total_tokens=response.prompt_tokens)
        cost = self.cost_of(usage)
        response = attrs.evolve(response, backend=self.name, duration_ms=duration_ms, cost_usd=cost)
        self.record_success(duration_ms, usage, cost)
        if self._debug_enabled():
            self._log.debug(
                "backend_request_succeeded",
                operation="embed",
                model=response.model,
                duration_ms=round(duration_ms, 2),
                inputs=len(request.inputs),
            )
        return response

    async def models(self) -> list[str]:
        """The models this backend's API lists."""
        self._require(Capability.MODELS)
        with map_transport_errors(self.name, phase="model listing"):
            async with asyncio.timeout(self.attempt_timeout):
                return await self._list_models()

    async def is_available(self) -> bool:
        """Whether the backend answers its cheapest honest check."""
        return (await self.get_health()).available

    async def get_health(self, limit_seconds: float | None = None) -> BackendHealth:
        """Run the availability check and report the result (never raises for backend errors)."""
        started = time.perf_counter()
        error: str | None = None
        try:
            with map_transport_errors(self.name, phase="health check"):
                async with asyncio.timeout(limit_seconds or self.attempt_timeout):
                    await self._check_available()
        except LlmBackendError as exc:
            error = f"{type(exc).__name__}: {self.redactor.scrub(exc)}"
        return BackendHealth(
            backend=self.name,
            available=error is None,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            checked_at=datetime.now(UTC),
            error=error,
        )

    @property
    def redactor(self) -> Redactor:
        """Removes secrets (this backend's key included) from text and exceptions."""
        return self._logger_factory.redactor

    def statistics(self) -> BackendStatistics:
        """A frozen snapshot of this backend's counters."""
        return self._metrics.snapshot(self.name, self.backend_type, self.model)

    def record_success(
        self, duration_ms: float, usage: Usage | None = None, cost_usd: float | None = None
    ) -> None:
        """Count a successful call (for subclasses that do their own I/O outside the hooks)."""
        self._metrics.record_success(duration_ms, usage, cost_usd)

    def record_failure(self, error: BaseException | str, duration_ms: float = 0.0) -> None:
        """Count a failed call (for subclasses that do their own I/O outside the hooks)."""
        self._metrics.record_failure(error, duration_ms)

    def cost_of(self, usage: Usage) -> float | None:
        """Cost in USD of ``usage`` at the configured prices; ``None`` when no price is set.

        Input tokens the provider served from its prompt cache are charged at
        ``cost_per_million_cached_input_tokens`` when that price is set.
        """
        config = self.config
        input_price = config.cost_per_million_input_tokens
        output_price = config.cost_per_million_output_tokens
        if input_price is None and output_price is None:
            return None
        cached_price = config.cost_per_million_cached_input_tokens
        cached = usage.cached_prompt_tokens if cached_price is not None else 0
        return (
            (usage.prompt_tokens - cached) * (input_price or 0.0)
            + cached * (cached_price or 0.0)
            + usage.completion_tokens * (output_price or 0.0)
        ) / 1_000_000.0

    async def aclose(self) -> None:
        """Release what the backend owns. Idempotent. The shared session is not closed here."""
        self._closed = True

    async def __aenter__(self) -> BaseLlmBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- hooks for subclasses ----------------------------------------------------------------

    @abc.abstractmethod
    async def _chat(self, request: ChatRequest) -> LlmResponse:
        """Perform one chat call on the wire."""

    def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Perform one streaming chat call on the wire (an async generator)."""
        raise NotSupportedError(self.name, "streaming")

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Perform one embedding call on the wire."""
        raise NotSupportedError(self.name, "embeddings")

    async def _list_models(self) -> list[str]:
        """List the models the API offers."""
        raise NotSupportedError(self.name, "model listing")

    async def _check_available(self) -> None:
        """Raise if the backend is not reachable. Default: list models when that is supported."""
        if Capability.MODELS in self.capabilities:
            await self._list_models()

    # --- helpers for subclasses ------------------------------------------------------------

    def resolve_model(self, request: ChatRequest | EmbeddingRequest) -> str:
        """The model for this request: the request's override, else the config's."""
        model = request.model or self.model
        if not model:
            raise LlmBackendError(
                f"backend {self.name!r} has no model: set model_name in its config"
            )
        return model

    def resolve_parameters(self, request: ChatRequest) -> dict[str, Any]:
        """Sampling parameters: the request wins, then the backend config (which the service
        has filled with the global defaults). Absent values are left out."""
        config = self.config
        chosen = {
            "temperature": _first(request.temperature, config.temperature),
            "max_tokens": _first(request.max_tokens, config.max_output_tokens),
            "top_p": _first(request.top_p, config.top_p),
            "frequency_penalty": _first(request.frequency_penalty, config.frequency_penalty),
            "presence_penalty": _first(request.presence_penalty, config.presence_penalty),
            "stop": list(request.stop_sequences or config.stop_sequences) or None,
        }
        return {key: value for key, value in chosen.items() if value is not None}

    # --- internals -------------------------------------------------------------------------

    def _require(self, capability: Capability) -> None:
        if not self.supports(capability):
            raise NotSupportedError(self.name, capability.value)

    def _failed(
        self,
        operation: str,
        exc: LlmBackendError,
        started: float,
        cause: BaseException | None = None,
    ) -> None:
        duration_ms = (time.perf_counter() - started) * 1000.0
        self.redactor.scrub(exc)
        if cause is not None:
            self.redactor.scrub(cause)
        if isinstance(exc, NotSupportedError):
            return  # a capability question, not a failure of the backend
        self.record_failure(exc, duration_ms)
        self._log.info(
            "backend_request_failed",
            operation=operation,
            error=type(exc).__name__,
            status=getattr(exc, "status", None),
            duration_ms=round(duration_ms, 2),
        )

    def _debug_enabled(self) -> bool:
        """Whether a debug event would be logged: asked first so an unheard event does not
        build its fields (rounding, content) on every request."""
        check = getattr(self._log, "is_enabled_for", None)
        return True if check is None else bool(check(logging.DEBUG))

    def _content_fields(self, request: ChatRequest, answer: str) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if self._logger_factory.log_prompts:
            fields["prompt"] = [message.content for message in request.messages]
        if self._logger_factory.log_responses:
            fields["response"] = answer
        return fields


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


T = TypeVar("T")


class StreamFrames:
    """One stream's tolerance for undecodable frames.

    Before any content reached the caller a bad frame fails the attempt (the service may
    fail over). After it, one bad frame in an otherwise healthy stream is skipped, counted,
    logged, and the count is reported on the ``FinishEvent``.
    """

    def __init__(self, log: Any) -> None:
        self._log = log
        self.content_seen = False
        self.skipped = 0

    def decode(self, decode: Callable[[], T]) -> T | None:
        """``decode()``'s result, or ``None`` for a frame to skip."""
        try:
            return decode()
        except MalformedResponseError as exc:
            if not self.content_seen:
                raise
            self.skipped += 1
            self._log.warning("stream_frame_skipped", skipped=self.skipped, error=exc.message)
            return None

    def passing(self, event: StreamEvent) -> StreamEvent:
        """Note content going by; stamp the skipped count on the finish."""
        if isinstance(event, TextDelta | ToolCallDelta):
            self.content_seen = True
        elif isinstance(event, FinishEvent) and self.skipped:
            return attrs.evolve(event, malformed_events=event.malformed_events + self.skipped)
        return event
