"""The small store protocols behind the cache, the budget ledger and the rate limiter.

Each protocol has three implementations (memory, SQLite, Redis). The feature classes
(:class:`~llmbackend.state.ResponseCache`, :class:`~llmbackend.state.BudgetLedger`,
:class:`~llmbackend.state.RateLimiter`) hold the policy; a store only keeps state and makes
each operation atomic, so the policy is written once and every store obeys it the same way.

Money crosses this boundary as integer nano-dollars, so "fits exactly N requests" is exact
arithmetic in Python, SQLite and Lua alike. Times are seconds since the epoch from the
caller's clock (injectable in tests), never the store's own.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from attrs import frozen

__all__ = [
    "NANO_PER_USD",
    "CacheStore",
    "HoldOutcome",
    "LedgerStore",
    "LedgerTotals",
    "LimitDecision",
    "LimitSpec",
    "LimiterStore",
    "StateStore",
    "from_nano",
    "to_nano",
]

#: Money is stored as integer nano-dollars (1e-9 USD): exact sums, no float drift.
NANO_PER_USD = 1_000_000_000


def to_nano(usd: float) -> int:
    """``usd`` as integer nano-dollars."""
    return round(usd * NANO_PER_USD)


def from_nano(amount: int) -> float:
    """Integer nano-dollars as USD."""
    return amount / NANO_PER_USD


@frozen(kw_only=True)
class HoldOutcome:
    """The answer to a reservation: granted or not, and the totals it was judged against."""

    granted: bool
    #: Spend settled in the period (nano-dollars).
    spent: int
    #: Held by live reservations, including this one when granted (nano-dollars).
    reserved: int


@frozen(kw_only=True)
class LedgerTotals:
    spent: int
    reserved: int


@frozen(kw_only=True)
class LimitSpec:
    """The limits one acquire is judged against; ``0`` means "no limit" for each."""

    window_seconds: float
    max_requests: int
    max_concurrent: int
    tokens_per_minute: int


@frozen(kw_only=True)
class LimitDecision:
    """Admitted, or not yet: ``retry_after`` seconds until the limit that said no may say yes."""

    granted: bool
    retry_after: float = 0.0
    #: Which limit refused: ``window``, ``concurrency`` or ``tokens`` (empty when granted).
    reason: str = ""


GRANTED = LimitDecision(granted=True)


class CacheStore(Protocol):
    """Bytes under keys, with a time to live and (where the store can) a size bound."""

    async def cache_get(self, key: str) -> bytes | None:
        """The value under ``key``, or ``None``."""
        ...

    async def cache_put(
        self, key: str, value: bytes, *, now: float, ttl_seconds: float, max_bytes: int
    ) -> None:
        """Store ``value``; evict (memory: least recently used; SQLite: periodically, the
        soonest to expire) to keep the total near ``max_bytes``. Redis relies on the TTL and
        the server's ``maxmemory`` policy."""
        ...


class LedgerStore(Protocol):
    """Spend and live reservations per scope (a backend) and period."""

    async def ledger_reserve(
        self,
        scope: str,
        period: str,
        hold_id: str,
        amount: int,
        limit: int | None,
        *,
        now: float,
        lease_until: float,
        keep_for: float | None,
    ) -> HoldOutcome:
        """Atomically: drop holds whose lease ended before ``now``, then add the hold if
        ``spent + reserved + amount <= limit`` (always when ``limit`` is ``None``)."""
        ...

    async def ledger_settle(
        self, scope: str, period: str, hold_id: str, actual: int, *, keep_for: float | None
    ) -> None:
        """Atomically drop the hold (if still there) and add ``actual`` to the spend."""
        ...

    async def ledger_release(self, scope: str, period: str, hold_id: str) -> None:
        """Drop the hold without spending anything."""
        ...

    async def ledger_totals(self, scope: str, period: str, *, now: float) -> LedgerTotals:
        """Spend and live (unexpired) reservations of the period."""
        ...


class LimiterStore(Protocol):
    """Sliding request windows, leased concurrency slots and token buckets per scope."""

    async def limiter_acquire(
        self,
        scope: str,
        ticket: str,
        spec: LimitSpec,
        *,
        now: float,
        lease_until: float,
        tokens: int,
    ) -> LimitDecision:
        """Atomically admit ``ticket`` if every limit allows it, taking all of them at once,
        or take nothing and say how long to wait."""
        ...

    async def limiter_release(
        self, scope: str, ticket: str, spec: LimitSpec, *, now: float, token_refund: int
    ) -> None:
        """Free the ticket's concurrency slot and give back ``token_refund`` tokens (negative:
        the call used more than it announced)."""
        ...


@runtime_checkable
class StateStore(CacheStore, LedgerStore, LimiterStore, Protocol):
    """One connection to one store, serving all three features. Close it with ``aclose()``."""

    @property
    def kind(self) -> str:
        """``memory``, ``sqlite`` or ``redis``."""
        ...

    @property
    def key_prefix(self) -> str:
        """Prepended to every key, so several services can share one store."""
        ...

    async def aclose(self) -> None:
        """Release what the store owns. Idempotent."""
        ...
