"""The SQLite store (``aiosqlite``): embedded, persistent, shared by the processes of one machine.

The database runs in WAL mode, so readers never block the writer. Every operation is **one
SQL statement**, and so one transaction: a writing statement takes the database's write lock
before it reads anything (exactly what ``BEGIN IMMEDIATE`` does; ``busy_timeout`` makes a
second process wait for it rather than fail), so its check and its write cannot be split by
another connection or process. Where an operation touches two tables, a trigger does the
second part inside the same statement. A reservation, for example, is one ``INSERT ...
SELECT ... WHERE spent + reserved + amount <= limit``; settling inserts into
``budget_settlements``, whose trigger drops the hold and adds the spend.

One statement per operation also means one hop to aiosqlite's worker thread per operation
(a hop costs tens to hundreds of microseconds), and no client-side lock.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import aiosqlite

from llmbackend.errors import StateStoreError
from llmbackend.state._protocols import (
    GRANTED,
    HoldOutcome,
    LedgerTotals,
    LimitDecision,
    LimitSpec,
)

__all__ = ["SqliteStore", "sqlite_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL NOT NULL, size INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cache_entries_expiry ON cache_entries (expires_at);

CREATE TABLE IF NOT EXISTS budget_spend (
    scope TEXT NOT NULL, period TEXT NOT NULL, spent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS budget_holds (
    id TEXT PRIMARY KEY, scope TEXT NOT NULL, period TEXT NOT NULL,
    amount INTEGER NOT NULL, lease_until REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS budget_holds_period ON budget_holds (scope, period, lease_until);
CREATE TABLE IF NOT EXISTS budget_settlements (
    id TEXT NOT NULL, scope TEXT NOT NULL, period TEXT NOT NULL, actual INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS budget_settle AFTER INSERT ON budget_settlements BEGIN
    DELETE FROM budget_holds WHERE id = NEW.id;
    INSERT INTO budget_spend (scope, period, spent) VALUES (NEW.scope, NEW.period, NEW.actual)
        ON CONFLICT (scope, period) DO UPDATE SET spent = spent + excluded.spent;
    DELETE FROM budget_settlements WHERE rowid = NEW.rowid;
END;

CREATE TABLE IF NOT EXISTS limiter_tickets (
    scope TEXT NOT NULL, ticket TEXT NOT NULL, at REAL NOT NULL, lease_until REAL,
    tokens INTEGER NOT NULL, tpm INTEGER NOT NULL, released_at REAL,
    refund INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, ticket)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS limiter_tickets_at ON limiter_tickets (scope, at);
CREATE INDEX IF NOT EXISTS limiter_tickets_lease ON limiter_tickets (scope, lease_until);
CREATE TABLE IF NOT EXISTS limiter_tokens (
    scope TEXT PRIMARY KEY, level REAL NOT NULL, updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS limiter_take_tokens AFTER INSERT ON limiter_tickets
WHEN NEW.tpm > 0 BEGIN
    INSERT INTO limiter_tokens (scope, level, updated_at)
        VALUES (NEW.scope, NEW.tpm - MIN(NEW.tokens, NEW.tpm), NEW.at)
        ON CONFLICT (scope) DO UPDATE SET
            level = MIN(NEW.tpm, level + MAX(NEW.at - updated_at, 0) * NEW.tpm / 60.0)
                - MIN(NEW.tokens, NEW.tpm),
            updated_at = NEW.at;
END;
CREATE TRIGGER IF NOT EXISTS limiter_refund_tokens AFTER UPDATE OF released_at ON limiter_tickets
WHEN NEW.tpm > 0 AND NEW.refund <> 0 BEGIN
    UPDATE limiter_tokens SET
        level = MIN(NEW.tpm,
            MIN(NEW.tpm, level + MAX(NEW.released_at - updated_at, 0) * NEW.tpm / 60.0)
            + NEW.refund),
        updated_at = NEW.released_at
    WHERE scope = NEW.scope;
END;
"""

#: Keep the newest entries whose sizes add up to the bound; delete the rest.
_PRUNE = """
DELETE FROM cache_entries WHERE key IN (
    SELECT key FROM (
        SELECT key, SUM(size) OVER (ORDER BY expires_at DESC, key) AS running
        FROM cache_entries WHERE key >= :low AND key < :high
    ) WHERE running > :max_bytes
)
"""

_SPENT = "COALESCE((SELECT spent FROM budget_spend WHERE scope = :scope AND period = :period), 0)"
_HELD = """(SELECT COALESCE(SUM(amount), 0) FROM budget_holds
    WHERE scope = :scope AND period = :period AND lease_until >= :now)"""
_RESERVE = f"""
INSERT INTO budget_holds (id, scope, period, amount, lease_until)
SELECT :id, :scope, :period, :amount, :lease_until
WHERE :limit IS NULL OR {_SPENT} + {_HELD} + :amount <= :limit
RETURNING {_SPENT}, {_HELD}
"""

_IN_WINDOW = "FROM limiter_tickets WHERE scope = :scope AND at > :now - :window"
_HOLDING = "FROM limiter_tickets WHERE scope = :scope AND lease_until >= :now"
_LEVEL = """COALESCE((SELECT MIN(:tpm, level + MAX(:now - updated_at, 0) * :tpm / 60.0)
    FROM limiter_tokens WHERE scope = :scope), :tpm)"""
_ACQUIRE = f"""
INSERT INTO limiter_tickets (scope, ticket, at, lease_until, tokens, tpm)
SELECT :scope, :ticket, :now, :lease_until, :tokens, :tpm
WHERE (:max_requests = 0 OR (SELECT COUNT(*) {_IN_WINDOW}) < :max_requests)
  AND (:max_concurrent = 0 OR (SELECT COUNT(*) {_HOLDING}) < :max_concurrent)
  AND (:tpm = 0 OR {_LEVEL} >= MIN(:tokens, :tpm))
RETURNING ticket
"""
#: Why an acquire was refused (read after the refusal: a hint, the refusal itself was atomic).
_DIAGNOSE = f"""
SELECT (SELECT COUNT(*) {_IN_WINDOW}),
       (SELECT at {_IN_WINDOW} ORDER BY at DESC LIMIT 1 OFFSET :max_requests - 1),
       (SELECT COUNT(*) {_HOLDING}), (SELECT MIN(lease_until) {_HOLDING}), {_LEVEL}
"""


def sqlite_path(connection_string: str | None) -> str:
    """The database path in ``connection_string`` (``sqlite:///path``, ``file:`` or a path)."""
    if not connection_string:
        raise StateStoreError("the sqlite store needs a connection string naming the database")
    for scheme in ("sqlite:///", "sqlite://"):
        if connection_string.startswith(scheme):
            return connection_string[len(scheme) :]
    return connection_string


@contextlib.contextmanager
def _mapped(operation: str) -> Iterator[None]:
    try:
        yield
    except (sqlite3.Error, ValueError) as exc:  # aiosqlite raises ValueError once closed
        raise StateStoreError(f"sqlite store failed during {operation}: {exc}") from exc


class SqliteStore:
    """Cache, ledger and limiter tables in one SQLite database.

    Housekeeping (expired cache entries, lapsed holds, old tickets) runs every
    ``prune_every`` writes of each kind; reads already ignore what has expired.
    """

    kind = "sqlite"

    def __init__(
        self,
        connection: aiosqlite.Connection,
        *,
        key_prefix: str = "llm:",
        owns_connection: bool = False,
        prune_every: int = 64,
    ) -> None:
        self._db = connection
        self._prefix = key_prefix
        self._owns = owns_connection
        self._prune_every = max(prune_every, 1)
        self._writes = {"cache": 0, "ledger": 0, "limiter": 0}
        self._closed = False

    @classmethod
    async def connect(
        cls, path: str, *, key_prefix: str = "llm:", busy_timeout_ms: int = 10_000
    ) -> SqliteStore:
        """Open (creating if needed) the database at ``path``; the store owns the connection."""
        with _mapped("open"):
            connection = await aiosqlite.connect(path, isolation_level=None)
            try:
                await connection.execute_fetchall(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
                await connection.execute_fetchall("PRAGMA journal_mode = WAL")
                await connection.execute_fetchall("PRAGMA synchronous = NORMAL")
                await connection.executescript(_SCHEMA)
            except BaseException:
                await connection.close()
                raise
        return cls(connection, key_prefix=key_prefix, owns_connection=True)

    @property
    def key_prefix(self) -> str:
        return self._prefix

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns:
            await self._db.close()

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _rows(
        self, operation: str, sql: str, params: Mapping[str, Any] | Sequence[Any] = ()
    ) -> list[sqlite3.Row]:
        with _mapped(operation):
            return list(await self._db.execute_fetchall(sql, params))

    def _due(self, kind: str) -> bool:
        """Whether housekeeping of ``kind`` is due (on the first write, then every N)."""
        count = self._writes[kind]
        self._writes[kind] = count + 1
        return count % self._prune_every == 0

    def _key(self, key: str) -> str:
        return self._prefix + key

    # --- cache ---------------------------------------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        rows = await self._rows(
            "cache read", "SELECT value FROM cache_entries WHERE key = ?", (self._key(key),)
        )
        return bytes(rows[0][0]) if rows else None

    async def cache_put(
        self, key: str, value: bytes, *, now: float, ttl_seconds: float, max_bytes: int
    ) -> None:
        if len(value) > max_bytes:
            return
        await self._rows(
            "cache write",
            "INSERT OR REPLACE INTO cache_entries (key, value, expires_at, size) "
            "VALUES (?, ?, ?, ?)",
            (self._key(key), value, now + ttl_seconds, len(value)),
        )
        if self._due("cache"):
            await self.cache_prune(now=now, max_bytes=max_bytes)

    async def cache_prune(self, *, now: float, max_bytes: int) -> None:
        """Delete expired entries, then the soonest-expiring ones beyond ``max_bytes``."""
        bounds = {"low": self._prefix, "high": self._prefix + "\U0010ffff", "now": now}
        await self._rows(
            "cache prune",
            "DELETE FROM cache_entries WHERE expires_at <= :now AND key >= :low AND key < :high",
            bounds,
        )
        await self._rows("cache prune", _PRUNE, {**bounds, "max_bytes": max_bytes})

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
        del keep_for  # past periods stay as one row each: a spend history, not a leak
        params = {
            "id": hold_id,
            "scope": self._key(scope),
            "period": period,
            "amount": amount,
            "limit": limit,
            "now": now,
            "lease_until": lease_until,
        }
        if self._due("ledger"):
            await self._rows(
                "budget prune", "DELETE FROM budget_holds WHERE lease_until < ?", (now,)
            )
        rows = await self._rows("budget reserve", _RESERVE, params)
        if rows:
            return HoldOutcome(granted=True, spent=int(rows[0][0]), reserved=int(rows[0][1]))
        totals = await self.ledger_totals(scope, period, now=now)
        return HoldOutcome(granted=False, spent=totals.spent, reserved=totals.reserved)

    async def ledger_settle(
        self, scope: str, period: str, hold_id: str, actual: int, *, keep_for: float | None
    ) -> None:
        del keep_for
        await self._rows(
            "budget settle",
            "INSERT INTO budget_settlements (id, scope, period, actual) VALUES (?, ?, ?, ?)",
            (hold_id, self._key(scope), period, actual),
        )

    async def ledger_release(self, scope: str, period: str, hold_id: str) -> None:
        del scope, period  # hold ids are unique
        await self._rows("budget release", "DELETE FROM budget_holds WHERE id = ?", (hold_id,))

    async def ledger_totals(self, scope: str, period: str, *, now: float) -> LedgerTotals:
        params = {"scope": self._key(scope), "period": period, "now": now}
        rows = await self._rows("budget read", f"SELECT {_SPENT}, {_HELD}", params)
        return LedgerTotals(spent=int(rows[0][0]), reserved=int(rows[0][1]))

    # --- limiter -----------------------------------------------------------------------------

    def _limit_params(self, scope: str, spec: LimitSpec, now: float) -> dict[str, Any]:
        return {
            "scope": self._key(scope),
            "now": now,
            "window": spec.window_seconds,
            "max_requests": spec.max_requests,
            "max_concurrent": spec.max_concurrent,
            "tpm": spec.tokens_per_minute,
        }

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
        params = self._limit_params(scope, spec, now)
        if self._due("limiter"):
            # A ticket matters while it is in the window or holds a live slot.
            window = spec.window_seconds if spec.max_requests else 0.0
            await self._rows(
                "rate limit prune",
                "DELETE FROM limiter_tickets WHERE scope = :scope AND at <= :now - :window "
                "AND (lease_until IS NULL OR lease_until < :now)",
                {**params, "window": window},
            )
        params |= {
            "ticket": ticket,
            "lease_until": lease_until if spec.max_concurrent else None,
            "tokens": tokens,
        }
        if await self._rows("rate limit acquire", _ACQUIRE, params):
            return GRANTED
        rows = await self._rows("rate limit acquire", _DIAGNOSE, params)
        in_window, nth_at, holding, first_lease, level = rows[0]
        if spec.max_requests and in_window >= spec.max_requests:
            wait = float(nth_at) + spec.window_seconds - now
            return LimitDecision(granted=False, retry_after=wait, reason="window")
        if spec.max_concurrent and holding >= spec.max_concurrent:
            wait = float(first_lease) - now
            return LimitDecision(granted=False, retry_after=wait, reason="concurrency")
        need = min(tokens, spec.tokens_per_minute)
        if spec.tokens_per_minute and float(level) < need:
            wait = (need - float(level)) * 60.0 / spec.tokens_per_minute
            return LimitDecision(granted=False, retry_after=wait, reason="tokens")
        # Freed between the refusal and this read: worth another try at once.
        return LimitDecision(granted=False, retry_after=0.0, reason="contended")

    async def limiter_release(
        self, scope: str, ticket: str, spec: LimitSpec, *, now: float, token_refund: int
    ) -> None:
        del spec  # the ticket row remembers its tokens-per-minute for the refund trigger
        await self._rows(
            "rate limit release",
            "UPDATE limiter_tickets SET lease_until = NULL, released_at = ?, refund = ? "
            "WHERE scope = ? AND ticket = ?",
            (now, token_refund, self._key(scope), ticket),
        )
