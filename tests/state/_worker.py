"""One of the separate processes of the cross-process proofs (not a test module).

Run as ``python _worker.py '<json spec>'``. It opens the shared store, prints ``ready``, waits
for ``go`` on stdin (so both processes race at the same moment), lets ``callers`` concurrent
callers compete for the shared budget or rate limit, prints ``{"granted": n}``, then holds
what it won until stdin closes, releases it and exits.

Spec keys: ``kind``, ``location``, ``prefix``, ``mode`` (``budget``, ``window`` or
``slots``), ``callers``, ``limit`` (requests or slots; for ``budget`` the number of calls
the budget fits) and ``cost`` (``budget`` only).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from llmbackend.errors import BudgetExceededError, RateLimitedError
from llmbackend.settings import LlmBackendConfig
from llmbackend.state import BudgetLedger, Permit, RateLimiter, RateLimitPolicy, open_store


async def race(store: Any, spec: dict[str, Any]) -> tuple[int, list[Permit]]:
    mode, limit = spec["mode"], spec["limit"]
    held: list[Permit] = []
    if mode == "budget":
        cost = spec["cost"]
        ledger = BudgetLedger(store, LlmBackendConfig(name="shared", max_spend_usd=cost * limit))

        async def call() -> bool:
            try:
                reservation = await ledger.reserve(cost)
            except BudgetExceededError:
                return False
            await asyncio.sleep(0)
            await ledger.settle(reservation, cost)
            return True

    else:
        policy = (
            RateLimitPolicy(max_requests=limit, window_seconds=3600, queue_limit=0)
            if mode == "window"
            else RateLimitPolicy(max_concurrent=limit, queue_limit=0)
        )
        limiter = RateLimiter(store, policy, name="shared")

        async def call() -> bool:
            try:
                held.append(await limiter.acquire())
            except RateLimitedError:
                return False
            return True

    outcomes = await asyncio.gather(*(call() for _ in range(spec["callers"])))
    return sum(outcomes), held


async def main(spec: dict[str, Any]) -> None:
    async with open_store(spec["kind"], spec["location"], spec["prefix"]) as store:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("expected go")
        granted, held = await race(store, spec)
        print(json.dumps({"granted": granted}), flush=True)
        sys.stdin.read()  # hold slots until the test has counted both processes
        for permit in held:
            await permit.release()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
