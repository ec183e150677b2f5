"""``LlmService``: one dependable interface over many backends.

The service is the single retry owner. For each request a strategy orders the eligible
backends (disabled, open-circuited, unhealthy and incapable ones are skipped, with the
reason kept); the attempt plan then tries them under one total deadline, retrying
retryable failures with backoff (honouring ``Retry-After``), failing over on the rest and
stopping at once on caller errors (400, 401/403, content filter) so the provider's reason
reaches the caller. Every call goes through the backend's circuit breaker and feeds the
health monitor and the latency estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import attrs

from llmbackend._attempts import AttemptPlan, PlanCounters
from llmbackend._breaker import CircuitBreaker, CircuitState
from llmbackend._health import HealthMonitor
from llmbackend._logging import LoggerFactory
from llmbackend._strategies import StrategyState, order_candidates
from llmbackend._streaming import recovering_stream
from llmbackend.backends.base import BaseLlmBackend, Capability
from llmbackend.errors import (
    AllBackendsFailedError,
    BackendError,
    BackendTimeoutError,
    CircuitOpenError,
    ConfigProblem,
    ConfigurationError,
    LlmBackendError,
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
)
from llmbackend.settings import LlmSettings, SelectionStrategy, SimultaneousPrimary

__all__ = ["LlmService"]

T = TypeVar("T")

#: Longest backoff between two attempts on one backend, whatever the exponent says.
MAX_BACKOFF_SECONDS = 30.0


@attrs.define
class _Counters:
    requests: int = 0
    successes: int = 0
    failures: int = 0


class LlmService:
    """Completes, chats, streams and embeds through the configured backends.

    ``LlmService`` satisfies the backend interface itself (``complete``, ``chat``,
    ``stream``, ``embed``), so code written against one backend works against the service.
    ``clock``, ``sleep`` and ``rng`` are injectable for deterministic tests.
    """

    def __init__(
        self,
        settings: LlmSettings,
        backends: Sequence[BaseLlmBackend],
        *,
        logger_factory: LoggerFactory | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._backends = {backend.name: backend for backend in backends}
        # Failover order: priority ascending, then declaration order (sorted() is stable).
        self._ordered = sorted(backends, key=lambda backend: backend.config.priority)
        self._log = (logger_factory or LoggerFactory())("llmbackend.service")
        self._sleep = sleep
        self._strategy = StrategyState(rng=rng or random.Random())  # noqa: S311  # not crypto
        self._counters = _Counters()
        self._plan_counters = PlanCounters()
        self._breakers = {
            backend.name: CircuitBreaker(
                backend.name, settings.circuit_breaker, clock, self._breaker_moved
            )
            for backend in backends
        }
        self.health = HealthMonitor(self._ordered, settings.health_check, self._log, sleep)
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start background work (periodic health checks when enabled). Idempotent."""
        self.health.start()

    async def aclose(self) -> None:
        """Stop background work and close every backend. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.health.aclose()
        for backend in self._ordered:
            await backend.aclose()

    async def __aenter__(self) -> LlmService:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

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
            problem = ConfigProblem(
                "preferred_backend", f"unknown backend {name!r}; configured: {known}"
            )
            raise ConfigurationError([problem]) from None

    def breaker(self, name: str) -> CircuitBreaker:
        """The circuit breaker of backend ``name``."""
        return self._breakers[name]

    def get_statistics(self) -> ServiceStatistics:
        """A frozen snapshot: service counters, and per backend its counts, latency,
        breaker state and health."""
        counters = self._counters
        backends = {}
        for backend in self._ordered:
            health = self.health.state(backend.name)
            backends[backend.name] = attrs.evolve(
                backend.statistics(),
                circuit_state=self._breakers[backend.name].state.value,
                healthy=health.healthy,
                latency_estimate_ms=self._strategy.latency.estimate(backend.name),
            )
        return ServiceStatistics(
            requests=counters.requests,
            successful_requests=counters.successes,
            failed_requests=counters.failures,
            failovers=self._plan_counters.failovers,
            retries=self._plan_counters.retries,
            backends=backends,
        )

    async def test_backends(self) -> dict[str, BackendHealth]:
        """Check every backend's availability concurrently (results feed the health state)."""
        return await self.health.check_all()

    # --- retry policy (used by the attempt plan) -------------------------------------------

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
        return self._strategy.rng.uniform(ceiling / 2, ceiling)

    # --- calls -----------------------------------------------------------------------------

    async def complete(self, request: LlmRequest) -> LlmResponse:
        """A single-prompt completion through the backends."""
        return await self.chat(request.to_chat())

    async def chat(self, request: ChatRequest) -> LlmResponse:
        """Chat through the backends with the configured (or requested) strategy."""
        strategy = request.selection_strategy or self.settings.selection_strategy
        if strategy is SelectionStrategy.SIMULTANEOUS:
            return await self._fan_out(request)
        return await self._run(request, Capability.CHAT, lambda b: b.chat(request))

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embed through the backends that support embeddings."""
        return await self._run(request, Capability.EMBEDDINGS, lambda b: b.embed(request))

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream an answer as typed events (see :mod:`llmbackend._streaming`).

        Failures before the first content token fail over transparently; after it,
        ``stream_recovery`` decides (raise, restart or continue). Under the simultaneous
        strategy a stream uses the failover order.
        """
        self._counters.requests += 1
        try:
            async with contextlib.aclosing(recovering_stream(self, request)) as events:
                async for event in events:
                    yield event
        except LlmBackendError:
            self._counters.failures += 1
            raise
        self._counters.successes += 1

    # --- plumbing shared with the streaming module ----------------------------------------

    def plan_for(
        self, request: ChatRequest | EmbeddingRequest, capability: Capability
    ) -> AttemptPlan:
        """The attempt plan of one request: eligible backends in strategy order."""
        preferred = None
        if request.preferred_backend is not None:
            preferred = self.backend(request.preferred_backend)
        candidates, skipped = self._eligible(capability)
        strategy = request.selection_strategy or self.settings.selection_strategy
        ordered = order_candidates(strategy, candidates, self._strategy, preferred)
        if strategy is SelectionStrategy.SPECIFIC:
            for backend in candidates:
                if backend not in ordered:
                    skipped.setdefault(backend.name, "not selected (strategy 'specific')")
        if preferred is not None and preferred.name in skipped and preferred not in ordered:
            self._log.info("preferred_backend_skipped", backend=preferred.name)
        timeout = request.timeout_seconds or self.settings.timeout_seconds
        return AttemptPlan(
            policy=self,
            queue=ordered,
            deadline=time.monotonic() + timeout,
            sleep=self._sleep,
            log=self._log,
            counters=self._plan_counters,
            failover_on_content_filter=self.settings.failover_on_content_filter,
            skipped=skipped,
        )

    async def guarded(
        self, backend: BaseLlmBackend, call: Callable[[BaseLlmBackend], Awaitable[T]]
    ) -> T:
        """One call through the backend's breaker, feeding health and latency."""
        breaker = self._admit(backend)
        started = time.perf_counter()
        try:
            result = await call(backend)
        except LlmBackendError as exc:
            self._observe_failure(backend, exc)
            raise
        except BaseException:
            breaker.release()  # cancelled: no outcome to learn from
            raise
        self._observe_success(backend, (time.perf_counter() - started) * 1000.0)
        return result

    async def guarded_stream(
        self, backend: BaseLlmBackend, request: ChatRequest
    ) -> AsyncGenerator[StreamEvent, None]:
        """One stream through the backend's breaker, feeding health and latency."""
        breaker = self._admit(backend)
        started = time.perf_counter()
        try:
            async with contextlib.aclosing(backend.stream(request)) as events:
                async for event in events:
                    yield event
        except LlmBackendError as exc:
            self._observe_failure(backend, exc)
            raise
        except BaseException:
            breaker.release()
            raise
        self._observe_success(backend, (time.perf_counter() - started) * 1000.0)

    # --- internals -------------------------------------------------------------------------

    def _eligible(self, capability: Capability) -> tuple[list[BaseLlmBackend], dict[str, str]]:
        skipped: dict[str, str] = {}
        candidates = []
        for backend in self._ordered:
            breaker = self._breakers[backend.name]
            if not backend.config.enabled:
                skipped[backend.name] = "disabled"
            elif not backend.supports(capability):
                skipped[backend.name] = f"does not support {capability.value}"
            elif breaker.enabled and breaker.state is CircuitState.OPEN:
                skipped[backend.name] = f"circuit open (retry in {breaker.retry_in():.1f} s)"
            elif not self.health.is_healthy(backend.name):
                skipped[backend.name] = "unhealthy"
            else:
                candidates.append(backend)
        return candidates, skipped

    def _admit(self, backend: BaseLlmBackend) -> CircuitBreaker:
        breaker = self._breakers[backend.name]
        if not breaker.allow():
            state = breaker.state.value.replace("_", "-")
            raise CircuitOpenError(f"circuit {state}; call not attempted", backend=backend.name)
        return breaker

    def _observe_failure(self, backend: BaseLlmBackend, exc: LlmBackendError) -> None:
        if isinstance(exc, NotSupportedError | CircuitOpenError):
            self._breakers[backend.name].release()
            return
        self._breakers[backend.name].record_failure(exc)
        if isinstance(exc, BackendError) and exc.trips_breaker:
            self.health.record(backend.name, ok=False, error=f"{type(exc).__name__}: {exc}")

    def _observe_success(self, backend: BaseLlmBackend, latency_ms: float) -> None:
        self._breakers[backend.name].record_success()
        self.health.record(backend.name, ok=True)
        self._strategy.latency.record(backend.name, latency_ms)

    def _breaker_moved(self, name: str, old: CircuitState, new: CircuitState) -> None:
        self._log.warning("circuit_state_changed", backend=name, old=old.value, new=new.value)

    async def _run(
        self,
        request: ChatRequest | EmbeddingRequest,
        capability: Capability,
        call: Callable[[BaseLlmBackend], Awaitable[T]],
    ) -> T:
        self._counters.requests += 1
        try:
            result = await self._serve(self.plan_for(request, capability), capability, call)
        except LlmBackendError:
            self._counters.failures += 1
            raise
        self._counters.successes += 1
        return result

    async def _serve(
        self,
        plan: AttemptPlan,
        capability: Capability,
        call: Callable[[BaseLlmBackend], Awaitable[T]],
    ) -> T:
        async with contextlib.aclosing(plan.attempts()) as attempts:
            async for backend in attempts:
                try:
                    async with asyncio.timeout(plan.remaining()):
                        return await self.guarded(backend, call)
                except TimeoutError:
                    error = BackendTimeoutError(
                        "the request deadline was spent", backend=backend.name
                    )
                    plan.failed(backend, error)
                except (BackendError, NotSupportedError) as exc:
                    plan.failed(backend, exc)
        raise plan.exhausted("chat" if capability is Capability.CHAT else capability.value)

    async def _fan_out(self, request: ChatRequest) -> LlmResponse:
        """Simultaneous strategy: every eligible backend at once, bounded by the deadline.

        Each branch retries on its own backend; when the deadline passes, unfinished
        branches are cancelled and awaited, so nothing outlives the call.
        """
        self._counters.requests += 1
        plan = self.plan_for(request, Capability.CHAT)
        single = attrs.evolve(request, selection_strategy=SelectionStrategy.SPECIFIC)

        async def one(backend: BaseLlmBackend) -> tuple[float, LlmResponse]:
            branch = self.plan_for(
                attrs.evolve(single, preferred_backend=backend.name), Capability.CHAT
            )
            branch.deadline = plan.deadline
            response = await self._serve(branch, Capability.CHAT, lambda b: b.chat(request))
            return time.monotonic(), response

        tasks = {backend: asyncio.create_task(one(backend)) for backend in plan.queue}
        try:
            if tasks:
                await asyncio.wait(tasks.values(), timeout=max(plan.remaining(), 0))
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
        successes: list[tuple[float, int, LlmResponse]] = []
        failures: list[Exception] = []
        for rank, (backend, task) in enumerate(tasks.items()):
            if task.cancelled():
                failures.append(
                    BackendTimeoutError("no answer before the deadline", backend=backend.name)
                )
            elif (error := task.exception()) is not None:
                failures.append(_innermost(error))
            else:
                finished_at, response = task.result()
                successes.append((finished_at, rank, response))
        if not successes:
            self._counters.failures += 1
            plan.errors.extend(failures)
            raise plan.exhausted("chat")
        by_priority = self.settings.simultaneous_primary is SimultaneousPrimary.PRIORITY
        successes.sort(key=lambda item: item[1] if by_priority else item[0])
        primary = successes[0][2]
        self._counters.successes += 1
        return attrs.evolve(
            primary,
            alternative_responses=[response for _, _, response in successes[1:]],
            failed_alternatives=failures,
        )


def _innermost(error: BaseException) -> Exception:
    """A fan-out branch's own error (unwrapping its one-backend AllBackendsFailedError)."""
    if isinstance(error, AllBackendsFailedError) and error.exceptions:
        last = error.exceptions[-1]
        return last if isinstance(last, Exception) else error
    return error if isinstance(error, Exception) else RuntimeError(repr(error))
