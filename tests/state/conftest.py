"""Fixtures of the shared-state suite: one real store of each kind, and a real redis-server.

Every behaviour test takes ``store`` and so runs three times: against the in-memory store,
a SQLite file in the test's tmp_path and the session's redis-server. Each test gets its own
key prefix, so tests never see each other's keys in the shared Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from llmbackend.state import StateStore, open_store
from llmbackend.testing._redis_server import RedisServer, redis_server_available

STORE_KINDS = ("memory", "sqlite", "redis")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1 (free port, no persistence), for the whole session."""
    if not redis_server_available():
        # Never skip: the Redis proofs are part of the suite (.ci/run installs the server).
        pytest.fail("redis-server is not installed: apt-get install -y redis-server")
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of this test alone."""
    return f"t{uuid.uuid4().hex[:10]}:"


def _location(kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> str | None:
    if kind == "sqlite":
        return str(tmp_path / "state.db")
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    return None


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def store_location(store_kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> str | None:
    """Where the store lives: nothing (memory), a SQLite file or the redis URL."""
    return _location(store_kind, request, tmp_path)


@pytest.fixture
def reopen(store_kind: str, store_location: str | None, key_prefix: str) -> Callable[[], Any]:
    """Opens another store on the same location and prefix (a restart, or a second replica)."""
    return lambda: open_store(store_kind, store_location, key_prefix)


@pytest.fixture
async def store(
    store_kind: str, store_location: str | None, key_prefix: str
) -> AsyncIterator[StateStore]:
    """A store of each kind, closed after the test."""
    async with open_store(store_kind, store_location, key_prefix) as opened:
        yield opened
