"""Ask every backend at once and compare their answers, latency, tokens and cost.

    python examples/compare.py                                   # local fake providers
    python examples/compare.py --config llmbackend.toml "Explain DNS in one sentence."

The ``simultaneous`` strategy sends one request to every eligible backend at once. The
answer it returns is the fastest success (``simultaneous_primary = "priority"`` picks the
best-priority one instead); the other successes are in ``alternative_responses`` and the
failures in ``failed_alternatives``. The request deadline bounds the whole fan-out:
backends still running then are cancelled and reported as timed out.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any

from attrs import frozen
from rich.console import Console
from rich.table import Table
from rich.text import Text

from llmbackend import (
    ChatMessage,
    ChatRequest,
    LlmResponse,
    LlmService,
    SelectionStrategy,
    open_service,
)
from llmbackend.testing import Behavior, FakeProviderServer


@frozen(kw_only=True)
class Outcome:
    """One backend's part in a comparison: its answer, or why it has none."""

    backend: str
    answer: str | None = None
    model: str | None = None
    latency_ms: float | None = None
    tokens: int | None = None
    cost_usd: float | None = None
    error: str | None = None


async def compare(service: LlmService, prompt: str) -> list[Outcome]:
    """Every eligible backend's outcome for ``prompt``, fastest answer first, failures last."""
    # Per request, so this works whatever strategy the configuration chose.
    request = ChatRequest(
        messages=[ChatMessage.user(prompt)], selection_strategy=SelectionStrategy.SIMULTANEOUS
    )
    primary = await service.chat(request)  # AllBackendsFailedError if nobody answered
    answers = [primary, *primary.alternative_responses]
    outcomes = [answered(response) for response in sorted(answers, key=lambda r: r.duration_ms)]
    for error in primary.failed_alternatives:
        name = getattr(error, "backend", None) or "?"
        outcomes.append(Outcome(backend=name, error=f"{type(error).__name__}: {error}"))
    return outcomes


def answered(response: LlmResponse) -> Outcome:
    return Outcome(
        backend=response.backend,
        answer=response.content,
        model=response.model,
        latency_ms=response.duration_ms,
        tokens=response.total_tokens,
        cost_usd=response.cost_usd,
    )


def table(prompt: str, outcomes: Sequence[Outcome]) -> Table:
    result = Table(title=prompt, show_lines=True)
    for column in ("backend", "answer", "latency", "tokens", "cost"):
        result.add_column(column, justify="right" if column in ("latency", "tokens") else "left")
    for outcome in outcomes:
        # Text, not markup: answers and errors may hold square brackets ("[local] ...").
        who = Text(outcome.backend).append(f"\n{outcome.model or ''}", style="dim")
        if outcome.error is not None:
            result.add_row(who, Text(outcome.error, style="red"), "-", "-", "-")
            continue
        cost = "unknown" if outcome.cost_usd is None else f"${outcome.cost_usd:.6f}"
        latency = f"{outcome.latency_ms:.0f} ms"
        result.add_row(who, Text(outcome.answer or ""), latency, str(outcome.tokens), cost)
    return result


# --- local fake providers ------------------------------------------------------------------


def demo_settings(fake: FakeProviderServer) -> dict[str, Any]:
    """Three providers on one fake server: two answer at different speeds and prices (one
    speaks the Anthropic Messages API), one is overloaded."""

    def backend(name: str, wire: str, **options: Any) -> dict[str, Any]:
        # Anthropic's base URL has no /v1 (the backend adds /v1/messages).
        url = fake.root_url_for(name) if wire == "anthropic" else fake.url_for(name)
        return {"name": name, "type": wire, "base_url": url} | options

    return {
        "backends": [
            backend("gpt", "openai_compatible", model_name="fast-model",
                    cost_per_million_input_tokens=0.15, cost_per_million_output_tokens=0.60),
            backend("claude", "anthropic", model_name="careful-model",
                    cost_per_million_input_tokens=3.0, cost_per_million_output_tokens=15.0),
            backend("local", "openai_compatible", model_name="error_503"),  # always overloaded
        ],
        "max_retries": 0,  # a comparison reports failures; it does not retry them
        "timeout_seconds": 10,
    }  # fmt: skip


def fake_providers() -> FakeProviderServer:
    """A fake server whose model names pick how each backend answers."""
    fake = FakeProviderServer()
    fake.register("fast-model", Behavior.ok("Paris.", first_token_delay=0.05))
    careful = "The capital of France is Paris, on the Seine."
    fake.register("careful-model", Behavior.ok(careful, first_token_delay=0.2))
    return fake


async def run(config: str | None, prompt: str) -> None:
    console = Console()
    if config is not None:
        async with open_service(config) as service:
            console.print(table(prompt, await compare(service, prompt)))
        return
    async with fake_providers() as fake, open_service(demo_settings(fake)) as service:
        console.print(table(prompt, await compare(service, prompt)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compare every backend's answer to a prompt.")
    parser.add_argument("--config", help="settings file (default: local fake providers)")
    parser.add_argument("prompt", nargs="?", default="What is the capital of France?")
    args = parser.parse_args(argv)
    asyncio.run(run(args.config, args.prompt))


if __name__ == "__main__":
    main()
