"""Cross-process proofs: two separate Python processes share one budget or rate limit
through SQLite or Redis, and together they never exceed it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from llmbackend.settings import LlmBackendConfig
from llmbackend.state import BudgetLedger, open_store

WORKER = Path(__file__).with_name("_worker.py")
CALLERS_PER_PROCESS = 128  # 256 callers in all


async def race_in_two_processes(spec: dict[str, Any]) -> list[int]:
    """Start two workers, release them at the same moment, collect what each was granted."""
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            json.dumps(spec),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        async with asyncio.timeout(60):
            for process in processes:
                assert process.stdout is not None
                line = await process.stdout.readline()
                if line != b"ready\n":  # it died: show why
                    assert process.stderr is not None
                    raise AssertionError((await process.stderr.read()).decode() or line)
            for process in processes:
                assert process.stdin is not None
                process.stdin.write(b"go\n")
                await process.stdin.drain()
            granted = []
            for process in processes:
                assert process.stdout is not None
                granted.append(json.loads(await process.stdout.readline())["granted"])
            for process in processes:  # EOF: release what you hold and exit
                assert process.stdin is not None
                process.stdin.close()
            for process in processes:
                _, errors = await process.communicate()
                assert process.returncode == 0, errors.decode()
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    return granted


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
async def test_two_processes_never_spend_past_a_shared_budget(
    store_kind: str, store_location: str | None, key_prefix: str
) -> None:
    """256 callers in two processes race for a budget that fits exactly 150 calls: together
    they are granted exactly 150 and the recorded spend is exactly the limit."""
    cost, fits = 0.013, 150
    spec = {
        "kind": store_kind,
        "location": store_location,
        "prefix": key_prefix,
        "mode": "budget",
        "callers": CALLERS_PER_PROCESS,
        "limit": fits,
        "cost": cost,
    }
    granted = await race_in_two_processes(spec)
    assert sum(granted) == fits
    async with open_store(store_kind, store_location, key_prefix) as store:
        ledger = BudgetLedger(store, LlmBackendConfig(name="shared", max_spend_usd=cost * fits))
        snapshot = await ledger.snapshot()
    assert snapshot.spent_usd == pytest.approx(cost * fits, abs=1e-9)
    assert snapshot.reserved_usd == 0.0


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
@pytest.mark.parametrize(("mode", "limit"), [("window", 120), ("slots", 7)])
async def test_two_processes_share_one_rate_limit(
    store_kind: str, store_location: str | None, key_prefix: str, mode: str, limit: int
) -> None:
    """256 callers in two processes against one limit (120 requests per window, or 7
    concurrent slots held until both processes are counted): exactly the limit is admitted
    across both processes, never more."""
    spec = {
        "kind": store_kind,
        "location": store_location,
        "prefix": key_prefix,
        "mode": mode,
        "callers": CALLERS_PER_PROCESS,
        "limit": limit,
    }
    granted = await race_in_two_processes(spec)
    assert sum(granted) == limit
