"""Shared state: the response cache, rate limits and budgets, in memory, SQLite or Redis.

Open a store with :func:`open_store` and build the features on it::

    async with open_store("sqlite", "state.db", key_prefix="llm:") as store:
        cache = ResponseCache(store, settings.caching)
        ledger = BudgetLedger(store, settings.backend("openai"))
        limiter = RateLimiter(store, RateLimitPolicy.from_settings(settings.rate_limit))

The drivers (``aiosqlite``, ``redis``) are optional extras, imported only when their store
is opened.
"""

from typing import TYPE_CHECKING

from llmbackend._lazy import lazy_names

if TYPE_CHECKING:
    from llmbackend.state._budget import BudgetLedger, BudgetSnapshot, Reservation
    from llmbackend.state._cache import (
        CACHEABLE_FINISH_REASONS,
        CacheKey,
        CacheStatistics,
        ResponseCache,
        canonical_request,
    )
    from llmbackend.state._cost import estimate_prompt_tokens, worst_case_cost
    from llmbackend.state._factory import open_store
    from llmbackend.state._limiter import (
        Permit,
        RateLimiter,
        RateLimiterStatistics,
        RateLimitPolicy,
    )
    from llmbackend.state._memory import MemoryStore
    from llmbackend.state._periods import BudgetPeriod, budget_period
    from llmbackend.state._protocols import CacheStore, LedgerStore, LimiterStore, StateStore
    from llmbackend.state._streams import StreamAssembler, replay_stream

__all__ = [
    "CACHEABLE_FINISH_REASONS",
    "BudgetLedger",
    "BudgetPeriod",
    "BudgetSnapshot",
    "CacheKey",
    "CacheStatistics",
    "CacheStore",
    "LedgerStore",
    "LimiterStore",
    "MemoryStore",
    "Permit",
    "RateLimitPolicy",
    "RateLimiter",
    "RateLimiterStatistics",
    "Reservation",
    "ResponseCache",
    "StateStore",
    "StreamAssembler",
    "budget_period",
    "canonical_request",
    "estimate_prompt_tokens",
    "open_store",
    "replay_stream",
    "worst_case_cost",
]

#: Each name loads its own module on first use, so the service imports only what its
#: configuration needs (no converter, limiter or ledger code without a cache or budget).
_LAZY = {
    "BudgetLedger": "llmbackend.state._budget",
    "BudgetPeriod": "llmbackend.state._periods",
    "BudgetSnapshot": "llmbackend.state._budget",
    "CACHEABLE_FINISH_REASONS": "llmbackend.state._cache",
    "CacheKey": "llmbackend.state._cache",
    "CacheStatistics": "llmbackend.state._cache",
    "CacheStore": "llmbackend.state._protocols",
    "LedgerStore": "llmbackend.state._protocols",
    "LimiterStore": "llmbackend.state._protocols",
    "MemoryStore": "llmbackend.state._memory",
    "Permit": "llmbackend.state._limiter",
    "RateLimitPolicy": "llmbackend.state._limiter",
    "RateLimiter": "llmbackend.state._limiter",
    "RateLimiterStatistics": "llmbackend.state._limiter",
    "Reservation": "llmbackend.state._budget",
    "ResponseCache": "llmbackend.state._cache",
    "StateStore": "llmbackend.state._protocols",
    "StreamAssembler": "llmbackend.state._streams",
    "budget_period": "llmbackend.state._periods",
    "canonical_request": "llmbackend.state._cache",
    "estimate_prompt_tokens": "llmbackend.state._cost",
    "open_store": "llmbackend.state._factory",
    "replay_stream": "llmbackend.state._streams",
    "worst_case_cost": "llmbackend.state._cost",
}


__getattr__, __dir__ = lazy_names(globals(), _LAZY, __all__)
