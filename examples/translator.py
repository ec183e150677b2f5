"""A cost-optimised translator: free backends first, a paid one only when they fail, and
never more than a daily budget on it.

    python examples/translator.py        # a tour on local fake providers, no keys
    python examples/translator.py --config examples/translator.toml --target de "Good morning"

The whole policy is configuration (see ``translator.toml``): every backend has
``prompt_builder_type = "translation"`` (it builds the translation prompt from the request's
languages); the free backends (prices 0) have the best priorities, so the default failover
strategy tries them first; the paid one comes last with ``max_spend_usd`` and
``spend_reset_period = "daily"``. Before each paid call
the service reserves its worst case (input estimate + ``max_tokens`` at the output price),
so concurrent translations cannot overspend; once the day's budget is spent the paid backend
is skipped, and a text no free backend could translate fails with ``AllBackendsFailedError``
whose ``skipped`` says why.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any

from llmbackend import (
    AllBackendsFailedError,
    ChatMessage,
    ChatRequest,
    LlmBackendError,
    LlmResponse,
    LlmService,
    open_service,
)
from llmbackend.testing import FakeProviderServer


async def translate(
    service: LlmService, text: str, *, target: str, source: str | None = None
) -> LlmResponse:
    """Translate ``text`` into ``target`` (a language name or code; EasyNMT needs codes such
    as ``de``) with the first backend that can, in priority order.

    Only the text and the languages are sent: each backend's ``prompt_builder_type =
    "translation"`` turns them into what it needs (a translator's system prompt for an LLM,
    the language fields for EasyNMT).
    """
    languages = {"target_language": target} | ({"source_language": source} if source else {})
    request = ChatRequest(
        messages=[ChatMessage.user(text)],
        variables=languages,
        temperature=0.0,
        # A translation is about as long as its source (~4 characters a token): bounding
        # the output keeps the paid backend's worst-case reservation small.
        max_tokens=max(16, len(text) // 2),
    )
    return await service.chat(request)


async def translate_batch(
    service: LlmService,
    texts: Sequence[str],
    *,
    target: str,
    source: str | None = None,
    concurrency: int = 4,
) -> list[LlmResponse | LlmBackendError]:
    """Translate ``texts``, at most ``concurrency`` at a time; results come in input order,
    the error in place of a text nobody could translate."""
    slots = asyncio.Semaphore(concurrency)

    async def one(text: str) -> LlmResponse | LlmBackendError:
        async with slots:
            try:
                return await translate(service, text, target=target, source=source)
            except LlmBackendError as exc:
                return exc

    return await asyncio.gather(*(one(text) for text in texts))


def describe(text: str, result: LlmResponse | LlmBackendError) -> str:
    if isinstance(result, LlmResponse):
        cost = "cost unknown" if result.cost_usd is None else f"${result.cost_usd:.6f}"
        return f"{text!r} -> {result.content!r}  [{result.backend}, {cost}]"
    if isinstance(result, AllBackendsFailedError) and result.skipped:
        reasons = "; ".join(f"{name}: {why}" for name, why in result.skipped.items())
        return f"{text!r} -> not translated (skipped {reasons})"
    return f"{text!r} -> not translated ({type(result).__name__})"


# --- the tour on local fake providers ----------------------------------------------------------


def demo_settings(free: FakeProviderServer, paid: FakeProviderServer) -> dict[str, Any]:
    """A free local model first; a paid cloud model with a tiny daily budget as fallback."""
    return {
        "backends": [
            {
                "name": "local",
                "type": "openai_compatible",  # e.g. a llama.cpp or vLLM server
                "base_url": free.base_url,
                "model_name": "local-translator",
                "priority": 1,
                "prompt_builder_type": "translation",
                "max_retries": 0,  # a local server that is down stays down: move on
                "cost_per_million_input_tokens": 0.0,  # free, and known to be: cost 0
                "cost_per_million_output_tokens": 0.0,
            },
            {
                "name": "cloud",
                "type": "openai_compatible",
                "base_url": paid.base_url,
                "model_name": "cloud-translator",
                "prompt_builder_type": "translation",
                "priority": 2,
                # A premium model's prices and a small daily budget, so the tour reaches it.
                "cost_per_million_input_tokens": 150.0,
                "cost_per_million_output_tokens": 600.0,
                "max_spend_usd": 0.06,
                "spend_reset_period": "daily",
            },
        ],
        "retry_delay_ms": 50,
    }


TOUR_TEXTS = (
    "Good morning",
    "Where is the station?",
    "Thank you very much",
    "The bill, please",
    "See you tomorrow",
    "How much does it cost?",
    "I would like a coffee",
)


async def tour() -> None:
    async with (
        FakeProviderServer(reply="Bonjour (from the free local model)") as free,
        FakeProviderServer(reply="Bonjour (from the paid cloud model)") as paid,
        open_service(demo_settings(free, paid)) as service,
    ):
        print("1. The free local backend is up: it translates everything, for $0.")
        await show(service, TOUR_TEXTS[:2])

        await free.aclose()  # the local server goes away
        print("\n2. The local backend is down: the paid one answers until the budget is spent.")
        await show(service, TOUR_TEXTS[2:], concurrency=1)

        cloud = service.get_statistics().backends["cloud"]
        print(
            f"\ncloud spent ${cloud.budget_spent_usd or 0:.6f} of ${cloud.budget_limit_usd} "
            f"today (resets {cloud.budget_period_end:%Y-%m-%d %H:%M} UTC) "
            f"in {paid.counts[None]} calls: none was made past the budget."
        )


async def show(service: LlmService, texts: Sequence[str], concurrency: int = 4) -> None:
    results = await translate_batch(service, texts, target="French", concurrency=concurrency)
    for text, result in zip(texts, results, strict=True):
        print("  ", describe(text, result))


async def translate_with(config: str, texts: Sequence[str], target: str, source: str | None) -> int:
    async with open_service(config) as service:
        configs = [backend.config for backend in service.backends]
        if plain := [c.name for c in configs if c.prompt_builder_type != "translation"]:
            print(f"set prompt_builder_type = 'translation' on backends {', '.join(plain)}")
            return 2
        results = await translate_batch(service, texts, target=target, source=source)
    for text, result in zip(texts, results, strict=True):
        print(describe(text, result))
    return 0 if all(isinstance(result, LlmResponse) for result in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Translate with free backends first.")
    parser.add_argument("--config", help="settings file (default: a tour on local fakes)")
    parser.add_argument("--target", default="French", help="target language")
    parser.add_argument("--source", help="source language (default: detected)")
    parser.add_argument("texts", nargs="*", help="texts to translate (with --config)")
    args = parser.parse_args(argv)
    if args.config is None:
        asyncio.run(tour())
        return 0
    if not args.texts:
        parser.error("give the texts to translate")
    return asyncio.run(translate_with(args.config, args.texts, args.target, args.source))


if __name__ == "__main__":
    raise SystemExit(main())
