"""``llmbackend stats``: what a CLI, which has no long-running process, can honestly report.

* ``--url URL``: a running service's live numbers, scraped from its Prometheus endpoint
  (``add_metrics_route``): per backend requests served and failed, attempts, retries,
  fallbacks, latency, tokens, cost, breaker and health, and the cache hits.
* without ``--url``: what outlives processes, read from the configured state store: each
  budget's spend, live reservations and what is left in the current period. Request counts
  and cache hits are per process, so they are not there; the memory store keeps nothing.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
from attrs import define, field
from rich.console import Console
from rich.table import Table

from llmbackend._cli_common import CliError, for_service, load_cli_settings
from llmbackend._state_guard import needs_store
from llmbackend.container import open_service
from llmbackend.settings import CacheProvider

__all__ = ["BackendMetrics", "parse_metrics", "quantile", "stats_command"]

_CIRCUIT = {0: "closed", 1: "half_open", 2: "open"}
_PREFIX = "llmbackend_"


@define
class BackendMetrics:
    """One backend's numbers from a metrics scrape."""

    served: int = 0
    failed: int = 0
    cache_hits: int = 0
    attempts_ok: int = 0
    attempts_failed: int = 0
    retries: int = 0
    fallbacks: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    circuit_state: str | None = None
    healthy: bool | None = None
    budget_spent_usd: float | None = None
    budget_limit_usd: float | None = None
    latency_sum: float = 0.0
    latency_count: int = 0
    #: Cumulative counts of successful attempts by upper bound (seconds).
    buckets: dict[float, float] = field(factory=dict)

    def as_json(self) -> dict[str, Any]:
        average = self.latency_sum / self.latency_count * 1000 if self.latency_count else None
        p50, p95 = quantile(self.buckets, 0.5), quantile(self.buckets, 0.95)
        return {
            "served": self.served,
            "failed": self.failed,
            "cache_hits": self.cache_hits,
            "attempts_ok": self.attempts_ok,
            "attempts_failed": self.attempts_failed,
            "retries": self.retries,
            "fallbacks": self.fallbacks,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "circuit_state": self.circuit_state,
            "healthy": self.healthy,
            "budget_spent_usd": self.budget_spent_usd,
            "budget_limit_usd": self.budget_limit_usd,
            "average_latency_ms": None if average is None else round(average, 2),
            "p50_latency_ms": None if p50 is None else round(p50 * 1000, 2),
            "p95_latency_ms": None if p95 is None else round(p95 * 1000, 2),
        }


def quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """The ``q`` quantile estimated from cumulative histogram buckets, interpolating inside
    the bucket it falls in (as Prometheus' ``histogram_quantile`` does)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the largest finite bucket: its bound is all we know
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


#: Counters split by one label: sample name -> (label, label value -> attribute).
_SPLIT = {
    "requests_total": (
        "outcome",
        {"success": "served", "failure": "failed", "cache_hit": "cache_hits"},
    ),
    "attempts_total": ("outcome", {"success": "attempts_ok", "failure": "attempts_failed"}),
    "tokens_total": ("direction", {"input": "input_tokens", "output": "output_tokens"}),
    "retries_total": ("", {"": "retries"}),
    "fallbacks_total": ("", {"": "fallbacks"}),
}
_GAUGES = ("budget_spent_usd", "budget_limit_usd")


def _record(entry: BackendMetrics, name: str, labels: Mapping[str, str], value: float) -> None:
    """Fold one sample into its backend's numbers."""
    if name in _SPLIT:
        label, attributes = _SPLIT[name]
        attribute = attributes.get(labels.get(label, ""))
        if attribute is not None:
            setattr(entry, attribute, getattr(entry, attribute) + int(value))
    elif name == "cost_usd_total":
        entry.cost_usd += value
    elif name == "circuit_state":
        entry.circuit_state = _CIRCUIT.get(int(value), str(value))
    elif name == "backend_healthy":
        entry.healthy = value >= 1
    elif name in _GAUGES:
        setattr(entry, name, value)
    elif name.startswith("attempt_duration_seconds") and labels.get("outcome") == "success":
        _latency(entry, name, labels, value)


def _latency(entry: BackendMetrics, name: str, labels: Mapping[str, str], value: float) -> None:
    if name.endswith("_bucket"):
        entry.buckets[float(labels["le"])] = value
    elif name.endswith("_sum"):
        entry.latency_sum = value
    elif name.endswith("_count"):
        entry.latency_count = int(value)


def parse_metrics(text: str) -> dict[str, BackendMetrics]:
    """Per backend numbers from a Prometheus text exposition of the SDK's metrics;
    ``ValueError`` when the text is not an exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    found: defaultdict[str, BackendMetrics] = defaultdict(BackendMetrics)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            backend = sample.labels.get("backend")
            if not sample.name.startswith(_PREFIX) or backend is None:
                continue
            _record(found[backend], sample.name.removeprefix(_PREFIX), sample.labels, sample.value)
    found.pop("", None)  # a request that failed before any backend was tried
    return dict(found)


async def _scrape(url: str, limit: float) -> str:
    timeout = aiohttp.ClientTimeout(total=limit)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url) as response,
        ):
            body = await response.text()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CliError(f"could not read metrics from {url}: {type(exc).__name__} {exc}", 2) from exc
    if status != 200:
        raise CliError(f"{url} answered HTTP {status}", 2)
    return body


def _live_table(url: str, backends: Mapping[str, BackendMetrics], console: Console) -> None:
    columns = (
        "backend", "served", "failed", "attempts ok", "attempts failed", "retries",
        "fallbacks", "p50 ms", "p95 ms", "tokens in", "tokens out", "cost USD", "breaker",
    )  # fmt: skip
    table = Table(*columns, title=f"live metrics from {url}")
    for name, entry in backends.items():
        shown = entry.as_json()
        table.add_row(
            name,
            *(str(shown[key]) for key in ("served", "failed", "attempts_ok", "attempts_failed")),
            str(shown["retries"]),
            str(shown["fallbacks"]),
            *(_ms(shown[key]) for key in ("p50_latency_ms", "p95_latency_ms")),
            str(shown["input_tokens"]),
            str(shown["output_tokens"]),
            f"{shown['cost_usd']:.6f}",
            shown["circuit_state"] or "-",
        )
    console.print(table)
    hits = sum(entry.cache_hits for entry in backends.values())
    console.print(f"cache hits {hits}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


async def _live(args: argparse.Namespace, console: Console) -> int:
    text = await _scrape(args.url, args.timeout)
    try:
        backends = parse_metrics(text)
    except ValueError as exc:
        raise CliError(f"{args.url} does not serve Prometheus metrics ({exc})", 1) from exc
    if not backends:
        raise CliError(f"{args.url} serves no llmbackend metrics", 1)
    if args.json:
        payload = {
            "source": args.url,
            "cache_hits": sum(entry.cache_hits for entry in backends.values()),
            "backends": {name: entry.as_json() for name, entry in backends.items()},
        }
        console.print_json(json.dumps(payload))
    else:
        _live_table(args.url, backends, console)
    return 0


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


async def _stored(args: argparse.Namespace, console: Console) -> int:
    _, settings = await load_cli_settings(args.config)
    rows: dict[str, dict[str, Any]] = {}
    async with open_service(for_service(settings)) as service:
        for config in settings.backends:
            ledger = service.state.ledgers.get(config.name)
            if ledger is None:
                rows[config.name] = {"budget": False}
                continue
            snapshot = await ledger.snapshot()
            rows[config.name] = {
                "budget": True,
                "period": config.spend_reset_period.value,
                "period_start": _iso(snapshot.period_start),
                "period_end": _iso(snapshot.period_end),
                "spent_usd": snapshot.spent_usd,
                "reserved_usd": snapshot.reserved_usd,
                "limit_usd": snapshot.limit_usd,
                "remaining_usd": snapshot.remaining_usd,
            }
    store = settings.caching.provider
    payload = {
        # The one store serving cache, budgets and limits (none when no feature needs it).
        "store": store.value if needs_store(settings) else None,
        "persistent": store is not CacheProvider.MEMORY,
        "cache_enabled": settings.caching.enabled,
        "backends": rows,
    }
    if args.json:
        console.print_json(json.dumps(payload))
        return 0
    _stored_table(payload, console)
    return 0


def _stored_table(payload: Mapping[str, Any], console: Console) -> None:
    table = Table("backend", "period", "spent USD", "reserved USD", "limit USD", "left USD",
                  "resets", title="budgets (from the state store)")  # fmt: skip
    for name, row in payload["backends"].items():
        if not row["budget"]:
            table.add_row(name, "no budget", "-", "-", "-", "-", "-")
            continue
        table.add_row(
            name,
            row["period"],
            f"{row['spent_usd']:.6f}",
            f"{row['reserved_usd']:.6f}",
            f"{row['limit_usd']:.2f}",
            f"{row['remaining_usd']:.6f}",
            row["period_end"] or "never",
        )
    console.print(table)
    for line in _notes(payload):
        console.print(line, style="dim")


def _notes(payload: Mapping[str, Any]) -> Iterable[str]:
    if payload["store"] is None:
        yield "no budget or cache is configured, so nothing is stored between runs"
    elif not payload["persistent"]:
        yield (
            "the memory store keeps nothing between processes: use sqlite or redis "
            "(caching.provider) to keep spend across runs"
        )
    if payload["cache_enabled"]:
        yield "cache hits are counted per process: `llmbackend stats --url` shows a service's"
    yield "live request counts, latency and breakers: llmbackend stats --url http://host:port/metrics"


async def stats_command(args: argparse.Namespace, console: Console) -> int:
    """Live metrics of a running service (``--url``) or the stored budgets."""
    if args.url:
        return await _live(args, console)
    return await _stored(args, console)
