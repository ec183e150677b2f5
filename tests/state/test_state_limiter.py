"""The SDK's rate limiter over every store: sliding windows, concurrency slots with leases,
tokens per minute, the bounded wait queue and its errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmbackend.errors import RateLimitedError
from llmbackend.settings import RateLimitSettings
from llmbackend.state import RateLimiter, RateLimitPolicy, StateStore


class Clock:
    """Wall-clock seconds that move only when a waiter sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def until_waiting(limits: RateLimiter, count: int) -> None:
    """Let the loop run until ``count`` callers wait in the queue (bounded)."""
    async with asyncio.timeout(10):
        # The limiter signals nothing when a caller starts waiting; yield until one does.
        while limits.statistics().waiting < count:  # noqa: ASYNC110
            await asyncio.sleep(0)


async def never(_seconds: float) -> None:
    """A sleep that only ends when cancelled: a waiter must be woken by a release."""
    await asyncio.Event().wait()


def limiter(store: Any, clock: Clock, *, sleep: Any = None, **policy: Any) -> RateLimiter:
    return RateLimiter(
        store,
        RateLimitPolicy(**policy),
        name="b1",
        clock=clock,
        sleep=sleep or clock.sleep,
    )


async def test_requests_beyond_the_window_wait_until_it_slides(store: StateStore) -> None:
    """max_requests per window_seconds: the fourth of three-per-10-s waits exactly until the
    first leaves the window."""
    clock = Clock()
    limits = limiter(store, clock, max_requests=3, window_seconds=10)
    for _ in range(3):
        async with limits.acquire() as permit:
            assert permit.waited_seconds == 0.0
        clock.now += 1
    async with limits.acquire() as permit:
        assert permit.waited_seconds == pytest.approx(7.0)
    assert clock.now == pytest.approx(1_800_000_010.0)


async def test_a_full_queue_is_refused_by_the_sdk_not_the_provider(store: StateStore) -> None:
    """With no room in the wait queue the caller gets RateLimitedError(source='sdk') at once:
    not retryable on the same backend, never counted by the circuit breaker, with a hint
    when to come back."""
    clock = Clock()
    limits = limiter(store, clock, max_requests=1, window_seconds=30, queue_limit=0)
    await limits.acquire()
    with pytest.raises(RateLimitedError) as refused:
        await limits.acquire()
    error = refused.value
    assert error.source == "sdk"
    assert error.code == "sdk_queue_full"
    assert error.backend == "b1"
    assert not error.retryable
    assert not error.trips_breaker
    assert error.retry_after == pytest.approx(30.0)
    assert "SDK rate limiter" in str(error)
    assert RateLimitedError("429").source == "provider"
    assert limits.statistics().rejected == 1


async def test_a_concurrency_slot_freed_in_this_process_wakes_a_waiter(
    store: StateStore,
) -> None:
    """max_concurrent_requests: a third caller waits while two hold slots, and is admitted
    as soon as one is released (woken, not by a timer: its sleep never ends)."""
    clock = Clock()
    limits = limiter(store, clock, sleep=never, max_concurrent=2, queue_timeout_seconds=60)
    first = await limits.acquire()
    await limits.acquire()
    third = asyncio.ensure_future(limits.acquire())
    await until_waiting(limits, 1)
    assert not third.done()
    await first.release()
    permit = await asyncio.wait_for(third, timeout=10)
    assert limits.statistics().in_flight == 2
    await permit.release()


async def test_waiting_longer_than_the_queue_timeout_is_refused(store: StateStore) -> None:
    """A caller not admitted within queue_timeout_seconds gets RateLimitedError(sdk)."""
    clock = Clock()
    limits = limiter(store, clock, max_concurrent=1, queue_timeout_seconds=5)
    await limits.acquire()
    with pytest.raises(RateLimitedError) as refused:
        await limits.acquire()
    assert refused.value.code == "sdk_queue_timeout"
    assert refused.value.source == "sdk"
    assert "concurrency" in str(refused.value)
    assert clock.now == pytest.approx(1_800_000_005.0)
    stats = limits.statistics()
    assert (stats.timed_out, stats.waiting) == (1, 0)


async def test_the_queue_holds_at_most_queue_limit_waiters(store: StateStore) -> None:
    """queue_limit callers may wait; the next one is refused at once."""
    clock = Clock()
    limits = limiter(store, clock, sleep=never, max_concurrent=1, queue_limit=2)
    held = await limits.acquire()
    waiters = [asyncio.ensure_future(limits.acquire()) for _ in range(2)]
    await until_waiting(limits, 2)
    with pytest.raises(RateLimitedError, match="queue full"):
        await limits.acquire()
    await held.release()
    second = await asyncio.wait_for(waiters[0], timeout=10)
    await second.release()
    await (await asyncio.wait_for(waiters[1], timeout=10)).release()


async def test_a_slot_held_by_a_crashed_process_lapses_after_its_lease(
    store: StateStore,
) -> None:
    """A slot never released (its process died) frees itself after lease_seconds."""
    clock = Clock()
    crashed = limiter(store, clock, max_concurrent=1, lease_seconds=30, queue_limit=0)
    await crashed.acquire()  # never released
    survivor = limiter(store, clock, max_concurrent=1, lease_seconds=30, queue_limit=0)
    with pytest.raises(RateLimitedError):
        await survivor.acquire()
    clock.now += 31
    await (await survivor.acquire()).release()


async def test_tokens_per_minute_wait_for_the_bucket_to_refill(store: StateStore) -> None:
    """tokens_per_minute: a call announcing more tokens than are left waits for the refill;
    recording fewer actual tokens gives the difference back."""
    clock = Clock()
    limits = limiter(store, clock, tokens_per_minute=1000, queue_timeout_seconds=60)
    async with limits.acquire(tokens=600) as permit:
        permit.record_tokens(100)  # used far less than announced: 500 come back
    async with limits.acquire(tokens=900) as permit:
        assert permit.waited_seconds == 0.0
        permit.record_tokens(900)
    async with limits.acquire(tokens=600) as permit:  # 0 left: 36 s to refill 600
        assert permit.waited_seconds == pytest.approx(36.0)


async def test_256_concurrent_callers_get_exactly_the_window(store: StateStore) -> None:
    """256 callers at once against 25 requests per window: exactly 25 are admitted, the rest
    refused by the SDK (no queue), whatever the interleaving."""
    clock = Clock()
    limits = limiter(store, clock, max_requests=25, window_seconds=3600, queue_limit=0)

    async def call() -> bool:
        try:
            permit = await limits.acquire()
        except RateLimitedError:
            return False
        await permit.release()
        return True

    outcomes = await asyncio.gather(*(call() for _ in range(256)))
    assert sum(outcomes) == 25


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
async def test_replicas_with_the_same_name_share_their_limits(
    store: StateStore, reopen: Any
) -> None:
    """Two store connections (two replicas) limiting the same backend share one window."""
    clock = Clock()
    async with reopen() as other:
        mine = limiter(store, clock, max_requests=2, window_seconds=60, queue_limit=0)
        theirs = limiter(other, clock, max_requests=2, window_seconds=60, queue_limit=0)
        await mine.acquire()
        await theirs.acquire()
        with pytest.raises(RateLimitedError):
            await mine.acquire()


async def test_a_cancelled_waiter_leaves_the_queue(store: StateStore) -> None:
    """Cancelling a waiting caller frees its place in the queue and leaves no task behind."""
    clock = Clock()
    limits = limiter(store, clock, sleep=never, max_concurrent=1, queue_limit=1)
    await limits.acquire()
    waiter = asyncio.ensure_future(limits.acquire())
    await until_waiting(limits, 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limits.statistics().waiting == 0
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert pending == []


async def test_without_limits_nothing_is_asked_of_the_store() -> None:
    """A policy with every limit at 0 admits at once without touching the store."""
    limits = RateLimiter(object(), RateLimitPolicy())  # type: ignore[arg-type]
    async with limits.acquire(tokens=10**6):
        pass
    assert limits.statistics().admitted == 1


def test_the_policy_comes_from_the_settings() -> None:
    """RateLimitPolicy.from_settings maps the rate_limit section; a disabled section limits
    nothing (bar a separately configured tokens-per-minute)."""
    settings = RateLimitSettings(
        enabled=True, max_requests=5, window_seconds=2, max_concurrent_requests=3, queue_limit=7
    )
    policy = RateLimitPolicy.from_settings(settings, queue_timeout_seconds=4, tokens_per_minute=9)
    assert (policy.max_requests, policy.window_seconds, policy.max_concurrent) == (5, 2, 3)
    assert (policy.queue_limit, policy.queue_timeout_seconds, policy.tokens_per_minute) == (7, 4, 9)
    disabled = RateLimitPolicy.from_settings(RateLimitSettings(), tokens_per_minute=9)
    assert (disabled.max_requests, disabled.max_concurrent, disabled.tokens_per_minute) == (0, 0, 9)
