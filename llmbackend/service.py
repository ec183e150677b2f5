"""``LlmService``: one dependable interface over many backends.

The service is the single retry owner. For each request a strategy orders the eligible
backends (disabled, open-circuited, unhealthy and incapable ones are skipped, with the
reason kept); the attempt plan then tries them under one total deadline, retrying
retryable failures with backoff (honouring ``Retry-After``), failing over on the rest and
stopping at once on caller errors (400, 401/403, content filter) so the provider's reason
reaches the caller. Every call goes through the backend's circuit breaker and feeds the
health monitor and the latency estimate.

Everything observable (requests, attempts, retries, fallbacks, skips, breaker and health
changes) is reported to one :class:`~llmbackend._observer.Observer`: metrics and traces are
observers, and with telemetry off the no-op observer costs next to nothing. Each request
runs under a correlation id (the caller's, or a new one) that every log line carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from llmbackend._attempts import AttemptPlan, PlanCounters
from llmbackend._breaker import CircuitBreaker, CircuitState
from llmbackend._config_problems import find_suggestion
from llmbackend._correlation import begin_request, end_request
from llmbackend._fan_out import fan_out
from llmbackend._guard import BackendGuard
from llmbackend._logging import LoggerFactory
from llmbackend._memory import ConversationMemory
from llmbackend._observer import NOOP_REQUEST, ObservedHealthMonitor, Observer, RequestObservation
from llmbackend._prompting import PreparedChat, PromptPipeline
from llmbackend._state_guard import StateGuard
from llmbackend._strategies import StrategyState, order_candidates
from llmbackend._streaming import recovering_stream
from llmbackend._telemetry import build_observer, metrics_registry_for
from llmbackend.backends.base import ATTEMPT_DEADLINE, BaseLlmBackend, Capability
from llmbackend.errors import (
    BackendError,
    BackendTimeoutError,
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
    FinishEvent,
    LlmRequest,
    LlmResponse,
    ServiceStatistics,
    StreamEvent,
)
from llmbackend.settings import LlmSettings, SelectionStrategy
from llmbackend.state._streams import StreamAssembler, replay_stream

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from llmbackend.state import CacheKey

__all__ = ["LlmService"]

#: What a service call answers with (chat and embeddings).
R = TypeVar("R", bound=LlmResponse | EmbeddingResponse)

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

    Telemetry: ``observer`` receives every event (the container composes the metrics and
    tracing observers the settings ask for). Without one, the service builds them itself:
    metrics go to ``metrics_registry`` (default: a registry of its own, never the global
    one) and spans to ``tracer_provider`` (default: the global provider).

    Prompts: ``prompts`` holds each backend's prompt builder and the conversation memory;
    by default it is built from the settings with the built-in and registered builders and,
    with ``memory.enabled``, an in-process memory (``open_service`` also adds plugins'
    builders and opens SQLite or Redis memory).
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
        observer: Observer | None = None,
        metrics_registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        state: StateGuard | None = None,
        prompts: PromptPipeline | None = None,
    ) -> None:
        self.settings = settings
        #: Response cache, rate limits and budgets (all off unless configured).
        self.state = state or StateGuard()
        #: Prompt builders per backend and conversation memory.
        self.prompts = prompts or PromptPipeline.build(
            settings, [backend.config for backend in backends], logger_factory=logger_factory
        )
        self._backends = {backend.name: backend for backend in backends}
        # Failover order: priority ascending, then declaration order (sorted() is stable).
        self._ordered = sorted(backends, key=lambda backend: backend.config.priority)
        factory = logger_factory or LoggerFactory()
        self._log = factory("llmbackend.service")
        self._redactor = factory.redactor.including(
            secret for backend in backends for secret in backend.redactor.secrets
        )
        if observer is None:
            metrics_registry = metrics_registry_for(settings, metrics_registry)
            observer = build_observer(
                settings,
                backends,
                metrics_registry=metrics_registry,
                tracer_provider=tracer_provider,
                redactor=self._redactor,
            )
        self._observer = observer
        #: Where this service's metrics are recorded (``None`` with metrics off).
        self.metrics_registry = metrics_registry
        self._budget_spent: dict[str, float] = {}
        self._budget_period_end: dict[str, datetime | None] = {}
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
        self.health = ObservedHealthMonitor(
            self._ordered, settings.health_check, self._log, sleep, on_change=self._health_moved
        )
        #: Breaker admission and outcome bookkeeping around every backend call.
        self.guard = BackendGuard(
            self._breakers, self.health, self._strategy.latency, self._redactor
        )
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
            guess = find_suggestion(name, self._backends)
            hint = f"; did you mean {guess!r}?" if guess else ""
            problem = ConfigProblem(
                "preferred_backend", f"unknown backend {name!r}; configured: {known}{hint}"
            )
            raise ConfigurationError([problem]) from None

    def breaker(self, name: str) -> CircuitBreaker:
        """The circuit breaker of backend ``name``."""
        return self._breakers[name]

    @property
    def memory(self) -> ConversationMemory | None:
        """The conversation memory (``None`` unless ``memory.enabled``): read or clear a
        conversation's history with it."""
        return self.prompts.memory

    @property
    def observer(self) -> Observer:
        """What this service reports its events to (metrics, traces, your own observer)."""
        return self._observer

    def report_budget(self, backend: str, spent_usd: float, limit_usd: float | None = None) -> None:
        """Record ``backend``'s spend in the current budget period (fed by the budget code):
        it shows in :meth:`get_statistics` and the budget gauges. ``limit_usd`` defaults
        to the backend's ``max_spend_usd``."""
        self._budget_spent[backend] = spent_usd
        if limit_usd is None:
            limit_usd = self.backend(backend).config.max_spend_usd
        self._observer.budget_changed(backend, spent_usd, limit_usd)

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
                health_error=health.last_error,
                budget_spent_usd=self._budget_spent.get(backend.name),
                budget_limit_usd=backend.config.max_spend_usd,
                budget_period_end=self._budget_period_end.get(backend.name),
            )
        cache = self.state.cache_statistics()
        return ServiceStatistics(
            requests=counters.requests,
            successful_requests=counters.successes,
            failed_requests=counters.failures,
            failovers=self._plan_counters.failovers,
            retries=self._plan_counters.retries,
            backends=backends,
            cache_hits=cache.hits if cache is not None else 0,
            cache_misses=cache.misses if cache is not None else 0,
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
        """Chat through the backends with the configured (or requested) strategy.

        A cached answer (when caching is on) is served without any backend, rate limit or
        budget; a fresh normal answer is stored for next time.
        """
        strategy = request.selection_strategy or self.settings.selection_strategy
        fanning_out = strategy is SelectionStrategy.SIMULTANEOUS

        async def serve(seen: RequestObservation) -> LlmResponse:
            prepared = await self.prompts.prepare(request) if self.prompts.needs(request) else None
            key = None
            if not fanning_out:
                key = self.state.cache_key(request if prepared is None else prepared.cache_view())
            cached = await self.state.lookup(request, key)
            if cached is not None:
                seen.cache_hit(cached.backend)
                if prepared is not None:
                    await prepared.remember(cached)
                return cached
            async with self.state.admission():
                if fanning_out:
                    response = await fan_out(self, request, seen, prepared)
                else:
                    plan = self.plan_for(request, Capability.CHAT, seen)
                    call = prepared.chat if prepared else lambda backend: backend.chat(request)
                    response = await self.serve(plan, Capability.CHAT, call, prepared or request)
            await self.state.remember(request, key, response)
            if prepared is not None:
                await prepared.remember(response)
            return response

        return await self._run("chat", request, serve)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embed through the backends that support embeddings."""

        async def serve(seen: RequestObservation) -> EmbeddingResponse:
            async with self.state.admission():
                plan = self.plan_for(request, Capability.EMBEDDINGS, seen)
                return await self.serve(
                    plan, Capability.EMBEDDINGS, lambda backend: backend.embed(request), request
                )

        return await self._run("embed", request, serve)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream an answer as typed events (see :mod:`llmbackend._streaming`).

        Failures before the first content token fail over transparently; after it,
        ``stream_recovery`` decides (raise, restart or continue). Under the simultaneous
        strategy a stream uses the failover order.
        """
        observation, token = self._begin("stream", request)
        finish: FinishEvent | None = None
        try:
            prepared = await self.prompts.prepare(request) if self.prompts.needs(request) else None
            key = self.state.cache_key(request if prepared is None else prepared.cache_view())
            cached = await self.state.lookup(request, key)
            if cached is not None:
                observation.cache_hit(cached.backend)
                source = replay_stream(cached)
            elif key is None and self.state.limiter is None and prepared is None:
                source = recovering_stream(self, request, observation)  # nothing to add
            else:
                source = self._live_stream(request, observation, key, prepared)
            async with contextlib.aclosing(source) as events:
                async for event in events:
                    if isinstance(event, FinishEvent):
                        finish = event
                    yield event
            if cached is not None and prepared is not None:
                await prepared.remember(cached)
        except BaseException as exc:
            self._request_failed("stream", observation, exc)
            raise
        finally:
            end_request(token)
        self._counters.successes += 1
        if finish is not None:
            observation.succeeded(finish.backend, finish.model)
        else:  # only a backend breaking the stream contract ends without a finish
            observation.succeeded("", None)

    async def _live_stream(
        self,
        request: ChatRequest,
        observation: RequestObservation,
        key: CacheKey | None,
        prepared: PreparedChat | None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """A stream from the backends; a complete answer is stored in the cache and the
        conversation (a cut or restarted-and-failed stream never is)."""
        remembering = prepared is not None and request.conversation_id is not None
        assembler = StreamAssembler() if key is not None or remembering else None
        async with (
            self.state.admission(),
            contextlib.aclosing(recovering_stream(self, request, observation, prepared)) as events,
        ):
            async for event in events:
                if assembler is not None:
                    assembler.feed(event)
                yield event
        if assembler is not None:
            answer = assembler.response()
            await self.state.remember(request, key, answer)
            if prepared is not None:
                await prepared.remember(answer)

    # --- plumbing shared with the streaming and fan-out modules ---------------------------

    def plan_for(
        self,
        request: ChatRequest | EmbeddingRequest,
        capability: Capability,
        observation: RequestObservation = NOOP_REQUEST,
        *,
        report_skips: bool = True,
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
        if report_skips:
            for name, reason in skipped.items():
                observation.skipped(name, reason)
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
            observation=observation,
        )

    async def serve(
        self,
        plan: AttemptPlan,
        capability: Capability,
        call: Callable[[BaseLlmBackend], Awaitable[R]],
        request: ChatRequest | EmbeddingRequest | PreparedChat,
    ) -> R:
        """Run ``plan``: each attempt admitted by the backend's rate limit and budget, then
        through the breaker guard, under the plan's deadline. A prepared ``request`` is built
        for each backend before its attempt (a builder's refusal fails the request there)."""
        async with contextlib.aclosing(plan.attempts()) as attempts:
            async for backend in attempts:
                try:
                    remaining = plan.remaining()
                    if self._attempt_bounds_itself(backend, remaining):
                        return await self._attempt(backend, call, plan, request)
                    async with asyncio.timeout(remaining):
                        # This timer ends the attempt first: the backend arms no second one.
                        bound = ATTEMPT_DEADLINE.set(asyncio.get_running_loop().time() + remaining)
                        try:
                            return await self._attempt(backend, call, plan, request)
                        finally:
                            ATTEMPT_DEADLINE.reset(bound)
                except TimeoutError:
                    error = BackendTimeoutError(
                        "the request deadline was spent", backend=backend.name
                    )
                    plan.failed(backend, error)
                except (BackendError, NotSupportedError) as exc:
                    plan.failed(backend, exc)
        raise plan.exhausted("chat" if capability is Capability.CHAT else capability.value)

    def _attempt_bounds_itself(self, backend: BaseLlmBackend, remaining: float) -> bool:
        """Whether the backend's own attempt timeout already ends the attempt within the
        request deadline, so a second timer would only cost time: nothing else (rate-limit
        queue, budget store) runs in the attempt, and the backend keeps the base class's
        timed ``chat``/``embed``."""
        limit = backend.attempt_timeout
        return (
            limit is not None
            and limit <= remaining
            and not self.state.active
            and type(backend).chat is BaseLlmBackend.chat
            and type(backend).embed is BaseLlmBackend.embed
        )

    async def _attempt(
        self,
        backend: BaseLlmBackend,
        call: Callable[[BaseLlmBackend], Awaitable[R]],
        plan: AttemptPlan,
        request: ChatRequest | EmbeddingRequest | PreparedChat,
    ) -> R:
        if isinstance(request, PreparedChat):
            request = request.for_backend(backend)  # what the budget and limits must judge
        if not self.state.active:
            return await self.guard.call(backend, call, plan)
        try:
            async with self.state.attempt(backend, request) as bill:
                result = await self.guard.call(backend, call, plan)
                bill.cost_usd = result.cost_usd
                bill.tokens = result.prompt_tokens + getattr(result, "completion_tokens", 0)
        finally:
            self.budget_settled(backend.name)
        return result

    def budget_settled(self, name: str) -> None:
        """Report ``name``'s budget after a reservation changed (statistics and gauges)."""
        snapshot = self.state.budget(name)
        if snapshot is not None:
            self._budget_period_end[name] = snapshot.period_end
            self.report_budget(name, snapshot.spent_usd, snapshot.limit_usd)

    # --- internals -------------------------------------------------------------------------

    def _begin(
        self, operation: str, request: ChatRequest | EmbeddingRequest
    ) -> tuple[RequestObservation, contextvars.Token[str | None] | None]:
        self._counters.requests += 1
        correlation, token = begin_request()
        return self._observer.request_started(operation, request, correlation), token

    async def _run(
        self,
        operation: str,
        request: ChatRequest | EmbeddingRequest,
        serve: Callable[[RequestObservation], Awaitable[R]],
    ) -> R:
        observation, token = self._begin(operation, request)
        try:
            result = await serve(observation)
        except BaseException as exc:
            self._request_failed(operation, observation, exc)
            raise
        finally:
            end_request(token)
        self._counters.successes += 1
        observation.succeeded(result.backend, result.model)
        return result

    def _request_failed(
        self, operation: str, observation: RequestObservation, exc: BaseException
    ) -> None:
        if not isinstance(exc, Exception):  # cancelled, or a stream abandoned by its reader
            observation.cancelled()
            return
        if isinstance(exc, LlmBackendError):
            self._counters.failures += 1
            self._redactor.scrub(exc)
        self._log.info("request_failed", operation=operation, error=type(exc).__name__)
        observation.failed(exc)

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

    def _breaker_moved(self, name: str, old: CircuitState, new: CircuitState) -> None:
        self._log.warning("circuit_state_changed", backend=name, old=old.value, new=new.value)
        self._observer.breaker_changed(name, old, new)

    def _health_moved(self, name: str, healthy: bool) -> None:
        self._observer.health_changed(name, healthy)
