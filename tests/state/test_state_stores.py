"""The store factory and the stores' lifecycle: opening, closing, borrowing, failures, keys."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from llmbackend.errors import ConfigurationError, StateStoreError
from llmbackend.settings import CacheProvider, LlmBackendConfig
from llmbackend.state import (
    BudgetLedger,
    RateLimiter,
    RateLimitPolicy,
    StateStore,
    open_store,
)
from llmbackend.state._redis import RedisStore
from llmbackend.state._sqlite import SqliteStore
from llmbackend.testing._redis_server import RedisServer


async def test_open_store_gives_a_store_of_each_kind(store: StateStore, store_kind: str) -> None:
    """open_store builds the store named by kind; each satisfies the StateStore protocol."""
    assert isinstance(store, StateStore)
    assert store.kind == store_kind
    assert store.key_prefix.startswith("t")


async def test_close_is_idempotent(reopen: Callable[[], Any]) -> None:
    """aclose() may be called any number of times; the awaitable form of open_store works."""
    store = await reopen()
    await store.aclose()
    await store.aclose()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_a_closed_store_refuses_work_with_a_store_error(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """After aclose() a persistent store raises StateStoreError, never a driver exception."""
    location = str(tmp_path / "s.db")
    if kind == "redis":
        location = request.getfixturevalue("redis_server").url
    async with open_store(kind, location) as store:
        pass
    with pytest.raises(StateStoreError):
        await store.ledger_totals("b", "all", now=0.0)


def test_unknown_kind_is_a_configuration_error() -> None:
    """A store kind that does not exist is named, with the kinds that do."""
    with pytest.raises(ConfigurationError, match=r"unknown store 'mongo'.*memory, sqlite, redis"):
        open_store("mongo")


def test_kinds_are_case_insensitive_and_accept_the_enum() -> None:
    """'SQLite' and CacheProvider.SQLITE both select the SQLite store."""
    open_store("SQLite", "x.db")
    open_store(CacheProvider.SQLITE, "x.db")


@pytest.mark.parametrize(("kind", "module"), [("sqlite", "aiosqlite"), ("redis", "redis")])
async def test_a_missing_driver_names_the_extra_to_install(
    kind: str, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the optional driver, opening its store says which extra installs it."""
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigurationError, match=rf"pip install 'llmbackend\[{kind}\]'"):
        await open_store(kind, "redis://127.0.0.1:1/0" if kind == "redis" else "x.db")


async def test_redis_needs_a_connection_string() -> None:
    """A redis store without a URL is a configuration error with an example URL."""
    with pytest.raises(ConfigurationError, match="redis://"):
        await open_store("redis")


async def test_sqlite_needs_a_path() -> None:
    """A SQLite store without a path says so."""
    with pytest.raises(StateStoreError, match="connection string"):
        await open_store("sqlite")


async def test_sqlite_accepts_a_url_form(tmp_path: Path) -> None:
    """sqlite:///path and a plain path open the same database."""
    path = tmp_path / "url.db"
    async with open_store("sqlite", f"sqlite:///{path}") as store:
        await store.ledger_settle("b", "all", "h", 5, keep_for=None)
    async with open_store("sqlite", str(path)) as store:
        assert (await store.ledger_totals("b", "all", now=0.0)).spent == 5


async def test_unreachable_redis_is_a_store_error() -> None:
    """Opening a Redis store that does not answer fails at once with StateStoreError."""
    with pytest.raises(StateStoreError, match="connect"):
        await open_store("redis", "redis://127.0.0.1:1/0")


async def test_a_borrowed_sqlite_connection_is_left_open(tmp_path: Path) -> None:
    """SqliteStore over a caller's connection does not close it: it borrows, it does not own."""
    async with aiosqlite.connect(tmp_path / "own.db", isolation_level=None) as connection:
        from llmbackend.state._sqlite import _SCHEMA

        await connection.executescript(_SCHEMA)
        store = SqliteStore(connection, key_prefix="p:")
        await store.ledger_settle("b", "all", "h", 7, keep_for=None)
        await store.aclose()
        rows = list(await connection.execute_fetchall("SELECT spent FROM budget_spend"))
        assert rows[0][0] == 7


async def test_a_borrowed_redis_client_is_left_open(redis_server: RedisServer) -> None:
    """RedisStore over a caller's client does not close it."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        store = RedisStore(client, key_prefix="borrowed:")
        await store.ledger_settle("b", "all", "h", 7, keep_for=None)
        await store.aclose()
        assert await client.ping()
    finally:
        await client.aclose()


async def test_redis_keys_of_one_logical_set_share_a_cluster_slot(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """Each script's keys carry one hash tag, so Redis Cluster keeps them in one slot."""
    async with open_store("redis", redis_server.url, key_prefix) as store:
        ledger = BudgetLedger(store, LlmBackendConfig(name="gpt{x}", max_spend_usd=1.0))
        await ledger.reserve(0.1)
        policy = RateLimitPolicy(max_requests=5, max_concurrent=2, tokens_per_minute=1000)
        limiter = RateLimiter(store, policy, name="gpt{x}")
        await limiter.acquire(tokens=10)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = [key async for key in client.scan_iter(match=f"*{key_prefix}*")]
    finally:
        await client.aclose()
    budget = [k for k in keys if b"budget" in k]
    limits = [k for k in keys if b"limit" in k]
    assert len(budget) == 2  # holds and leases (nothing spent yet)
    assert len(limits) == 3  # window, slots, tokens
    for group in (budget, limits):
        assert len({key_slot(key) for key in group}) == 1, group
