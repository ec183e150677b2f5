"""The Redis store (``redis.asyncio``): shared by many processes and machines.

Every decision that reads and then writes is one Lua script, which Redis runs atomically: no
client-side locking, no WATCH/retry loops. The keys of one logical set (a backend's budget
period, a limiter's window, slots and bucket) share a hash tag, so the store works on Redis
Cluster when given a ``redis.asyncio.RedisCluster`` client. Cache entries are single keys with
a TTL; bound their total size with the server's ``maxmemory`` and an LRU eviction policy.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from llmbackend.errors import StateStoreError
from llmbackend.state import _redis_scripts as scripts
from llmbackend.state._protocols import (
    GRANTED,
    HoldOutcome,
    LedgerTotals,
    LimitDecision,
    LimitSpec,
)

__all__ = ["RedisStore"]

RedisClient = aioredis.Redis | RedisCluster


@contextlib.contextmanager
def _mapped(operation: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StateStoreError(
            f"redis store failed during {operation}: {type(exc).__name__}: {exc}"
        ) from exc


def _tag_safe(text: str) -> str:
    # Braces inside a key would move the hash tag; keep one logical set in one slot.
    return text.replace("{", "(").replace("}", ")")


def _keep_ms(keep_for: float | None) -> int:
    return 0 if keep_for is None else max(math.ceil(keep_for * 1000), 1)


class RedisStore:
    """Cache, ledger and limiter state in Redis."""

    kind = "redis"

    def __init__(
        self, client: RedisClient, *, key_prefix: str = "llm:", owns_client: bool = False
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._owns = owns_client
        self._closed = False
        register = client.register_script
        self._reserve = register(scripts.LEDGER_RESERVE)
        self._settle = register(scripts.LEDGER_SETTLE)
        self._release = register(scripts.LEDGER_RELEASE)
        self._totals = register(scripts.LEDGER_TOTALS)
        self._acquire = register(scripts.LIMITER_ACQUIRE)
        self._free = register(scripts.LIMITER_RELEASE)

    @classmethod
    async def connect(
        cls, url: str, *, key_prefix: str = "llm:", max_connections: int = 64
    ) -> RedisStore:
        """Connect to ``url`` (``redis://``, ``rediss://``, ``unix://``; query options such as
        ``?max_connections=`` win) and check it answers; the store owns (and closes) the client.

        The pool blocks: with more concurrent calls than connections, callers wait for a free
        connection instead of failing with "too many connections".
        """
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections)
        client = aioredis.Redis.from_pool(pool)
        try:
            with _mapped("connect"):
                await client.ping()
        except BaseException:
            await client.aclose()
            raise
        return cls(client, key_prefix=key_prefix, owns_client=True)

    @property
    def key_prefix(self) -> str:
        return self._prefix

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns:
            await self._client.aclose()

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _tag(self, feature: str, scope: str) -> str:
        return "{" + _tag_safe(f"{self._prefix}{feature}:{scope}") + "}"

    def _ledger_keys(self, scope: str, period: str) -> list[str]:
        base = f"{self._tag('budget', scope)}:{period}"
        return [f"{base}:spent", f"{base}:holds", f"{base}:leases"]

    def _limiter_keys(self, scope: str) -> list[str]:
        tag = self._tag("limit", scope)
        return [f"{tag}:window", f"{tag}:slots", f"{tag}:tokens"]

    async def _run(
        self, operation: str, script: Any, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        if self._closed:
            raise StateStoreError(f"redis store is closed ({operation})")
        with _mapped(operation):
            return await script(keys=list(keys), args=list(args))

    # --- cache ---------------------------------------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        if self._closed:
            raise StateStoreError("redis store is closed (cache read)")
        with _mapped("cache read"):
            value = await self._client.get(self._prefix + key)
        if isinstance(value, str):  # a borrowed client may decode responses
            return value.encode()
        return value if isinstance(value, bytes) else None

    async def cache_put(
        self, key: str, value: bytes, *, now: float, ttl_seconds: float, max_bytes: int
    ) -> None:
        del now
        if len(value) > max_bytes:
            return
        if self._closed:
            raise StateStoreError("redis store is closed (cache write)")
        with _mapped("cache write"):
            await self._client.set(self._prefix + key, value, px=max(int(ttl_seconds * 1000), 1))

    # --- ledger --------------------------------------------------------------------------------

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
        granted, spent, reserved = await self._run(
            "budget reserve",
            self._reserve,
            self._ledger_keys(scope, period),
            [
                repr(now),
                hold_id,
                amount,
                -1 if limit is None else limit,
                repr(lease_until),
                _keep_ms(keep_for),
            ],
        )
        return HoldOutcome(granted=bool(granted), spent=int(spent), reserved=int(reserved))

    async def ledger_settle(
        self, scope: str, period: str, hold_id: str, actual: int, *, keep_for: float | None
    ) -> None:
        await self._run(
            "budget settle",
            self._settle,
            self._ledger_keys(scope, period),
            [hold_id, actual, _keep_ms(keep_for)],
        )

    async def ledger_release(self, scope: str, period: str, hold_id: str) -> None:
        keys = self._ledger_keys(scope, period)
        await self._run("budget release", self._release, keys, [hold_id])

    async def ledger_totals(self, scope: str, period: str, *, now: float) -> LedgerTotals:
        keys = self._ledger_keys(scope, period)
        spent, reserved = await self._run("budget read", self._totals, keys, [repr(now)])
        return LedgerTotals(spent=int(spent), reserved=int(reserved))

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
        granted, retry_after, reason = await self._run(
            "rate limit acquire",
            self._acquire,
            self._limiter_keys(scope),
            [
                repr(now),
                ticket,
                repr(spec.window_seconds),
                spec.max_requests,
                spec.max_concurrent,
                repr(lease_until),
                tokens,
                spec.tokens_per_minute,
            ],
        )
        if granted:
            return GRANTED
        why = reason.decode() if isinstance(reason, bytes) else str(reason)
        return LimitDecision(granted=False, retry_after=float(retry_after), reason=why)

    async def limiter_release(
        self, scope: str, ticket: str, spec: LimitSpec, *, now: float, token_refund: int
    ) -> None:
        window, slots, tokens = self._limiter_keys(scope)
        del window
        await self._run(
            "rate limit release",
            self._free,
            [slots, tokens],
            [repr(now), ticket, spec.tokens_per_minute, token_refund],
        )
