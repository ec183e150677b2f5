"""``RateLimiter``: requests per sliding window, concurrent requests, tokens per minute, and a
bounded wait queue, enforced in any store (across processes with SQLite or Redis).

Each admission is one atomic store operation that checks every limit and takes all of them
or none. A caller that is not admitted waits in this process's queue (at most
``queue_limit`` callers, each at most ``queue_timeout_seconds``); past either bound it gets
``RateLimitedError(source="sdk")``, which says the SDK refused, not the provider. Concurrency
slots are leases: a process that dies holding one loses it after ``lease_seconds``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from attrs import define, frozen

from llmbackend._logging import LoggerFactory
from llmbackend.errors import RateLimitedError, StateStoreError
from llmbackend.settings import RateLimitSettings
from llmbackend.state._protocols import LimitDecision, LimiterStore, LimitSpec

__all__ = ["Permit", "RateLimitPolicy", "RateLimiter", "RateLimiterStatistics"]

#: Shortest pause between two admission attempts (a zero wait would spin).
_MIN_PAUSE = 0.001


@frozen(kw_only=True)
class RateLimitPolicy:
    """What one limiter enforces; ``0`` disables each limit."""

    max_requests: int = 0
    window_seconds: float = 60.0
    max_concurrent: int = 0
    #: Callers allowed to wait at once in this process; more are refused at once.
    queue_limit: int = 100
    #: Longest wait for admission before ``RateLimitedError``.
    queue_timeout_seconds: float = 30.0
    tokens_per_minute: int = 0
    #: Lifetime of a concurrency slot if its holder never releases it (crash). Keep it above
    #: the longest request (the service's ``timeout_seconds``).
    lease_seconds: float = 300.0

    @classmethod
    def from_settings(
        cls,
        settings: RateLimitSettings,
        *,
        queue_timeout_seconds: float = 30.0,
        tokens_per_minute: int = 0,
        lease_seconds: float = 300.0,
    ) -> RateLimitPolicy:
        """The policy of a ``rate_limit`` section; a disabled section limits nothing but the
        tokens per minute (configured separately, per backend)."""
        if not settings.enabled:
            return cls(tokens_per_minute=tokens_per_minute, lease_seconds=lease_seconds)
        return cls(
            max_requests=settings.max_requests,
            window_seconds=settings.window_seconds,
            max_concurrent=settings.max_concurrent_requests,
            queue_limit=settings.queue_limit,
            queue_timeout_seconds=queue_timeout_seconds,
            tokens_per_minute=tokens_per_minute,
            lease_seconds=lease_seconds,
        )

    @property
    def spec(self) -> LimitSpec:
        return LimitSpec(
            window_seconds=self.window_seconds,
            max_requests=max(self.max_requests, 0),
            max_concurrent=max(self.max_concurrent, 0),
            tokens_per_minute=max(self.tokens_per_minute, 0),
        )


@frozen(kw_only=True)
class RateLimiterStatistics:
    """Counters of one limiter in this process."""

    admitted: int
    #: Refused because the wait queue was full.
    rejected: int
    #: Refused because admission took longer than the queue timeout.
    timed_out: int
    waiting: int
    in_flight: int
    total_wait_seconds: float


@define
class _Counters:
    admitted: int = 0
    rejected: int = 0
    timed_out: int = 0
    in_flight: int = 0
    total_wait: float = 0.0


class Permit:
    """Admission to make one call. Release it when the call ends (``async with`` does)."""

    def __init__(self, limiter: RateLimiter, ticket: str, tokens: int, waited: float) -> None:
        self._limiter = limiter
        self.ticket = ticket
        #: Tokens announced at admission (counted against tokens per minute).
        self.tokens = tokens
        #: Seconds spent waiting for admission.
        self.waited_seconds = waited
        self._actual: int | None = None
        self._released = False

    def record_tokens(self, actual: int) -> None:
        """The tokens the call really used; the difference is settled on release."""
        self._actual = actual

    async def release(self) -> None:
        """Free the concurrency slot and settle the tokens. Idempotent."""
        if self._released:
            return
        self._released = True
        refund = 0 if self._actual is None else self.tokens - self._actual
        await self._limiter._release(self.ticket, refund)

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()


class _Acquiring:
    """``await limiter.acquire()`` gives a ``Permit``; ``async with`` also releases it."""

    def __init__(self, limiter: RateLimiter, tokens: int) -> None:
        self._limiter = limiter
        self._tokens = tokens
        self._permit: Permit | None = None

    def __await__(self) -> Generator[Any, None, Permit]:
        return self._limiter._acquire(self._tokens).__await__()

    async def __aenter__(self) -> Permit:
        self._permit = await self._limiter._acquire(self._tokens)
        return self._permit

    async def __aexit__(self, *exc_info: object) -> None:
        if self._permit is not None:
            await self._permit.release()


class RateLimiter:
    """Admits calls under a :class:`RateLimitPolicy`, its state in ``store`` under ``name``.

    ``name`` is the backend the limits belong to (``None``: the whole service). Limiters with
    the same name and store share their limits, also across processes. ``clock`` (seconds
    since the epoch) and ``sleep`` are injectable for deterministic tests; waits for a
    concurrency slot end early when this process frees one and otherwise poll every
    ``poll_interval`` seconds (a slot freed by another process sends no signal).
    """

    def __init__(
        self,
        store: LimiterStore,
        policy: RateLimitPolicy,
        *,
        name: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        poll_interval: float = 0.05,
        logger_factory: LoggerFactory | None = None,
    ) -> None:
        self._store = store
        self.policy = policy
        self._spec = policy.spec
        self._unlimited = not (
            self._spec.max_requests or self._spec.max_concurrent or self._spec.tokens_per_minute
        )
        self.name = name
        self._scope = "service" if name is None else f"backend:{name}"
        self._clock = clock
        self._sleep = sleep
        self._poll = poll_interval
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._queued = 0
        #: Slots freed by this process so far (to notice one freed during an attempt).
        self._releases = 0
        self._counters = _Counters()
        self._log = (logger_factory or LoggerFactory())("llmbackend.rate_limit")

    def acquire(self, *, tokens: int = 0) -> _Acquiring:
        """Wait for admission; ``tokens`` is the call's estimated token use."""
        return _Acquiring(self, max(tokens, 0))

    def statistics(self) -> RateLimiterStatistics:
        counters = self._counters
        return RateLimiterStatistics(
            admitted=counters.admitted,
            rejected=counters.rejected,
            timed_out=counters.timed_out,
            waiting=self._queued,
            in_flight=counters.in_flight,
            total_wait_seconds=counters.total_wait,
        )

    async def _try(self, ticket: str, tokens: int) -> LimitDecision:
        now = self._clock()
        try:
            return await self._store.limiter_acquire(
                self._scope,
                ticket,
                self._spec,
                now=now,
                lease_until=now + self.policy.lease_seconds,
                tokens=tokens,
            )
        except BaseException:
            # Cancelled (or failed) after the store may have granted the ticket: hand its
            # slot back now rather than leave it to the lease.
            if self._spec.max_concurrent:
                with contextlib.suppress(Exception):
                    await self._store.limiter_release(
                        self._scope, ticket, self._spec, now=now, token_refund=0
                    )
            raise

    async def _acquire(self, tokens: int) -> Permit:
        ticket = uuid.uuid4().hex
        if self._unlimited:
            return self._admitted(ticket, tokens, 0.0)
        started = self._clock()
        releases = self._releases
        decision = await self._try(ticket, tokens)
        if decision.granted:
            return self._admitted(ticket, tokens, 0.0)
        if self._queued >= self.policy.queue_limit:
            self._counters.rejected += 1
            raise self._refusal(
                f"wait queue full ({self.policy.queue_limit} waiting)",
                "sdk_queue_full",
                decision.retry_after,
            )
        deadline = started + self.policy.queue_timeout_seconds
        self._queued += 1
        try:
            while (remaining := deadline - self._clock()) > 0:
                wait = max(decision.retry_after, _MIN_PAUSE)
                if decision.reason == "concurrency":
                    # A slot freed here while our attempt was in flight sent its wake-up
                    # before we listened: try again at once instead of missing it.
                    wait = 0.0 if releases != self._releases else min(wait, self._poll)
                if wait > 0:
                    await self._pause(min(wait, remaining))
                releases = self._releases
                decision = await self._try(ticket, tokens)
                if decision.granted:
                    return self._admitted(ticket, tokens, self._clock() - started)
        finally:
            self._queued -= 1
        self._counters.timed_out += 1
        raise self._refusal(
            f"not admitted within {self.policy.queue_timeout_seconds:g} s "
            f"({decision.reason} limit)",
            "sdk_queue_timeout",
            decision.retry_after,
        )

    def _admitted(self, ticket: str, tokens: int, waited: float) -> Permit:
        self._counters.admitted += 1
        self._counters.in_flight += 1
        self._counters.total_wait += waited
        return Permit(self, ticket, tokens, waited)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if this process frees a slot meanwhile."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            waiter.cancel()
            sleeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sleeper

    async def _release(self, ticket: str, token_refund: int) -> None:
        self._counters.in_flight -= 1
        spec = self._spec
        try:
            if spec.max_concurrent or (spec.tokens_per_minute and token_refund):
                await self._store.limiter_release(
                    self._scope, ticket, spec, now=self._clock(), token_refund=token_refund
                )
        except StateStoreError as exc:
            # The slot's lease frees it later; failing the finished call would help nobody.
            self._log.warning("rate_limit_release_failed", limiter=self._scope, error=str(exc))
        finally:
            self._releases += 1
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break

    def _refusal(self, why: str, code: str, retry_after: float) -> RateLimitedError:
        where = "service" if self.name is None else f"backend {self.name!r}"
        error = RateLimitedError(
            f"SDK rate limiter of the {where}: {why}",
            source="sdk",
            backend=self.name,
            retryable=False,
            retry_after=max(retry_after, 0.0),
            code=code,
        )
        # The provider never saw this call; its circuit breaker must not count it.
        error.trips_breaker = False
        return error
