"""Budgets over every store: atomic reservations, settling, leases, periods, restarts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
import structlog
from structlog.testing import LogCapture

from llmbackend._logging import LoggerFactory
from llmbackend.errors import BudgetExceededError
from llmbackend.models import ChatMessage, ChatRequest, ToolDefinition
from llmbackend.settings import LlmBackendConfig, SpendResetPeriod, Weekday
from llmbackend.state import (
    BudgetLedger,
    StateStore,
    budget_period,
    estimate_prompt_tokens,
    worst_case_cost,
)


class Clock:
    """A UTC wall clock that moves only when told to."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 3, 14, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@attrs.frozen
class CapturingLoggers(LoggerFactory):
    """Loggers that record their events here, leaving structlog's global config alone."""

    capture: LogCapture = attrs.field(factory=LogCapture)

    def __call__(self, name: str) -> Any:
        return structlog.wrap_logger(None, processors=[self.capture])


def config(limit: float | None = 1.0, **fields: Any) -> LlmBackendConfig:
    return LlmBackendConfig(
        name="paid",
        type="openai",
        max_spend_usd=limit,
        cost_per_million_input_tokens=1.0,
        cost_per_million_output_tokens=2.0,
        **fields,
    )


def ledger(store: StateStore, clock: Clock | None = None, **fields: Any) -> BudgetLedger:
    limit = fields.pop("limit", 1.0)
    lease = fields.pop("lease_seconds", 900.0)
    loggers = fields.pop("loggers", None)
    return BudgetLedger(
        store,
        config(limit, **fields),
        clock=clock or Clock(),
        lease_seconds=lease,
        logger_factory=loggers,
    )


async def test_a_reservation_that_fits_is_granted_and_one_that_does_not_is_refused(
    store: StateStore,
) -> None:
    """Reservations are granted up to the limit exactly; the next one raises
    BudgetExceededError naming the backend, which fails over and never trips the breaker."""
    book = ledger(store, limit=1.0)
    first = await book.reserve(0.6)
    second = await book.reserve(0.4)  # exactly at the limit
    with pytest.raises(BudgetExceededError, match="spend limit") as refused:
        await book.reserve(0.000001)
    assert refused.value.backend == "paid"
    assert not refused.value.retryable
    assert refused.value.allows_failover
    assert not refused.value.trips_breaker
    assert first.open
    assert second.open


async def test_settling_replaces_the_hold_with_the_actual_cost(store: StateStore) -> None:
    """After settle, the period's spend is the actual cost and the hold is gone."""
    book = ledger(store, limit=1.0)
    reservation = await book.reserve(0.9)
    await book.settle(reservation, 0.25)
    snapshot = await book.snapshot()
    assert (snapshot.spent_usd, snapshot.reserved_usd) == (0.25, 0.0)
    assert snapshot.remaining_usd == 0.75
    await book.reserve(0.75)  # the freed room is usable at once


async def test_last_known_totals_need_no_store_call(store: StateStore) -> None:
    """last_known() reports what this process last saw, kept current by its own reserve,
    settle and release, for synchronous statistics."""
    book = ledger(store, limit=1.0)
    assert book.last_known().spent_usd == 0.0
    first = await book.reserve(0.5)
    second = await book.reserve(0.2)
    assert book.last_known().reserved_usd == pytest.approx(0.7)
    await book.settle(first, 0.1)
    await book.release(second)
    known = book.last_known()
    assert (known.spent_usd, known.reserved_usd, known.limit_usd) == (0.1, 0.0, 1.0)
    assert known == await book.snapshot()


async def test_releasing_frees_the_hold_without_spending(store: StateStore) -> None:
    """A failed call releases its hold: nothing is spent and the room is back."""
    book = ledger(store, limit=1.0)
    reservation = await book.reserve(1.0)
    await book.release(reservation)
    assert await book.spent() == 0.0
    await book.reserve(1.0)


async def test_settle_and_release_happen_once(store: StateStore) -> None:
    """A second settle or a release after settle does nothing (release in finally is safe)."""
    book = ledger(store, limit=1.0)
    reservation = await book.reserve(0.5)
    await book.settle(reservation, 0.3)
    await book.settle(reservation, 0.3)
    await book.release(reservation)
    assert not reservation.open
    assert await book.spent() == 0.3


async def test_an_unknown_actual_cost_settles_at_the_reserved_amount(store: StateStore) -> None:
    """settle(None) (the provider reported no usage) counts the worst case, never zero."""
    book = ledger(store, limit=1.0)
    await book.settle(await book.reserve(0.4), None)
    assert await book.spent() == 0.4


async def test_a_reservation_that_is_never_settled_lapses_after_its_lease(
    store: StateStore,
) -> None:
    """A crashed caller's hold blocks the budget only until its lease ends."""
    clock = Clock()
    book = ledger(store, clock, limit=1.0, lease_seconds=60)
    await book.reserve(1.0)  # never settled: the process "died"
    with pytest.raises(BudgetExceededError):
        await book.reserve(0.5)
    clock.advance(seconds=61)
    assert (await book.snapshot()).reserved_usd == 0.0
    await book.reserve(0.5)


async def test_a_late_settle_still_counts_the_spend(store: StateStore) -> None:
    """Settling after the lease lapsed still records what the call cost."""
    clock = Clock()
    book = ledger(store, clock, limit=1.0, lease_seconds=60)
    reservation = await book.reserve(0.5)
    clock.advance(seconds=120)
    await book.settle(reservation, 0.2)
    assert await book.spent() == 0.2


async def test_256_concurrent_callers_never_spend_past_the_limit(store: StateStore) -> None:
    """256 callers race for a budget that fits exactly 37 calls: exactly 37 are granted and
    the settled spend equals the limit, never more."""
    cost, fits = 0.01, 37
    book = ledger(store, limit=cost * fits)

    async def call() -> bool:
        try:
            reservation = await book.reserve(cost)
        except BudgetExceededError:
            return False
        await asyncio.sleep(0)  # the "provider call": let every other caller interleave
        await book.settle(reservation, cost)
        return True

    outcomes = await asyncio.gather(*(call() for _ in range(256)))
    assert sum(outcomes) == fits
    snapshot = await book.snapshot()
    assert snapshot.spent_usd == pytest.approx(cost * fits)
    assert snapshot.spent_usd <= snapshot.limit_usd  # type: ignore[operator]
    assert snapshot.reserved_usd == 0.0


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
async def test_spend_survives_a_restart(reopen: Any) -> None:
    """Spend recorded, store closed, a new store opened on the same file or Redis: the spend
    and the exhausted budget are still there."""
    clock = Clock()
    async with reopen() as store:
        book = ledger(store, clock, limit=1.0)
        await book.settle(await book.reserve(0.7), 0.7)
    async with reopen() as store:
        book = ledger(store, clock, limit=1.0)
        assert await book.spent() == 0.7
        with pytest.raises(BudgetExceededError):
            await book.reserve(0.5)


@pytest.mark.parametrize(
    ("fields", "step"),
    [
        ({"spend_reset_period": "daily"}, {"days": 1}),
        ({"spend_reset_period": "weekly", "spend_reset_day_of_week": "saturday"}, {"days": 7}),
        ({"spend_reset_period": "monthly", "spend_reset_day_of_month": 14}, {"days": 30}),  # April
    ],
    ids=["daily", "weekly", "monthly"],
)
async def test_spend_resets_when_the_period_rolls_over(
    store: StateStore, fields: dict[str, Any], step: dict[str, float]
) -> None:
    """At the period boundary (injected clock) the spend starts again from zero; the old
    period's spend does not leak into the new one."""
    clock = Clock(datetime(2026, 3, 14, 23, 59, tzinfo=UTC))  # a Saturday, the 14th
    book = ledger(store, clock, limit=1.0, **fields)
    await book.settle(await book.reserve(1.0), 1.0)
    with pytest.raises(BudgetExceededError):
        await book.reserve(0.1)
    end = book.period_end
    assert end is not None
    clock.now = end - timedelta(seconds=1)
    assert await book.spent() == 1.0
    clock.now = end
    assert await book.spent() == 0.0
    await book.reserve(1.0)
    assert book.period_end == end + timedelta(**step)


async def test_a_never_resetting_budget_keeps_its_spend(store: StateStore) -> None:
    """spend_reset_period=never: no period end, spend kept across years."""
    clock = Clock()
    book = ledger(store, clock, limit=1.0)
    await book.settle(await book.reserve(0.5), 0.5)
    clock.advance(days=800)
    assert book.period_end is None
    assert await book.spent() == 0.5


async def test_without_a_limit_spend_is_still_tracked(store: StateStore) -> None:
    """max_spend_usd unset: every reservation is granted and spend is recorded."""
    book = ledger(store, limit=None)
    for _ in range(3):
        await book.settle(await book.reserve(100.0), 2.5)
    snapshot = await book.snapshot()
    assert (snapshot.spent_usd, snapshot.limit_usd, snapshot.remaining_usd) == (7.5, None, None)


async def test_an_exhausted_budget_is_logged_once_per_period(store: StateStore) -> None:
    """log_budget_exceeded: one warning per period, however many calls are refused."""
    clock = Clock(datetime(2026, 3, 14, 10, 0, tzinfo=UTC))
    loggers = CapturingLoggers()
    book = ledger(store, clock, limit=0.1, spend_reset_period="daily", loggers=loggers)
    quiet = ledger(store, clock, limit=0.1, log_budget_exceeded=False, loggers=loggers)
    for _ in range(3):
        with pytest.raises(BudgetExceededError):
            await book.reserve(1.0)
        with pytest.raises(BudgetExceededError):
            await quiet.reserve(1.0)
    clock.advance(days=1)
    with pytest.raises(BudgetExceededError):
        await book.reserve(1.0)
    logs = loggers.capture.entries
    events = [log for log in logs if log["event"] == "budget_exceeded"]
    assert len(events) == 2
    assert events[0]["backend"] == "paid"
    assert events[0]["log_level"] == "warning"


def test_budget_periods_in_utc() -> None:
    """Periods: daily from midnight UTC, weekly from the configured weekday, monthly from
    the configured day clamped to short months, never without an end; local times are
    converted to UTC first."""
    at = datetime(2026, 2, 20, 15, 30, tzinfo=UTC)  # a Friday
    daily = budget_period(config(spend_reset_period="daily"), at)
    assert (daily.start, daily.end) == (
        datetime(2026, 2, 20, tzinfo=UTC),
        datetime(2026, 2, 21, tzinfo=UTC),
    )
    weekly = budget_period(
        config(spend_reset_period="weekly", spend_reset_day_of_week=Weekday.SUNDAY), at
    )
    assert weekly.start == datetime(2026, 2, 15, tzinfo=UTC)
    assert weekly.end == datetime(2026, 2, 22, tzinfo=UTC)
    monthly = budget_period(config(spend_reset_period="monthly", spend_reset_day_of_month=31), at)
    assert monthly.start == datetime(2026, 1, 31, tzinfo=UTC)
    assert monthly.end == datetime(2026, 2, 28, tzinfo=UTC)  # clamped: February is short
    leap = budget_period(
        config(spend_reset_period="monthly", spend_reset_day_of_month=30),
        datetime(2028, 2, 29, 1, tzinfo=UTC),
    )
    assert (leap.start, leap.end) == (
        datetime(2028, 2, 29, tzinfo=UTC),
        datetime(2028, 3, 30, tzinfo=UTC),
    )
    never = budget_period(config(spend_reset_period=SpendResetPeriod.NEVER), at)
    assert (never.start, never.end, never.key) == (None, None, "all")
    # 01:30 on the 21st in UTC+2 is still the 20th in UTC.
    local = datetime(2026, 2, 21, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert budget_period(config(spend_reset_period="daily"), local).start == daily.start


def test_worst_case_cost_uses_the_backend_prices() -> None:
    """Input estimate at the input price plus max_tokens at the output price; no prices means
    unknown (None), never free."""
    assert worst_case_cost(config(), 1_000, 500) == pytest.approx((1_000 * 1.0 + 500 * 2.0) / 1e6)
    only_output = LlmBackendConfig(name="o", cost_per_million_output_tokens=4.0)
    assert worst_case_cost(only_output, 1_000, 10) == pytest.approx(40 / 1e6)
    assert worst_case_cost(LlmBackendConfig(name="free?"), 1_000, 500) is None


def test_the_token_estimate_errs_high_and_grows_with_the_request() -> None:
    """About four characters a token plus framing; tools and longer text cost more."""
    short = ChatRequest(messages=[ChatMessage.user("x" * 400)])
    assert estimate_prompt_tokens(short) >= 100
    longer = ChatRequest(messages=[ChatMessage.user("x" * 400), ChatMessage.user("y" * 400)])
    tooled = ChatRequest(messages=short.messages, tools=[ToolDefinition(name="f" * 40)])
    assert estimate_prompt_tokens(longer) > estimate_prompt_tokens(short)
    assert estimate_prompt_tokens(tooled) > estimate_prompt_tokens(short)


async def test_a_negative_reservation_is_a_caller_error(store: StateStore) -> None:
    """reserve() refuses a negative amount."""
    with pytest.raises(ValueError, match="negative"):
        await ledger(store).reserve(-1.0)
