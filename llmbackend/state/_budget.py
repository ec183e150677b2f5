"""``BudgetLedger``: a backend's spend limit, enforced atomically across callers and processes.

Before a call, :meth:`BudgetLedger.reserve` holds the worst-case cost; the store grants it
only if ``spent + reserved + worst_case <= max_spend_usd``, in one atomic step, so no number
of concurrent callers (or processes sharing the store) can push spend past the limit. After
the call, :meth:`~BudgetLedger.settle` replaces the hold with the actual cost, or
:meth:`~BudgetLedger.release` drops it when the call failed. A hold is a lease: if its
process dies before settling, the hold lapses after ``lease_seconds`` instead of blocking the
budget forever.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from attrs import define, field, frozen

from llmbackend._logging import LoggerFactory
from llmbackend.errors import BudgetExceededError
from llmbackend.settings import LlmBackendConfig
from llmbackend.state._periods import BudgetPeriod, budget_period
from llmbackend.state._protocols import LedgerStore, from_nano, to_nano

__all__ = ["BudgetLedger", "BudgetSnapshot", "Reservation", "utc_now"]

#: How long a finished period's totals are kept (Redis expires them after this).
RETENTION = timedelta(days=40)


def utc_now() -> datetime:
    return datetime.now(UTC)


def usd(amount: float) -> str:
    """``amount`` in dollars: cents for ordinary sums, more digits for sub-cent limits (a
    $0.0004 limit must not read as "$0.00")."""
    if amount == 0 or abs(amount) >= 0.01:
        return f"${amount:.2f}"
    return f"${amount:.6f}".rstrip("0")


@define
class Reservation:
    """A hold on part of a budget, from :meth:`BudgetLedger.reserve` until settled or released.

    Settling or releasing it a second time does nothing, so ``release()`` in a ``finally``
    after ``settle()`` is safe.
    """

    id: str
    backend: str
    period: str
    amount_usd: float
    expires_at: datetime
    keep_for: float | None = field(repr=False)
    _open: bool = field(default=True, init=False)

    @property
    def open(self) -> bool:
        """Neither settled nor released yet."""
        return self._open

    def _close(self) -> bool:
        was_open, self._open = self._open, False
        return was_open


@frozen(kw_only=True)
class BudgetSnapshot:
    """A backend's budget as statistics report it."""

    backend: str
    spent_usd: float
    reserved_usd: float
    #: ``None``: no limit configured (spend is still tracked).
    limit_usd: float | None
    period_start: datetime | None
    period_end: datetime | None

    @property
    def remaining_usd(self) -> float | None:
        if self.limit_usd is None:
            return None
        return max(self.limit_usd - self.spent_usd - self.reserved_usd, 0.0)


class BudgetLedger:
    """The spend of one backend (``config.name``) in its current period.

    ``clock`` returns an aware UTC ``datetime`` and is injectable for tests.
    """

    def __init__(
        self,
        store: LedgerStore,
        config: LlmBackendConfig,
        *,
        clock: Callable[[], datetime] = utc_now,
        lease_seconds: float = 900.0,
        logger_factory: LoggerFactory | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._lease = timedelta(seconds=lease_seconds)
        self._limit = None if config.max_spend_usd is None else to_nano(config.max_spend_usd)
        self._log = (logger_factory or LoggerFactory())("llmbackend.budget")
        self._logged_period: str | None = None
        #: The latest totals this process saw: (period key, spent, reserved) in nano-dollars.
        self._seen: tuple[str, int, int] | None = None

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def limit(self) -> float | None:
        """``max_spend_usd`` of the backend (``None``: no limit)."""
        return self._config.max_spend_usd

    def period(self) -> BudgetPeriod:
        """The current period."""
        return budget_period(self._config, self._clock())

    @property
    def period_end(self) -> datetime | None:
        """When the current period ends and spend resets (``None``: never)."""
        return self.period().end

    async def reserve(self, worst_case_usd: float) -> Reservation:
        """Hold ``worst_case_usd`` of the budget; ``BudgetExceededError`` if it does not fit."""
        if worst_case_usd < 0:
            raise ValueError("a reservation cannot be negative")
        now = self._clock()
        period = budget_period(self._config, now)
        keep_for = None if period.end is None else (period.end - now + RETENTION).total_seconds()
        reservation = Reservation(
            id=uuid.uuid4().hex,
            backend=self.name,
            period=period.key,
            amount_usd=worst_case_usd,
            expires_at=now + self._lease,
            keep_for=keep_for,
        )
        if self._limit is None:
            return reservation  # nothing to hold; settle() still records the spend
        try:
            outcome = await self._store.ledger_reserve(
                self.name,
                period.key,
                reservation.id,
                to_nano(worst_case_usd),
                self._limit,
                now=now.timestamp(),
                lease_until=reservation.expires_at.timestamp(),
                keep_for=keep_for,
            )
        except BaseException:
            # Cancelled or failed mid-way: the hold may exist without us knowing; drop it
            # now rather than leave it to its lease.
            with contextlib.suppress(Exception):
                await self._store.ledger_release(self.name, period.key, reservation.id)
            raise
        self._seen = (period.key, outcome.spent, outcome.reserved)
        if outcome.granted:
            return reservation
        reservation._close()
        self._refused(period, outcome.spent, outcome.reserved, worst_case_usd)
        raise BudgetExceededError(
            f"spend limit {usd(self.limit or 0.0)} reached"
            + (f" until {period.end:%Y-%m-%d %H:%M} UTC" if period.end else "")
            + f": spent ${from_nano(outcome.spent):.4f}, reserved "
            f"${from_nano(outcome.reserved):.4f}, this call up to ${worst_case_usd:.4f}",
            backend=self.name,
            code="budget_exceeded",
        )

    async def settle(self, reservation: Reservation, actual_usd: float | None) -> None:
        """Replace the hold with the actual cost (``None``, unknown: the reserved amount)."""
        if not reservation._close():
            return
        amount = to_nano(reservation.amount_usd if actual_usd is None else max(actual_usd, 0.0))
        await self._store.ledger_settle(
            self.name, reservation.period, reservation.id, amount, keep_for=reservation.keep_for
        )
        self._saw_change(reservation, spent=amount)

    async def release(self, reservation: Reservation) -> None:
        """Drop the hold without spending (the call failed before costing anything)."""
        if not reservation._close() or self._limit is None:
            return
        await self._store.ledger_release(self.name, reservation.period, reservation.id)
        self._saw_change(reservation, spent=0)

    async def spent(self) -> float:
        """USD settled in the current period."""
        return (await self.snapshot()).spent_usd

    async def snapshot(self) -> BudgetSnapshot:
        """Spend, live reservations, limit and period bounds, for statistics."""
        now = self._clock()
        period = budget_period(self._config, now)
        totals = await self._store.ledger_totals(self.name, period.key, now=now.timestamp())
        self._seen = (period.key, totals.spent, totals.reserved)
        return self._snapshot(period, totals.spent, totals.reserved)

    def last_known(self) -> BudgetSnapshot:
        """The totals as this process last saw them (no store call: for sync statistics).

        Exact for a store only this ledger writes to; with other writers it lags until the
        next reservation or :meth:`snapshot`. A new period starts at zero.
        """
        period = self.period()
        seen = self._seen
        if seen is None or seen[0] != period.key:
            return self._snapshot(period, 0, 0)
        return self._snapshot(period, seen[1], seen[2])

    def _snapshot(self, period: BudgetPeriod, spent: int, reserved: int) -> BudgetSnapshot:
        return BudgetSnapshot(
            backend=self.name,
            spent_usd=from_nano(spent),
            reserved_usd=from_nano(reserved),
            limit_usd=self.limit,
            period_start=period.start,
            period_end=period.end,
        )

    def _saw_change(self, reservation: Reservation, *, spent: int) -> None:
        seen = self._seen
        if seen is None or seen[0] != reservation.period:
            return
        held = to_nano(reservation.amount_usd) if self._limit is not None else 0
        self._seen = (seen[0], seen[1] + spent, max(seen[2] - held, 0))

    def _refused(self, period: BudgetPeriod, spent: int, reserved: int, wanted: float) -> None:
        if not self._config.log_budget_exceeded or self._logged_period == period.key:
            return
        self._logged_period = period.key
        self._log.warning(
            "budget_exceeded",
            backend=self.name,
            limit_usd=self.limit,
            spent_usd=from_nano(spent),
            reserved_usd=from_nano(reserved),
            requested_usd=wanted,
            period_end=period.end.isoformat() if period.end else None,
        )
