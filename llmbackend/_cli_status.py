"""``llmbackend backends`` and ``llmbackend models``: ask every configured backend now.

Both commands call the providers (an availability check, a model listing), each call bounded
by ``--timeout``, all at once. A backend that cannot be called for lack of an API key is not
called: its row says which variable to set.

Exit codes: ``backends`` exits 1 when an enabled backend's key is missing, else 2 when any
checked backend is down, else 0 (so a script can gate on it). ``models`` exits 0 when at
least one backend listed its models (a failing one shows its error in its row), and
otherwise 1 when keys are missing or 2 when the providers failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from llmbackend._cli_common import check_backend_name, for_service, key_problem, load_cli_settings
from llmbackend.backends.base import BaseLlmBackend, Capability
from llmbackend.container import open_service
from llmbackend.errors import LlmBackendError
from llmbackend.models import BackendHealth, BackendStatistics
from llmbackend.service import LlmService
from llmbackend.settings import LlmSettings

__all__ = ["backends_command", "models_command", "refresh_budgets"]

T = TypeVar("T")


async def refresh_budgets(service: LlmService) -> None:
    """Read every budget's spend from the store (SQLite or Redis: what every process spent
    in the current period), so the service's statistics show it."""
    for name, ledger in service.state.ledgers.items():
        await ledger.snapshot()
        service.budget_settled(name)


def _key_problems(settings: LlmSettings) -> dict[str, str]:
    found = {}
    for index, config in enumerate(settings.backends):
        problem = key_problem(settings, index)
        if problem is not None:
            found[config.name] = problem.message
    return found


def _selected(service: LlmService, name: str | None) -> list[BaseLlmBackend]:
    return [backend for backend in service.backends if name is None or backend.name == name]


async def _each(
    backends: list[BaseLlmBackend], call: Callable[[BaseLlmBackend], Coroutine[Any, Any, T]]
) -> dict[str, T]:
    tasks: dict[str, asyncio.Task[T]] = {}
    async with asyncio.TaskGroup() as group:
        for backend in backends:
            tasks[backend.name] = group.create_task(call(backend))
    return {name: task.result() for name, task in tasks.items()}


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def _spend(stats: BackendStatistics) -> str:
    if stats.budget_limit_usd is None:
        return "-"
    return f"{_money(stats.budget_spent_usd or 0.0)} / ${stats.budget_limit_usd:.2f}"


def _health_row(health: BackendHealth | None, missing: str | None) -> dict[str, Any]:
    if missing is not None:
        return {"available": None, "error": missing, "latency_ms": None}
    assert health is not None
    return {
        "available": health.available,
        "error": health.error,
        "latency_ms": round(health.latency_ms, 1),
    }


async def backends_command(args: argparse.Namespace, console: Console) -> int:
    """The table of configured backends: type, model, health (checked now), breaker,
    check latency and spend against budget."""
    _, settings = await load_cli_settings(args.config)
    check_backend_name(settings, args.backend)
    missing = _key_problems(settings)
    async with open_service(for_service(settings)) as service:
        chosen = _selected(service, args.backend)
        checked = [backend for backend in chosen if backend.name not in missing]
        results = await _each(checked, lambda backend: backend.get_health(args.timeout))
        await refresh_budgets(service)
        stats = service.get_statistics().backends
    rows = []
    for backend in chosen:
        own = stats[backend.name]
        rows.append(
            {
                "name": backend.name,
                "type": backend.config.resolved_type,
                "model": backend.model,
                "enabled": backend.config.enabled,
                **_health_row(results.get(backend.name), missing.get(backend.name)),
                "circuit_state": own.circuit_state,
                "budget_spent_usd": own.budget_spent_usd,
                "budget_limit_usd": own.budget_limit_usd,
                "budget_period_end": own.budget_period_end.isoformat()
                if own.budget_period_end
                else None,
            }
        )
    if args.json:
        console.print_json(json.dumps(rows))
    else:
        _print_backends(rows, stats, console)
    if any(row["name"] in missing and row["enabled"] for row in rows):
        return 1
    return 2 if any(row["available"] is False for row in rows) else 0


def _print_backends(
    rows: list[dict[str, Any]], stats: Mapping[str, BackendStatistics], console: Console
) -> None:
    table = Table("backend", "type", "model", "health", "check ms", "breaker", "spend / budget")
    for row in rows:
        if row["available"] is None:
            health = f"[red]{row['error']}[/red]"
        elif row["available"]:
            health = "[green]ok[/green]"
        else:
            health = f"[red]down[/red]: {row['error']}"
        latency = "-" if row["latency_ms"] is None else f"{row['latency_ms']:.1f}"
        name = row["name"] if row["enabled"] else f"{row['name']} (disabled)"
        table.add_row(
            name,
            row["type"],
            row["model"] or "-",
            health,
            latency,
            row["circuit_state"],
            _spend(stats[row["name"]]),
        )
    console.print(table)


async def _models_of(backend: BaseLlmBackend, limit: float) -> dict[str, Any]:
    if not backend.supports(Capability.MODELS):
        return {"models": None, "error": None}
    try:
        async with asyncio.timeout(limit):
            names = await backend.models()
    except TimeoutError:
        return {"models": None, "error": f"no answer within {limit:g} s"}
    except LlmBackendError as exc:
        error = " ".join(f"{type(exc).__name__}: {backend.redactor.scrub(exc)}".split())
        return {"models": None, "error": error}
    return {"models": sorted(names), "error": None}


async def models_command(args: argparse.Namespace, console: Console) -> int:
    """Each backend's models, as its API lists them now."""
    _, settings = await load_cli_settings(args.config)
    check_backend_name(settings, args.backend)
    missing = _key_problems(settings)
    async with open_service(for_service(settings)) as service:
        chosen = _selected(service, args.backend)
        callable_ = [backend for backend in chosen if backend.name not in missing]
        listed = await _each(callable_, lambda backend: _models_of(backend, args.timeout))
    result = {
        backend.name: listed.get(backend.name) or {"models": None, "error": missing[backend.name]}
        for backend in chosen
    }
    if args.json:
        console.print_json(json.dumps(result))
    else:
        table = Table("backend", "models")
        for name, entry in result.items():
            if entry["models"] is not None:
                table.add_row(name, ", ".join(entry["models"]) or "(none listed)")
            elif entry["error"] is not None:
                table.add_row(name, f"[red]{entry['error']}[/red]")
            else:
                table.add_row(name, "[dim]this backend cannot list its models[/dim]")
        console.print(table)
    if any(entry["models"] is not None for entry in result.values()):
        return 0
    failed = [name for name, entry in result.items() if entry["error"] is not None]
    if not failed:
        return 0  # nothing could be listed, and nothing went wrong
    return 1 if all(name in missing for name in failed) else 2
