"""The in-memory store: the default, for one process.

Every operation runs without awaiting anything, so on one event loop each is atomic by
construction: no lock is needed and none is taken.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from attrs import define, field

from llmbackend.state._protocols import (
    GRANTED,
    HoldOutcome,
    LedgerTotals,
    LimitDecision,
    LimitSpec,
)

__all__ = ["MemoryStore"]


@define
class _Period:
    spent: int = 0
    #: hold id -> (amount, lease end)
    holds: dict[str, tuple[int, float]] = field(factory=dict)

    def purge(self, now: float) -> None:
        expired = [key for key, (_, until) in self.holds.items() if until < now]
        for key in expired:
            del self.holds[key]

    def reserved(self) -> int:
        return sum(amount for amount, _ in self.holds.values())


@define
class _Limits:
    window: collections.deque[float] = field(factory=collections.deque)
    #: ticket -> lease end
    slots: dict[str, float] = field(factory=dict)
    tokens: float | None = None
    tokens_at: float = 0.0


def _refilled(limits: _Limits, spec: LimitSpec, now: float) -> float:
    capacity = float(spec.tokens_per_minute)
    if limits.tokens is None:
        return capacity
    elapsed = max(now - limits.tokens_at, 0.0)
    return min(capacity, limits.tokens + elapsed * capacity / 60.0)


def _earliest(values: Iterable[float]) -> float:
    return min(values, default=0.0)


class MemoryStore:
    """Cache, ledger and limiter state in dictionaries of this process."""

    kind = "memory"

    def __init__(self, key_prefix: str = "llm:") -> None:
        self._prefix = key_prefix
        self._cache: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._cache_bytes = 0
        self._periods: dict[tuple[str, str], _Period] = {}
        self._limits: dict[str, _Limits] = {}
        self._closed = False

    @property
    def key_prefix(self) -> str:
        return self._prefix

    async def aclose(self) -> None:
        self._closed = True

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- cache: LRU by bytes -----------------------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        value = self._cache.get(key)
        if value is not None:
            self._cache.move_to_end(key)
        return value

    async def cache_put(
        self, key: str, value: bytes, *, now: float, ttl_seconds: float, max_bytes: int
    ) -> None:
        # Expiry is judged by the cache itself (it is inside the value); here only the size.
        del now, ttl_seconds
        old = self._cache.pop(key, None)
        if old is not None:
            self._cache_bytes -= len(old)
        if len(value) > max_bytes:
            return
        self._cache[key] = value
        self._cache_bytes += len(value)
        while self._cache_bytes > max_bytes:
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= len(evicted)

    # --- ledger --------------------------------------------------------------------------------

    def _period(self, scope: str, period: str) -> _Period:
        return self._periods.setdefault((scope, period), _Period())

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
        del keep_for  # a process's memory is gone long before any retention would matter
        state = self._period(scope, period)
        state.purge(now)
        reserved = state.reserved()
        if limit is not None and state.spent + reserved + amount > limit:
            return HoldOutcome(granted=False, spent=state.spent, reserved=reserved)
        state.holds[hold_id] = (amount, lease_until)
        return HoldOutcome(granted=True, spent=state.spent, reserved=reserved + amount)

    async def ledger_settle(
        self, scope: str, period: str, hold_id: str, actual: int, *, keep_for: float | None
    ) -> None:
        del keep_for
        state = self._period(scope, period)
        state.holds.pop(hold_id, None)
        state.spent += actual

    async def ledger_release(self, scope: str, period: str, hold_id: str) -> None:
        self._period(scope, period).holds.pop(hold_id, None)

    async def ledger_totals(self, scope: str, period: str, *, now: float) -> LedgerTotals:
        state = self._period(scope, period)
        state.purge(now)
        return LedgerTotals(spent=state.spent, reserved=state.reserved())

    # --- limiter -----------------------------------------------------------------------------

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
        limits = self._limits.setdefault(scope, _Limits())
        window = limits.window
        if spec.max_requests > 0:
            while window and window[0] <= now - spec.window_seconds:
                window.popleft()
            if len(window) >= spec.max_requests:
                oldest = window[len(window) - spec.max_requests]
                wait = oldest + spec.window_seconds - now
                return LimitDecision(granted=False, retry_after=wait, reason="window")
        if spec.max_concurrent > 0:
            for held, until in list(limits.slots.items()):
                if until < now:
                    del limits.slots[held]
            if len(limits.slots) >= spec.max_concurrent:
                wait = _earliest(limits.slots.values()) - now
                return LimitDecision(granted=False, retry_after=wait, reason="concurrency")
        level = 0.0
        if spec.tokens_per_minute > 0:
            level = _refilled(limits, spec, now)
            need = min(tokens, spec.tokens_per_minute)
            if level < need:
                wait = (need - level) * 60.0 / spec.tokens_per_minute
                return LimitDecision(granted=False, retry_after=wait, reason="tokens")
            limits.tokens, limits.tokens_at = level - need, now
        if spec.max_requests > 0:
            window.append(now)
        if spec.max_concurrent > 0:
            limits.slots[ticket] = lease_until
        return GRANTED

    async def limiter_release(
        self, scope: str, ticket: str, spec: LimitSpec, *, now: float, token_refund: int
    ) -> None:
        limits = self._limits.setdefault(scope, _Limits())
        limits.slots.pop(ticket, None)
        if spec.tokens_per_minute > 0 and token_refund:
            level = _refilled(limits, spec, now) + token_refund
            limits.tokens = min(level, float(spec.tokens_per_minute))
            limits.tokens_at = now
