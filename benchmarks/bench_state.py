"""The added cost per request of the shared-state features, on each store.

Plain timing loops (not a test): for the memory store, a SQLite file in a temporary
directory and a throw-away local redis-server (skipped when none is installed), measure

* cache hit: ``key_for(request)`` + ``get(key)`` of a stored answer, the whole hit path;
* budget: ``reserve(worst_case)`` + ``settle(reservation, actual)``, what every paid call adds;
* rate limit: ``acquire()`` + ``release()`` under a window and a concurrency limit.

Run: ``.venv/bin/python benchmarks/bench_state.py [--iterations N]``; ``make bench`` runs it
as part of the llmbackend-only section (``sdk_only.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from llmbackend.models import ChatMessage, ChatRequest, FinishReason, LlmResponse
from llmbackend.settings import CachingSettings, LlmBackendConfig
from llmbackend.state import (
    BudgetLedger,
    RateLimiter,
    RateLimitPolicy,
    ResponseCache,
    StateStore,
    open_store,
)
from llmbackend.testing._redis_server import RedisServer, redis_server_available

REQUEST = ChatRequest(
    messages=[ChatMessage.system("You are terse."), ChatMessage.user("Name three colours. " * 20)],
    model="gpt-4o-mini",
    temperature=0.2,
    max_tokens=256,
)
ANSWER = LlmResponse(
    content="Red, green and blue. " * 20,
    backend="openai",
    model="gpt-4o-mini",
    prompt_tokens=120,
    completion_tokens=100,
    total_tokens=220,
    finish_reason=FinishReason.STOP,
    raw_finish_reason="stop",
    cost_usd=0.0002,
)


async def per_op_us(operation: Callable[[], Awaitable[object]], iterations: int) -> float:
    """Mean microseconds of one ``operation`` after a warm-up."""
    for _ in range(min(iterations // 10, 200)):
        await operation()
    started = time.perf_counter()
    for _ in range(iterations):
        await operation()
    return (time.perf_counter() - started) / iterations * 1e6


async def measure(store: StateStore, iterations: int) -> tuple[float, float, float]:
    cache = ResponseCache(store, CachingSettings(enabled=True))
    await cache.put(cache.key_for(REQUEST), ANSWER)

    async def hit() -> object:
        response = await cache.get(cache.key_for(REQUEST))
        assert response is not None
        return response

    ledger = BudgetLedger(store, LlmBackendConfig(name="openai", max_spend_usd=1e9))

    async def budget() -> None:
        reservation = await ledger.reserve(0.001)
        await ledger.settle(reservation, 0.0004)

    policy = RateLimitPolicy(max_requests=10**9, window_seconds=1.0, max_concurrent=64)
    limiter = RateLimiter(store, policy, name="openai")

    async def limit() -> None:
        permit = await limiter.acquire()
        await permit.release()

    return (
        await per_op_us(hit, iterations),
        await per_op_us(budget, iterations),
        await per_op_us(limit, iterations),
    )


async def collect(iterations: int) -> list[tuple[str, float, float, float]]:
    """(store, cache hit, budget reserve+settle, rate limit) in µs per operation, for the
    memory store, a SQLite file and, when ``redis-server`` is installed, a local Redis."""
    rows: list[tuple[str, float, float, float]] = []
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        locations: list[tuple[str, str | None, int]] = [
            ("memory", None, iterations * 10),
            ("sqlite", str(Path(scratch) / "bench.db"), iterations),
        ]
        if redis_server_available():
            server = stack.enter_context(RedisServer(Path(scratch) / "redis"))
            locations.append(("redis", server.url, iterations))
        for kind, location, count in locations:
            async with open_store(kind, location, "bench:") as store:
                rows.append((kind, *await measure(store, count)))
    return rows


async def main(iterations: int) -> None:
    rows = await collect(iterations)
    print(f"{'store':<8} {'cache hit':>12} {'budget r+s':>12} {'rate limit':>12}   (µs per op)")
    for kind, hit, budget, limit in rows:
        print(f"{kind:<8} {hit:>12.1f} {budget:>12.1f} {limit:>12.1f}")
    if not redis_server_available():
        print("redis: skipped (no redis-server on PATH)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    asyncio.run(main(parser.parse_args().iterations))
