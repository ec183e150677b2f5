"""``open_store``: one entry point to the memory, SQLite and Redis stores.

The optional drivers are imported only when their store is opened, so ``import llmbackend``
stays cheap and a missing driver is reported with the extra that installs it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from llmbackend.errors import ConfigurationError
from llmbackend.settings import CacheProvider
from llmbackend.state._protocols import StateStore

__all__ = ["open_store"]


def _missing(kind: str, package: str) -> ConfigurationError:
    return ConfigurationError(
        f"the {kind} store needs the {package!r} package, which is not installed; "
        f"install it with: pip install 'llmbackend[{kind}]'"
    )


async def _open(kind: CacheProvider, connection_string: str | None, key_prefix: str) -> StateStore:
    if kind is CacheProvider.MEMORY:
        from llmbackend.state._memory import MemoryStore

        return MemoryStore(key_prefix)
    if kind is CacheProvider.SQLITE:
        try:
            import aiosqlite  # noqa: F401  # only to report a missing extra clearly
        except ImportError as exc:
            raise _missing("sqlite", "aiosqlite") from exc
        from llmbackend.state._sqlite import SqliteStore, sqlite_path

        return await SqliteStore.connect(sqlite_path(connection_string), key_prefix=key_prefix)
    try:
        import redis  # noqa: F401
    except ImportError as exc:
        raise _missing("redis", "redis") from exc
    from llmbackend.state._redis import RedisStore

    if not connection_string:
        raise ConfigurationError(
            "the redis store needs a connection_string, e.g. redis://localhost:6379/0"
        )
    return await RedisStore.connect(connection_string, key_prefix=key_prefix)


class _Opening:
    """Awaitable (``store = await open_store(...)``) and an async context manager
    (``async with open_store(...) as store``) that closes the store on exit."""

    def __init__(self, kind: CacheProvider, connection_string: str | None, key_prefix: str):
        self._args = (kind, connection_string, key_prefix)
        self._store: StateStore | None = None

    def __await__(self) -> Generator[Any, None, StateStore]:
        return _open(*self._args).__await__()

    async def __aenter__(self) -> StateStore:
        self._store = await _open(*self._args)
        return self._store

    async def __aexit__(self, *exc_info: object) -> None:
        if self._store is not None:
            await self._store.aclose()


def open_store(
    kind: CacheProvider | str = CacheProvider.MEMORY,
    connection_string: str | None = None,
    key_prefix: str = "llm:",
) -> _Opening:
    """Open a state store: ``memory`` (this process), ``sqlite`` (a file; ``connection_string``
    is its path or ``sqlite:///path``) or ``redis`` (``connection_string`` is a redis URL).

    The store owns the connection it opens and closes it in ``aclose()`` (idempotent). To
    share a connection you manage, build ``SqliteStore`` / ``RedisStore`` directly: they
    then borrow it and leave it open.
    """
    try:
        provider = CacheProvider(str(kind).lower())
    except ValueError:
        known = ", ".join(p.value for p in CacheProvider)
        raise ConfigurationError(f"unknown store {kind!r}; known: {known}") from None
    return _Opening(provider, connection_string, key_prefix)
