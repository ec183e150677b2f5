"""``llmbackend demo``: the SDK's main job end to end, with no API keys and no network.

Two fake providers run on 127.0.0.1 (``llmbackend.testing.FakeProviderServer``), one
speaking the OpenAI wire format, one Anthropic's. Three backends sit on them, in failover
order:

* ``gpt-down`` answers HTTP 503 to everything: its circuit breaker opens and the service
  stops trying it;
* ``gpt-flaky`` fails one call in eight (HTTP 503, HTTP 429 with ``Retry-After``, a reset
  connection, from the fault catalogue): retries rescue those; it has a small budget that
  runs out part-way, after which it is skipped;
* ``claude`` is steady and a little slower.

The service has a memory cache, so repeated questions never reach a provider. The demo
streams one answer live, then sends a few hundred questions concurrently (a third of them
repeats) with a progress bar, and ends with a table of what each backend served, failed,
retried, cost and how long it took. Real providers found on this machine (see
:mod:`llmbackend._demo_detect`) join at the end of the failover order and get one question
each. It exits 0 only when every request got an answer.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import define, field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llmbackend._cli_common import stream_to_console
from llmbackend._demo_detect import Found, detect_providers
from llmbackend._demo_report import Outcome, print_report
from llmbackend._observer import Observer, RequestObservation, skip_category
from llmbackend.container import open_service
from llmbackend.errors import LlmBackendError
from llmbackend.models import ChatMessage, ChatRequest, EmbeddingRequest
from llmbackend.service import LlmService
from llmbackend.testing import Behavior, FakeProviderServer

__all__ = ["DEMO_CONCURRENCY", "demo_settings", "run_demo"]

#: Requests in flight at once during the batch.
DEMO_CONCURRENCY = 32
#: The spend limit of ``gpt-flaky`` (its prices are gpt-4o's).
FLAKY_BUDGET_USD = 0.03

_OPENAI_REPLY = (
    "This answer came through the OpenAI wire format from gpt-flaky: gpt-down refused "
    "with HTTP 503, the service retried it, then failed over without you noticing."
)
_ANTHROPIC_REPLY = "Claude here, over the Anthropic Messages format, steady as ever."


def demo_settings(
    openai: FakeProviderServer, anthropic: FakeProviderServer, extra: Sequence[Found] = ()
) -> dict[str, Any]:
    """The demo's configuration on the running fake servers, plus any real providers."""
    priced = {"cost_per_million_input_tokens": 2.5, "cost_per_million_output_tokens": 10.0}
    backends: list[Mapping[str, Any]] = [
        {
            "name": "gpt-down",
            "type": "openai",
            "base_url": openai.url_for("gpt-down"),
            "model_name": "gpt-4o",
            # The fault catalogue entry for every request of this backend.
            "additional_headers": {"x-fake-behavior": "error_503"},
            "priority": 1,
            **priced,
        },
        {
            "name": "gpt-flaky",
            "type": "openai",
            "base_url": openai.url_for("gpt-flaky"),
            "model_name": "gpt-4o",
            "priority": 2,
            "max_spend_usd": FLAKY_BUDGET_USD,
            **priced,
        },
        {
            "name": "claude",
            "type": "anthropic",
            "base_url": anthropic.root_url_for("claude"),
            "model_name": "claude-sonnet-4-5",
            "priority": 3,
            "cost_per_million_input_tokens": 3.0,
            "cost_per_million_output_tokens": 15.0,
        },
    ]
    for offset, found in enumerate(extra):
        backends.append({**found.config, "priority": 10 + offset, "max_retries": 0})
    return {
        "backends": backends,
        "selection_strategy": "failover",
        "timeout_seconds": 20,
        "max_retries": 2,
        "retry_delay_ms": 10,
        # The budget reserves max_tokens at the output price per call in flight.
        "default_max_tokens": 60,
        # Tuned so a dead backend trips at once while one failing one call in eight (about
        # a dozen failures in the run) does not; open for longer than the whole run.
        "circuit_breaker": {
            "failure_threshold": 20,
            "minimum_throughput": 10,
            "sampling_duration_seconds": 10,
            "duration_of_break_seconds": 10,
        },
        # Passive health marking would take gpt-down out before its breaker opens; this
        # run is about the breaker (and nothing here would run the active checks back in).
        "health_check": {"enabled": False},
        "caching": {"enabled": True, "provider": "memory"},
    }


def _flaky_script(calls: int) -> list[Behavior]:
    """One call in eight fails, cycling through three faults of the catalogue."""
    faults = [Behavior.error(503), Behavior.rate_limited(0.05), Behavior.connection_reset()]
    script = []
    for call in range(calls):
        if call % 8 == 7:
            script.append(faults[(call // 8) % len(faults)])
        else:
            script.append(Behavior.ok())
    return script


@define
class Tally(Observer):
    """Counts what the service did per backend: retries and why backends were skipped."""

    retries: Counter[str] = field(factory=Counter)
    skipped_breaker: Counter[str] = field(factory=Counter)
    skipped_budget: Counter[str] = field(factory=Counter)

    def request_started(
        self, operation: str, request: ChatRequest | EmbeddingRequest, correlation_id: str
    ) -> RequestObservation:
        return _Seen(self)


class _Seen(RequestObservation):
    __slots__ = ("_tally",)

    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    def retry_scheduled(self, backend: str, attempt: int, delay_s: float) -> None:
        self._tally.retries[backend] += 1

    def skipped(self, backend: str, reason: str) -> None:
        category = skip_category(reason)  # the categories the metrics label skips with
        if category == "circuit_open":
            self._tally.skipped_breaker[backend] += 1
        elif category == "budget_exhausted":
            self._tally.skipped_budget[backend] += 1


def _questions(count: int) -> list[str]:
    """``count`` questions, the last third repeating the first ones (cache hits)."""
    distinct = max(1, count - count // 3)
    return [f"question {n % distinct}: what is {n % distinct} squared?" for n in range(count)]


async def _batch(
    service: LlmService, prompts: Sequence[str], console: Console
) -> tuple[Counter[str], int]:
    """Send every prompt, ``DEMO_CONCURRENCY`` at a time; (answers per source, failures)."""
    served: Counter[str] = Counter()
    failed = 0
    gate = asyncio.Semaphore(DEMO_CONCURRENCY)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("sending", total=len(prompts))

        async def one(prompt: str) -> None:
            nonlocal failed
            async with gate:
                try:
                    answer = await service.chat(ChatRequest(messages=[ChatMessage.user(prompt)]))
                except LlmBackendError:
                    failed += 1
                else:
                    served["cache" if answer.cached else answer.backend] += 1
            shown = " ".join(f"{name} {count}" for name, count in sorted(served.items()))
            progress.update(task, advance=1, description=shown or "sending")

        await asyncio.gather(*(one(prompt) for prompt in prompts))
    return served, failed


async def _ask_each(
    service: LlmService, found: Sequence[Found], console: Console, served: Counter[str]
) -> int:
    """One question to each real provider (it fails over to the fakes if it cannot answer),
    counted in ``served``; returns how many got no answer at all."""
    unanswered = 0
    for provider in found:
        request = ChatRequest(
            messages=[ChatMessage.user("In five words: what is a circuit breaker?")],
            preferred_backend=provider.name,
            max_tokens=32,
            timeout_seconds=15,
        )
        try:
            answer = await service.chat(request)
        except LlmBackendError as exc:
            unanswered += 1
            console.print(f"{provider.name}: no answer ({type(exc).__name__})", highlight=False)
        else:
            served[answer.backend] += 1
            text = " ".join(answer.content.split())[:80]
            console.print(
                f"{provider.name} → answered by {answer.backend}: {text}",
                highlight=False,
                markup=False,
            )
    return unanswered


async def run_demo(
    console: Console,
    *,
    requests: int = 300,
    detect: bool = True,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the demo, printing as it goes; returns the exit code (0: every request answered).

    ``detect=False`` leaves real providers out; ``environ`` (default ``os.environ``) is
    where keys and the local server addresses are looked up.
    """
    env = os.environ if environ is None else environ
    found = await detect_providers(env) if detect else []
    # The settings see only the keys they refer to: LLMBACKEND_* overrides in the user's
    # shell are meant for their own configuration, not for this one.
    keys = {
        provider.key_variable: env[provider.key_variable]
        for provider in found
        if provider.key_variable is not None
    }
    tally = Tally()
    async with (
        FakeProviderServer(reply=_OPENAI_REPLY, latency=0.005) as openai,
        FakeProviderServer(reply=_ANTHROPIC_REPLY, latency=0.015) as anthropic,
    ):
        openai.enqueue(*_flaky_script(requests * 2), backend="gpt-flaky")
        settings = demo_settings(openai, anthropic, found)
        async with open_service(settings, environ=keys, observers=[tally]) as service:
            names = ", ".join(backend.name for backend in service.backends)
            console.print(f"[bold]llmbackend demo[/bold] · failover order: {names}")
            console.print(
                f"fake OpenAI server {openai.root_url}, fake Anthropic server "
                f"{anthropic.root_url} (no API keys, no network)"
            )
            for provider in found:
                console.print(f"added real provider {provider.name}: {provider.reason}")
            console.print("\n[bold]one answer, streamed live[/bold]")
            request = ChatRequest(messages=[ChatMessage.user("What does this demo show?")])
            streamed = await stream_to_console(service.stream(request), console)
            console.print(f"\n[bold]{requests} questions, {DEMO_CONCURRENCY} at a time[/bold]")
            started = time.perf_counter()
            served, failed = await _batch(service, _questions(requests), console)
            wall = time.perf_counter() - started
            unanswered = await _ask_each(service, found, console, served)
            outcome = Outcome(
                requests=requests + 1 + len(found),
                failed=failed + unanswered + (streamed is None),
                served=served,
                wall_seconds=wall,
            )
            print_report(service, tally, outcome, console)
    return 0 if outcome.failed == 0 else 1
