"""The closing table of ``llmbackend demo``: what each backend served, failed, cost and took."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from attrs import frozen
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from llmbackend._demo import Tally
    from llmbackend.service import LlmService

__all__ = ["Outcome", "print_report"]


@frozen(kw_only=True)
class Outcome:
    """What the demo's requests got."""

    #: Every request sent: the streamed one, the batch and one per real provider.
    requests: int
    #: Requests that got no answer at all.
    failed: int
    #: Batch answers by source: a backend's name, or ``cache``.
    served: Counter[str]
    wall_seconds: float


def _budget(spent: float | None, limit: float | None) -> str:
    if limit is None:
        return "-"
    return f"{spent or 0.0:.4f}/{limit:.2f}"


def print_report(service: LlmService, tally: Tally, outcome: Outcome, console: Console) -> None:
    """The per-backend table and the totals line."""
    stats = service.get_statistics()
    # Short headers and no padding: the table fits an 80-column terminal.
    table = Table(title="what each backend did", padding=(0, 0), pad_edge=False)
    table.add_column("backend", no_wrap=True)
    columns = (
        "served", "failed", "retries", "breaker", "skipped", "cost $", "budget $", "p50 ms",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "breaker" else "right")
    for name, backend in stats.backends.items():
        skipped = tally.skipped_breaker[name] + tally.skipped_budget[name]
        table.add_row(
            name,
            str(outcome.served[name]),
            str(backend.failed_requests),
            str(tally.retries[name]),
            backend.circuit_state,
            str(skipped),
            f"{backend.total_cost_usd:.4f}",
            _budget(backend.budget_spent_usd, backend.budget_limit_usd),
            f"{backend.p50_latency_ms:.0f}",
        )
    console.print(table)
    answered = outcome.requests - outcome.failed
    console.print(
        f"requests {outcome.requests}, answered {answered}, failed {outcome.failed}, "
        f"cache hits {stats.cache_hits}, failovers {stats.failovers}, "
        f"retries {stats.retries}, wall time {outcome.wall_seconds:.2f} s",
        highlight=False,
    )
    for name in stats.backends:
        if tally.skipped_budget[name]:
            console.print(
                f"{name} reached its budget and was skipped {tally.skipped_budget[name]} times",
                highlight=False,
            )
        if tally.skipped_breaker[name]:
            console.print(
                f"{name}'s breaker was open: skipped {tally.skipped_breaker[name]} times",
                highlight=False,
            )
