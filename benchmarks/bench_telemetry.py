"""Per-request cost of telemetry: metrics and tracing on versus off, against FakeBackend.

Run: ``.venv/bin/python benchmarks/bench_telemetry.py [--requests N] [--rounds R]``; ``make
bench`` runs it as part of the llmbackend-only section (``sdk_only.py``).

Each variant serves the same sequential requests (``chat``, and a four-chunk ``stream``)
from an in-process ``FakeBackend``, so what is measured is the SDK's own bookkeeping.
Rounds interleave the variants and are timed in process CPU time with the garbage
collector paused, so a busy machine disturbs every variant alike; the best round of each
is reported, in microseconds per request, with the difference to telemetry off. The
"no SDK" tracing row uses OpenTelemetry's no-op provider, which is what an application
gets when it installs no SDK; the "SDK" rows record every span into an in-memory exporter
(the OpenTelemetry SDK is a dev dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry

from llmbackend.models import ChatMessage, ChatRequest
from llmbackend.service import LlmService
from llmbackend.settings import LlmBackendConfig, LlmSettings, TelemetrySettings
from llmbackend.testing import FakeBackend, FakeReply

REQUEST = ChatRequest(messages=[ChatMessage.user("how fast is the bookkeeping?")])
REPLY = FakeReply(text="one two three four")


def _sdk_provider() -> tuple[Any, Callable[[], None]]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter.clear


def _variants() -> dict[str, tuple[TelemetrySettings, Any, Callable[[], None]]]:
    nothing: Callable[[], None] = lambda: None  # noqa: E731  # a named no-op reads better here
    sdk, clear_sdk = _sdk_provider()
    both, clear_both = _sdk_provider()
    return {
        "off": (TelemetrySettings(enable_metrics=False), None, nothing),
        "metrics": (TelemetrySettings(), None, nothing),
        "tracing, no SDK": (
            TelemetrySettings(enable_metrics=False, enable_tracing=True),
            trace.NoOpTracerProvider(),
            nothing,
        ),
        "tracing, SDK": (
            TelemetrySettings(enable_metrics=False, enable_tracing=True),
            sdk,
            clear_sdk,
        ),
        "metrics + tracing, SDK": (TelemetrySettings(enable_tracing=True), both, clear_both),
    }


def _service(telemetry: TelemetrySettings, provider: Any) -> LlmService:
    backend = FakeBackend(
        LlmBackendConfig(name="fake", custom_backend_type="fake"), default_reply=REPLY
    )
    return LlmService(
        LlmSettings(telemetry=telemetry),
        [backend],
        metrics_registry=CollectorRegistry(),
        tracer_provider=provider,
    )


async def _chat(service: LlmService, count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        await service.chat(REQUEST)
    return time.process_time() - started


async def _stream(service: LlmService, count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        async for _event in service.stream(REQUEST):
            pass
    return time.process_time() - started


async def collect(count: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Variant name → (chat, stream) µs per request, the best round of each."""
    variants = _variants()
    services = {
        name: _service(telemetry, provider) for name, (telemetry, provider, _) in variants.items()
    }
    best = {name: [float("inf"), float("inf")] for name in variants}
    for service in services.values():  # warm up: first-use paths, label children
        await _chat(service, 200)
        await _stream(service, 200)
    for _ in range(rounds):
        for name, service in services.items():
            variants[name][2]()  # drop the spans the SDK exporter kept
            gc.collect()
            gc.disable()  # a collection landing in one variant's round is noise, not cost
            try:
                best[name][0] = min(best[name][0], await _chat(service, count))
                best[name][1] = min(best[name][1], await _stream(service, count))
            finally:
                gc.enable()
    for service in services.values():
        await service.aclose()
    return {
        name: (chat / count * 1e6, stream / count * 1e6) for name, (chat, stream) in best.items()
    }


async def main(count: int, rounds: int) -> None:
    results = await collect(count, rounds)
    base_chat, base_stream = results["off"]
    print(f"{count} sequential requests per round, best of {rounds} rounds (µs per request)")
    print(f"{'telemetry':<24}{'chat':>9}{'Δ chat':>10}{'stream':>10}{'Δ stream':>10}")
    for name, (chat, stream) in results.items():
        print(
            f"{name:<24}{chat:>9.1f}{chat - base_chat:>+10.1f}"
            f"{stream:>10.1f}{stream - base_stream:>+10.1f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per round")
    parser.add_argument("--rounds", type=int, default=25, help="rounds per variant")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.requests, arguments.rounds))
