"""``LlmService``: one dependable interface over many backends.

The service is the single retry owner. For each request it orders the candidate backends
(priority ascending, then declaration order; a ``preferred_backend`` goes first), tries them
in turn under one total deadline, retries retryable failures on the same backend with
backoff (honouring ``Retry-After``), fails over on the rest, and stops at once on caller
errors (400, 401/403, content filter) so the provider's reason reaches the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from attrs import define, field

from llmbackend._logging import LoggerFactory
from llmbackend.backends.base import BaseLlmBackend, Capability
from llmbackend.errors import (
    AllBackendsFailedError,
    BackendError,
    BackendTimeoutError,
    ConfigProblem,
    ConfigurationError,
    NotSupportedError,
)
from llmbackend.models import (
    BackendHealth,
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    LlmRequest,
    LlmResponse,
    ServiceStatistics,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
)
from llmbackend.settings import LlmSettings

__all__ = ["LlmService"]

T = TypeVar("T")

#: Longest backoff between two attempts on one backend, whatever the exponent says.
MAX_BACKOFF_SECONDS = 30.0


@define
class _Counters:
    requests: int = 0
    successes: int = 0
    failures: int = 0
    failovers: int = 0
    retries: int = 0


@define
class _AttemptPlan:
    """Walks the candidates of one request: which backend to try next, and whether to wait.

    The caller reports each failure with :meth:`failed`; the plan decides between retrying
    the same backend (after a backoff that fits the deadline), failing over, or giving up.
    """

    service: LlmService
    candidates: Sequence[BaseLlmBackend]
    deadline: float
    errors: list[Exception] = field(factory=list)
    skipped: dict[str, str] = field(factory=dict)
    _retry_delay: float | None = None
    _attempt: int = 0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    async def attempts(self) -> AsyncGenerator[BaseLlmBackend, None]:
        service = self.service
        for position, backend in enumerate(self.candidates):
            if position and self.errors:
                service._counters.failovers += 1
            retries = service.max_retries_for(backend)
            for attempt in range(retries + 1):
                if self.remaining() <= 0:
                    self.errors.append(
                        BackendTimeoutError("the request deadline was spent", backend=backend.name)
                    )
                    return
                self._retry_delay = None
                self._attempt = attempt
                yield backend
                delay = self._pending_delay()
                if delay is None or attempt == retries:
                    break  # success (the caller stopped), fail-over, or retries used up
                if delay >= self.remaining():
                    break  # waiting would overrun the deadline: fail over at once
                service._counters.retries += 1
                service._log.info(
                    "backend_retry_scheduled",
                    backend=backend.name,
                    attempt=attempt + 1,
                    delay_s=round(delay, 3),
                )
                await service._sleep(delay)

    def _pending_delay(self) -> float | None:
        """The backoff asked for by the failure just reported (None: no retry wanted)."""
        return self._retry_delay

    def failed(self, backend: BaseLlmBackend, exc: BackendError | NotSupportedError) -> None:
        """Record a failure; raises it when it is final (no retry, no failover)."""
        if isinstance(exc, NotSupportedError):
            self.skipped[backend.name] = str(exc)
            return
        self.errors.append(exc)
        if not exc.allows_failover:
            raise exc
        if exc.retryable:
            self._retry_delay = self.service.backoff_delay(self._attempt, exc.retry_after)

    def exhausted(self, operation: str) -> AllBackendsFailedError:
        tried = len({getattr(e, "backend", None) for e in self.errors})
        return AllBackendsFailedError(
            f"{operation} failed on every backend ({tried} tried, {len(self.skipped)} skipped)",
            self.errors,
            self.skipped,
        )


class LlmService:
    """Completes, chats, streams and embeds through the configured backends.

    ``LlmService`` satisfies the backend interface itself (``complete``, ``chat``,
    ``stream``, ``embed``), so code written against one backend works against the service.
    """

    def __init__(
        self,
        settings: LlmSettings,
        backends: Sequence[BaseLlmBackend],
        *,
        logger_factory: LoggerFactory | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._backends = {backend.name: backend for backend in backends}
        # Failover order: priority ascending, then declaration order (sorted() is stable).
        self._ordered = sorted(backends, key=lambda backend: backend.config.priority)
        self._log = (logger_factory or LoggerFactory())("llmbackend.service")
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not cryptography
        self._counters = _Counters()
        self._closed = False

    # --- introspection ---------------------------------------------------------------------

    @property
    def backends(self) -> tuple[BaseLlmBackend, ...]:
        """The configured backends in failover order."""
        return tuple(self._ordered)

    def backend(self, name: str) -> BaseLlmBackend:
        """The backend called ``name``; ``ConfigurationError`` naming the known ones otherwise."""
        try:
            return self._backends[name]
        except KeyError:
            known = ", ".join(self._backends) or "none"
            raise ConfigurationError(
                [
                    ConfigProblem(
                        "preferred_backend", f"unknown backend {name!r}; configured: {known}"
                    )
                ]
            ) from None

    def get_statistics(self) -> ServiceStatistics:
        """A frozen snapshot of the service's and every backend's counters."""
        counters = self._counters
        return ServiceStatistics(
            requests=counters.requests,
            successful_requests=counters.successes,
            failed_requests=counters.failures,
            failovers=counters.failovers,
            retries=counters.retries,
            backends={backend.name: backend.statistics() for backend in self._ordered},
        )

    async def test_backends(self) -> dict[str, BackendHealth]:
        """Check every backend's availability concurrently."""
        timeout = self.settings.health_check.timeout_seconds
        async with asyncio.TaskGroup() as group:
            tasks = {
                backend.name: group.create_task(backend.get_health(timeout))
                for backend in self._ordered
            }
        return {name: task.result() for name, task in tasks.items()}

    # --- retry policy ----------------------------------------------------------------------

    def max_retries_for(self, backend: BaseLlmBackend) -> int:
        """Retries on one backend: the backend's setting wins over the global one."""
        configured = backend.config.max_retries
        return self.settings.max_retries if configured is None else configured

    def backoff_delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``attempt + 1`` on the same backend.

        A provider's ``Retry-After`` wins. Otherwise ``retry_delay_ms``, doubled per attempt
        with jitter (between half and the full value) when exponential backoff is on.
        """
        if retry_after is not None:
            return retry_after
        base = self.settings.retry_delay_ms / 1000.0
        if not self.settings.use_exponential_backoff:
            return min(base, MAX_BACKOFF_SECONDS)
        ceiling = min(base * (2**attempt), MAX_BACKOFF_SECONDS)
        return self._rng.uniform(ceiling / 2, ceiling)

    # --- calls -----------------------------------------------------------------------------

    async def complete(self, request: LlmRequest) -> LlmResponse:
        """A single-prompt completion through the backends."""
        return await self.chat(request.to_chat())

    async def chat(self, request: ChatRequest) -> LlmResponse:
        """Chat through the backends with retries and failover."""
        return await self._run(
            "chat", request.preferred_backend, Capability.CHAT, lambda b: b.chat(request)
        )

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embed through the backends that support embeddings."""
        return await self._run(
            "embed", request.preferred_backend, Capability.EMBEDDINGS, lambda b: b.embed(request)
        )

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream an answer as typed events.

        Failures before the first content token fail over transparently. A cut after it
        raises ``StreamInterruptedError`` carrying the partial text: a truncated stream is
        never presented as a normal end. The request deadline bounds reaching the first
        event; after that each event must arrive within the backend's timeout.
        """
        self._counters.requests += 1
        plan = self._plan(request.preferred_backend, Capability.STREAMING)
        async with contextlib.aclosing(plan.attempts()) as attempts:
            async for backend in attempts:
                delivered = False
                try:
                    async with contextlib.aclosing(backend.stream(request)) as events:
                        try:
                            async with asyncio.timeout(plan.remaining()):
                                first = await anext(events, None)
                        except TimeoutError:
                            raise BackendTimeoutError(
                                "no first event before the request deadline",
                                backend=backend.name,
                            ) from None
                        if first is not None:
                            delivered = isinstance(first, TextDelta | ToolCallDelta)
                            yield first
                        async for event in events:
                            delivered = delivered or isinstance(event, TextDelta | ToolCallDelta)
                            yield event
                except (BackendError, NotSupportedError) as exc:
                    if delivered:
                        self._counters.failures += 1
                        raise
                    self._record_failure(plan, backend, exc)
                    continue
                self._counters.successes += 1
                return
        self._counters.failures += 1
        raise plan.exhausted("stream")

    async def aclose(self) -> None:
        """Close every backend. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for backend in self._ordered:
            await backend.aclose()

    async def __aenter__(self) -> LlmService:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- internals -------------------------------------------------------------------------

    def _candidates(
        self, preferred: str | None, capability: Capability
    ) -> tuple[list[BaseLlmBackend], dict[str, str]]:
        skipped: dict[str, str] = {}
        ordered = list(self._ordered)
        if preferred is not None:
            first = self.backend(preferred)
            ordered.remove(first)
            ordered.insert(0, first)
        candidates = []
        for backend in ordered:
            if not backend.config.enabled:
                skipped[backend.name] = "disabled"
            elif not backend.supports(capability):
                skipped[backend.name] = f"does not support {capability.value}"
            else:
                candidates.append(backend)
        return candidates, skipped

    def _plan(self, preferred: str | None, capability: Capability) -> _AttemptPlan:
        candidates, skipped = self._candidates(preferred, capability)
        deadline = time.monotonic() + self.settings.timeout_seconds
        return _AttemptPlan(self, candidates, deadline, skipped=skipped)

    async def _run(
        self,
        operation: str,
        preferred: str | None,
        capability: Capability,
        call: Callable[[BaseLlmBackend], Awaitable[T]],
    ) -> T:
        self._counters.requests += 1
        plan = self._plan(preferred, capability)
        async with contextlib.aclosing(plan.attempts()) as attempts:
            async for backend in attempts:
                try:
                    async with asyncio.timeout(plan.remaining()):
                        result = await call(backend)
                except TimeoutError:
                    error = BackendTimeoutError(
                        "the request deadline was spent", backend=backend.name
                    )
                    self._record_failure(plan, backend, error)
                    continue
                except (BackendError, NotSupportedError) as exc:
                    self._record_failure(plan, backend, exc)
                    continue
                self._counters.successes += 1
                return result
        self._counters.failures += 1
        raise plan.exhausted(operation)

    def _record_failure(
        self, plan: _AttemptPlan, backend: BaseLlmBackend, exc: BackendError | NotSupportedError
    ) -> None:
        try:
            plan.failed(backend, exc)
        except BackendError:
            self._counters.failures += 1
            raise
