"""What surrounds every single call to a backend, whatever the strategy or operation.

The backend's circuit breaker admits the call (or refuses it with ``CircuitOpenError``);
the outcome then feeds the breaker, the health monitor and the latency estimate; errors are
redacted; and the request's observer hears about the attempt (start, first token of a
stream, outcome). A cancelled call gives back its half-open admission and teaches nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from attrs import frozen

from llmbackend._breaker import CircuitBreaker
from llmbackend._health import HealthMonitor
from llmbackend._redaction import Redactor
from llmbackend._strategies import LatencyTracker
from llmbackend.backends.base import BaseLlmBackend
from llmbackend.errors import BackendError, CircuitOpenError, LlmBackendError, NotSupportedError
from llmbackend.models import (
    ChatRequest,
    EmbeddingResponse,
    FinishEvent,
    LlmResponse,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    UsageEvent,
)

if TYPE_CHECKING:
    from llmbackend._attempts import AttemptPlan

__all__ = ["BackendGuard"]

#: What a guarded call answers with (chat and embeddings).
R = TypeVar("R", bound=LlmResponse | EmbeddingResponse)


@frozen
class BackendGuard:
    """Breakers, health and latency of a service's backends, applied around each call."""

    breakers: Mapping[str, CircuitBreaker]
    health: HealthMonitor
    latency: LatencyTracker
    redactor: Redactor

    async def call(
        self,
        backend: BaseLlmBackend,
        call: Callable[[BaseLlmBackend], Awaitable[R]],
        plan: AttemptPlan,
    ) -> R:
        """One call through the backend's breaker, reported to ``plan``'s observer."""
        breaker = self.admit(backend)
        attempt = plan.attempt_started(backend, breaker.state)
        started = time.perf_counter()
        try:
            result = await call(backend)
        except LlmBackendError as exc:
            self.failed(backend, exc)
            attempt.failed(exc)
            raise
        except BaseException:
            breaker.release()  # cancelled: no outcome to learn from
            attempt.cancelled()
            raise
        self.succeeded(backend, (time.perf_counter() - started) * 1000.0)
        attempt.succeeded(result)
        return result

    async def stream(
        self, backend: BaseLlmBackend, request: ChatRequest, plan: AttemptPlan
    ) -> AsyncGenerator[StreamEvent, None]:
        """One stream through the backend's breaker; the observer also learns when the
        first content arrives."""
        breaker = self.admit(backend)
        attempt = plan.attempt_started(backend, breaker.state)
        started = time.perf_counter()
        waiting = True
        usage = None
        finish = None
        try:
            async with contextlib.aclosing(backend.stream(request)) as events:
                async for event in events:
                    if waiting and isinstance(event, TextDelta | ToolCallDelta):
                        waiting = False
                        attempt.first_token()
                    elif isinstance(event, UsageEvent):
                        usage = event.usage
                    elif isinstance(event, FinishEvent):
                        finish = event
                    yield event
        except LlmBackendError as exc:
            self.failed(backend, exc)
            attempt.failed(exc)
            raise
        except BaseException:
            breaker.release()
            attempt.cancelled()
            raise
        self.succeeded(backend, (time.perf_counter() - started) * 1000.0)
        attempt.stream_succeeded(finish, usage, backend.cost_of(usage) if usage else None)

    def admit(self, backend: BaseLlmBackend) -> CircuitBreaker:
        """The backend's breaker, once it admitted a call; ``CircuitOpenError`` otherwise."""
        breaker = self.breakers[backend.name]
        if not breaker.allow():
            state = breaker.state.value.replace("_", "-")
            raise CircuitOpenError(f"circuit {state}; call not attempted", backend=backend.name)
        return breaker

    def failed(self, backend: BaseLlmBackend, exc: LlmBackendError) -> None:
        """Learn from a failed call (caller errors do not count against the backend)."""
        self.redactor.scrub(exc)  # plugins may bypass the base class, which redacts too
        if isinstance(exc, NotSupportedError | CircuitOpenError):
            self.breakers[backend.name].release()
            return
        self.breakers[backend.name].record_failure(exc)
        if isinstance(exc, BackendError) and exc.trips_breaker:
            self.health.record(backend.name, ok=False, error=f"{type(exc).__name__}: {exc}")

    def succeeded(self, backend: BaseLlmBackend, latency_ms: float) -> None:
        """Learn from a successful call."""
        self.breakers[backend.name].record_success()
        self.health.record(backend.name, ok=True)
        self.latency.record(backend.name, latency_ms)
