"""Per-backend runtime counters (mutable, small, explicit) and their frozen snapshots."""

from __future__ import annotations

import collections
import statistics as _stats
from datetime import UTC, datetime

from attrs import define, field

from llmbackend.models import BackendStatistics, Usage

__all__ = ["BackendMetrics"]

#: How many recent latencies the percentiles are computed over.
LATENCY_WINDOW = 1024


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    if len(ordered) == 1:
        return ordered[0]
    # statistics.quantiles' inclusive method matches numpy's default linear interpolation.
    cuts = _stats.quantiles(ordered, n=100, method="inclusive")
    return cuts[round(fraction * 100) - 1]


@define
class BackendMetrics:
    """Success and failure counters of one backend."""

    total_requests: int = 0
    successful_requests: int = 0
    failed_requests: int = 0
    consecutive_failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    total_cost_usd: float = 0.0
    total_latency_ms: float = 0.0
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_success_at: datetime | None = None
    last_used_at: datetime | None = None
    latencies: collections.deque[float] = field(
        factory=lambda: collections.deque(maxlen=LATENCY_WINDOW)
    )

    def record_success(
        self, duration_ms: float, usage: Usage | None = None, cost_usd: float | None = None
    ) -> None:
        now = datetime.now(UTC)
        self.total_requests += 1
        self.successful_requests += 1
        self.consecutive_failures = 0
        self.total_latency_ms += duration_ms
        self.latencies.append(duration_ms)
        if usage is not None:
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
            self.total_tokens += usage.total_tokens
        if cost_usd is not None:
            self.total_cost_usd += cost_usd
        self.last_success_at = now
        self.last_used_at = now

    def record_failure(self, error: BaseException | str, duration_ms: float) -> None:
        now = datetime.now(UTC)
        self.total_requests += 1
        self.failed_requests += 1
        self.consecutive_failures += 1
        self.last_error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.last_error_at = now
        self.last_used_at = now
        del duration_ms  # failures are not part of the latency estimate: a fast 500 is no speed

    def snapshot(self, name: str, backend_type: str, model: str | None) -> BackendStatistics:
        ordered = sorted(self.latencies)
        successes = self.successful_requests
        return BackendStatistics(
            name=name,
            backend_type=backend_type,
            model=model,
            total_requests=self.total_requests,
            successful_requests=successes,
            failed_requests=self.failed_requests,
            consecutive_failures=self.consecutive_failures,
            average_latency_ms=self.total_latency_ms / successes if successes else 0.0,
            p50_latency_ms=_percentile(ordered, 0.50),
            p95_latency_ms=_percentile(ordered, 0.95),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.total_tokens,
            total_cost_usd=self.total_cost_usd,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            last_success_at=self.last_success_at,
            last_used_at=self.last_used_at,
        )
