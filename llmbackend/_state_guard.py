"""How the service uses shared state: the response cache, rate limits and budgets.

* The cache is consulted before any backend is tried and fed after a normal answer.
* The global rate limiter admits each request once, around its whole attempt plan.
* Per attempt, the backend's own limiter admits the call and its budget ledger reserves the
  worst case (input estimate + ``max_tokens`` at the output price) atomically; after the call the
  reservation is settled to the real cost, or released if the call failed before any cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from attrs import define, field

from llmbackend._logging import LoggerFactory
from llmbackend.backends.base import BaseLlmBackend
from llmbackend.models import ChatRequest, EmbeddingRequest, LlmResponse
from llmbackend.settings import LlmSettings, RateLimitSettings
from llmbackend.state._cost import estimate_prompt_tokens, worst_case_cost

if TYPE_CHECKING:
    # The features themselves load in build_state_guard, when a configuration uses them.
    from llmbackend.state import (
        BudgetLedger,
        BudgetSnapshot,
        CacheKey,
        CacheStatistics,
        RateLimiter,
        RateLimitPolicy,
        ResponseCache,
        StateStore,
    )

__all__ = ["Bill", "StateGuard", "build_state_guard", "needs_store", "request_estimate"]


@define
class Bill:
    """What one attempt cost, filled in by the caller before the attempt's scope ends."""

    #: The real cost in USD (``None``: unknown).
    cost_usd: float | None = None
    #: Whether the provider may have charged for output (a stream cut after content).
    charged_unknown: bool = False
    #: Tokens really used (for tokens-per-minute limits).
    tokens: int | None = None


@define
class StateGuard:
    """The shared-state features one service uses; each is optional."""

    cache: ResponseCache | None = None
    limiter: RateLimiter | None = None
    backend_limiters: Mapping[str, RateLimiter] = field(factory=dict)
    ledgers: Mapping[str, BudgetLedger] = field(factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.cache or self.limiter or self.backend_limiters or self.ledgers)

    # --- cache -----------------------------------------------------------------------------

    def cache_key(self, request: ChatRequest) -> CacheKey | None:
        """The cache key of ``request`` (``None``: caching is off for it)."""
        if self.cache is None or not (request.cache_read or request.cache_write):
            return None
        return self.cache.key_for(request, backend=request.preferred_backend, model=request.model)

    async def lookup(self, request: ChatRequest, key: CacheKey | None) -> LlmResponse | None:
        if self.cache is None or key is None or not request.cache_read:
            return None
        return await self.cache.get(key)

    async def remember(
        self, request: ChatRequest, key: CacheKey | None, response: LlmResponse | None
    ) -> None:
        if self.cache is None or key is None or response is None or not request.cache_write:
            return
        await self.cache.put(key, response)

    def cache_statistics(self) -> CacheStatistics | None:
        return self.cache.statistics() if self.cache is not None else None

    # --- rate limits and budgets --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def admission(self) -> AsyncIterator[None]:
        """The global limiter's admission for one whole request."""
        if self.limiter is None:
            yield
            return
        async with self.limiter.acquire():
            yield

    @contextlib.asynccontextmanager
    async def attempt(
        self, backend: BaseLlmBackend, request: ChatRequest | EmbeddingRequest
    ) -> AsyncIterator[Bill]:
        """Admission and budget for one attempt of ``request`` on ``backend``.

        The token estimate (which encodes the messages) is only made when this backend has
        a limiter or a budget.

        Raises ``RateLimitedError(source="sdk")`` or ``BudgetExceededError`` before the call
        when the backend cannot take it; the service then fails over.
        """
        bill = Bill()
        ledger = self.ledgers.get(backend.name)
        limiter = self.backend_limiters.get(backend.name)
        if ledger is None and limiter is None:
            yield bill
            return
        estimate, max_tokens = request_estimate(request, backend)
        permit = await limiter.acquire(tokens=estimate + max_tokens) if limiter else None
        try:
            reservation = None
            if ledger is not None:
                worst = worst_case_cost(backend.config, estimate, max_tokens)
                reservation = await ledger.reserve(worst or 0.0)
            try:
                yield bill
            finally:
                if reservation is not None and ledger is not None:
                    if bill.cost_usd is not None:
                        await ledger.settle(reservation, bill.cost_usd)
                    elif bill.charged_unknown:
                        await ledger.settle(reservation, None)  # keep the worst case
                    else:
                        await ledger.release(reservation)
        finally:
            if permit is not None:
                if bill.tokens is not None:
                    permit.record_tokens(bill.tokens)
                await permit.release()

    def budget(self, name: str) -> BudgetSnapshot | None:
        """The last known budget state of backend ``name`` (no store call)."""
        ledger = self.ledgers.get(name)
        return ledger.last_known() if ledger is not None else None


def request_estimate(
    request: ChatRequest | EmbeddingRequest, backend: BaseLlmBackend
) -> tuple[int, int]:
    """(input token estimate, output token bound) of ``request`` on ``backend``."""
    if isinstance(request, EmbeddingRequest):
        return sum(len(text) // 4 + 1 for text in request.inputs), 0
    return estimate_prompt_tokens(
        request
    ), request.max_tokens or backend.config.max_output_tokens or 0


def needs_store(settings: LlmSettings) -> bool:
    """Whether any feature needs a state store (cache, rate limits, budgets)."""
    return (
        settings.caching.enabled
        or settings.rate_limit.enabled
        or any(
            config.max_spend_usd is not None
            or config.tokens_per_minute
            or (config.rate_limit is not None and config.rate_limit.enabled)
            for config in settings.backends
        )
    )


def build_state_guard(
    settings: LlmSettings, store: StateStore | None, logger_factory: LoggerFactory
) -> StateGuard:
    """The guard for ``settings`` on ``store`` (``None``: no state features are on)."""
    if store is None:
        return StateGuard()
    from llmbackend.state import BudgetLedger, RateLimiter, RateLimitPolicy, ResponseCache

    # A crashed process's slots and holds lapse after the longest a request may take.
    lease = settings.timeout_seconds * 2

    def policy(section: RateLimitSettings, tokens_per_minute: int | None) -> RateLimitPolicy:
        return RateLimitPolicy.from_settings(
            section,
            queue_timeout_seconds=section.queue_timeout_seconds,
            tokens_per_minute=tokens_per_minute or 0,
            lease_seconds=lease,
        )

    backend_limiters = {
        config.name: RateLimiter(
            store,
            policy(config.rate_limit or RateLimitSettings(enabled=False), config.tokens_per_minute),
            name=config.name,
        )
        for config in settings.backends
        if config.tokens_per_minute or (config.rate_limit is not None and config.rate_limit.enabled)
    }
    return StateGuard(
        cache=ResponseCache(store, settings.caching, logger_factory=logger_factory)
        if settings.caching.enabled
        else None,
        limiter=RateLimiter(store, policy(settings.rate_limit, None))
        if settings.rate_limit.enabled
        else None,
        backend_limiters=backend_limiters,
        ledgers={
            config.name: BudgetLedger(
                store, config, lease_seconds=lease, logger_factory=logger_factory
            )
            for config in settings.backends
            if config.max_spend_usd is not None
        },
    )
