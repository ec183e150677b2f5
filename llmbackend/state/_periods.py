"""Budget periods in UTC: daily, weekly (from a weekday), monthly (from a day of the month,
clamped to short months) or never reset."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

from attrs import frozen

from llmbackend.settings import LlmBackendConfig, SpendResetPeriod, Weekday

__all__ = ["BudgetPeriod", "budget_period"]

_WEEKDAYS = list(Weekday)  # declared Monday first, as datetime.weekday() counts


@frozen(kw_only=True)
class BudgetPeriod:
    """One accounting period: ``start`` inclusive, ``end`` exclusive (both ``None`` for never)."""

    key: str
    start: datetime | None
    end: datetime | None


def _month_reset(year: int, month: int, day: int) -> datetime:
    last = calendar.monthrange(year, month)[1]
    return datetime(year, month, min(max(day, 1), last), tzinfo=UTC)


def _shift_month(year: int, month: int, by: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + by
    return index // 12, index % 12 + 1


def budget_period(config: LlmBackendConfig, now: datetime) -> BudgetPeriod:
    """The period of ``config``'s budget that contains ``now`` (naive times are UTC)."""
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    match config.spend_reset_period:
        case SpendResetPeriod.NEVER:
            return BudgetPeriod(key="all", start=None, end=None)
        case SpendResetPeriod.DAILY:
            start, end = midnight, midnight + timedelta(days=1)
        case SpendResetPeriod.WEEKLY:
            reset_day = _WEEKDAYS.index(Weekday(config.spend_reset_day_of_week))
            start = midnight - timedelta(days=(now.weekday() - reset_day) % 7)
            end = start + timedelta(days=7)
        case SpendResetPeriod.MONTHLY:
            day = config.spend_reset_day_of_month
            start = _month_reset(now.year, now.month, day)
            if now < start:
                start = _month_reset(*_shift_month(now.year, now.month, -1), day)
            end = _month_reset(*_shift_month(start.year, start.month, 1), day)
    prefix = str(config.spend_reset_period)[0]  # d, w, m: a changed period never aliases
    return BudgetPeriod(key=f"{prefix}{start:%Y%m%d}", start=start, end=end)
