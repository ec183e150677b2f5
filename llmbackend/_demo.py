"""``llmbackend demo``: an end-to-end run with no API keys and no network.

It starts a local fake OpenAI-compatible server (real HTTP on 127.0.0.1), configures a
service whose primary backend is broken (HTTP 500 on every call) and whose fallbacks work,
streams one answer live, sends a batch of concurrent requests and prints what each backend
served. If the contributed ``mock`` plugin is installed, it is configured as the last
fallback, selected by ``custom_backend_type`` like any third-party plugin.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from llmbackend._registry import default_registry
from llmbackend.container import open_service
from llmbackend.models import ChatMessage, ChatRequest, FinishEvent, TextDelta
from llmbackend.testing import FakeOpenAIServer

__all__ = ["demo_settings", "run_demo"]

#: Requests sent concurrently after the streamed answer.
BATCH = 50


def demo_settings(base_url: str, *, with_mock: bool) -> dict[str, Any]:
    """The demo's configuration: a broken primary, a working fallback, maybe a plugin."""
    backends: list[dict[str, Any]] = [
        {
            "name": "primary",
            "type": "openai_compatible",
            "base_url": base_url,
            # The fake server answers HTTP 500 to this model name, every time.
            "model_name": "error_500",
            "priority": 1,
            "max_retries": 1,
            "cost_per_million_input_tokens": 5.0,
            "cost_per_million_output_tokens": 15.0,
        },
        {
            "name": "fallback",
            "type": "openai_compatible",
            "base_url": base_url,
            "model_name": "fake-model",
            "priority": 2,
            "cost_per_million_input_tokens": 0.5,
            "cost_per_million_output_tokens": 1.5,
        },
    ]
    if with_mock:
        backends.append(
            {"name": "mock", "custom_backend_type": "mock", "model_name": "mock-1", "priority": 3}
        )
    return {"backends": backends, "retry_delay_ms": 20, "timeout_seconds": 10}


def _mock_plugin_installed() -> bool:
    registry = default_registry().copy()
    registry.load_entry_points()
    return registry.plugin_for("mock") is not None


async def run_demo(console: Console) -> int:
    """Run the demo, printing as it goes; returns the exit code."""
    with_mock = _mock_plugin_installed()
    async with FakeOpenAIServer(
        reply="Failover worked: the primary failed and this answer came from the fallback.",
        latency=0.01,
    ) as server:
        settings = demo_settings(server.base_url, with_mock=with_mock)
        async with open_service(settings) as service:
            names = ", ".join(backend.name for backend in service.backends)
            console.print(f"[bold]llmbackend demo[/bold] · backends in failover order: {names}")
            console.print(f"fake OpenAI-compatible server at {server.base_url}\n")

            request = ChatRequest(messages=[ChatMessage.user("Say something reassuring.")])
            console.print("[bold]streaming one answer[/bold]")
            async for event in service.stream(request):
                if isinstance(event, TextDelta):
                    console.print(event.text, end="", highlight=False, markup=False)
                elif isinstance(event, FinishEvent):
                    console.print(f"\n[dim]answered by {event.backend} ({event.model})[/dim]\n")

            console.print(f"[bold]{BATCH} concurrent requests[/bold]")
            started = time.perf_counter()
            answers = await asyncio.gather(
                *(
                    service.chat(ChatRequest(messages=[ChatMessage.user(f"question {n}")]))
                    for n in range(BATCH)
                )
            )
            elapsed = time.perf_counter() - started
            served = dict.fromkeys((b.name for b in service.backends), 0)
            for answer in answers:
                served[answer.backend] += 1
            console.print(f"{len(answers)} answered in {elapsed:.2f} s\n")

            stats = service.get_statistics()
            table = Table(title="what each backend did")
            columns = (
                "backend",
                "served",
                "calls ok",
                "calls failed",
                "breaker",
                "p50 ms",
                "cost USD",
            )
            for column in columns:
                table.add_column(column, justify="left" if column == "backend" else "right")
            for name, backend_stats in stats.backends.items():
                table.add_row(
                    name,
                    str(served[name]),
                    str(backend_stats.successful_requests),
                    str(backend_stats.failed_requests),
                    backend_stats.circuit_state,
                    f"{backend_stats.p50_latency_ms:.1f}",
                    f"{backend_stats.total_cost_usd:.6f}",
                )
            console.print(table)
            console.print(
                f"requests {stats.requests}, failovers {stats.failovers}, "
                f"retries {stats.retries}, failed {stats.failed_requests}; "
                f"the fake server saw {len(server.requests)} HTTP calls"
            )
            return 0 if stats.failed_requests == 0 else 1
