"""The service with shared state: cache hits, budgets that fail over, SDK rate limits,
and state that survives a restart (SQLite)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from llmbackend import open_service
from llmbackend.errors import AllBackendsFailedError, BackendUnavailableError, RateLimitedError
from llmbackend.models import ChatMessage, ChatRequest, FinishEvent, TextDelta
from llmbackend.testing import FakeBackend, FakeBackendPlugin, FakeReply

HI = ChatRequest(messages=[ChatMessage.user("hi")], max_tokens=1000)
#: 1000 input + 1000 output tokens at $1 per million each: $0.002 per call.
PRICED = {"cost_per_million_input_tokens": 1.0, "cost_per_million_output_tokens": 1.0}
COSTLY = FakeReply(text="answer", prompt_tokens=1000, completion_tokens=1000)


def fake(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "custom_backend_type": "fake", "timeout_seconds": 5, **extra}


def settings(*backends: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"backends": list(backends), "health_check": {"enabled": False}, **extra}


def script(service: Any, name: str) -> FakeBackend:
    backend = service.backend(name)
    assert isinstance(backend, FakeBackend)
    return backend


async def test_cache_serves_equal_requests_once_and_costs_nothing(tmp_path: Path) -> None:
    """An equal request is answered from the cache (flagged, free); a different one is not."""
    config = settings(fake("a", **PRICED), caching={"enabled": True})
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        backend = script(svc, "a")
        backend.default_reply = COSTLY
        first = await svc.chat(HI)
        second = await svc.chat(HI)
        other = await svc.chat(ChatRequest(messages=HI.messages, max_tokens=1000, temperature=0.1))
        stats = svc.get_statistics()

    assert (first.cached, second.cached, other.cached) == (False, True, False)
    assert second.content == first.content
    assert second.cost_usd == 0.0
    assert backend.calls == 2
    assert (stats.cache_hits, stats.cache_misses) == (1, 2)


async def test_cached_answer_replays_as_a_stream(tmp_path: Path) -> None:
    """stream() after an equal chat replays the cached answer without calling a backend,
    and its FinishEvent says it came from the cache."""
    config = settings(fake("a"), caching={"enabled": True})
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        script(svc, "a").default_reply = "cached words here"
        await svc.chat(HI)
        events = [e async for e in svc.stream(HI)]
        calls = script(svc, "a").calls

    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "cached words here"
    assert isinstance(events[-1], FinishEvent)
    assert events[-1].cached is True
    assert calls == 1


async def test_cache_opt_outs_and_errors_are_never_cached(tmp_path: Path) -> None:
    """cache_read/cache_write opt out per request; a failure is never stored."""
    config = settings(fake("a", max_retries=0), caching={"enabled": True})
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        backend = script(svc, "a")
        backend.push(BackendUnavailableError("down"))
        with pytest.raises(AllBackendsFailedError):
            await svc.chat(HI)
        await svc.chat(ChatRequest(messages=HI.messages, max_tokens=1000, cache_write=False))
        await svc.chat(HI)  # stored now
        fresh = await svc.chat(ChatRequest(messages=HI.messages, max_tokens=1000, cache_read=False))
        hit = await svc.chat(HI)

    assert backend.calls == 4
    assert fresh.cached is False
    assert hit.cached is True


async def test_exhausted_budget_fails_over_and_is_reported(tmp_path: Path) -> None:
    """Once its budget cannot cover the worst case, a backend is skipped for the next one;
    statistics show spend, limit and period end."""
    config = settings(
        fake("paid", priority=1, max_spend_usd=0.0045, spend_reset_period="daily", **PRICED),
        fake("free", priority=2),
    )
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        script(svc, "paid").default_reply = COSTLY
        served = [(await svc.chat(HI)).backend for _ in range(3)]
        stats = svc.get_statistics().backends["paid"]

    assert served == ["paid", "paid", "free"]
    assert stats.budget_spent_usd == pytest.approx(0.004)
    assert stats.budget_limit_usd == 0.0045
    assert stats.budget_period_end is not None


async def test_a_lone_exhausted_backend_names_the_budget_in_the_error(tmp_path: Path) -> None:
    """With nothing to fail over to, the final error says the backend was out of budget."""
    config = settings(fake("paid", max_spend_usd=0.0001, **PRICED))
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        with pytest.raises(AllBackendsFailedError) as raised:
            await svc.chat(HI)
        calls = script(svc, "paid").calls

    assert calls == 0
    assert raised.value.skipped["paid"].startswith("spend limit $0.0001 reached")


async def test_concurrent_callers_never_overspend(tmp_path: Path) -> None:
    """64 concurrent requests against a budget for a few: spend stays within the limit."""
    config = settings(
        fake("paid", priority=1, max_spend_usd=0.0105, **PRICED), fake("free", priority=2)
    )
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        script(svc, "paid").default_reply = FakeReply(
            text="x", prompt_tokens=1, completion_tokens=1000, delay=0.01
        )
        answers = await asyncio.gather(*(svc.chat(HI) for _ in range(64)))
        spent = svc.get_statistics().backends["paid"].budget_spent_usd

    paid = sum(1 for a in answers if a.backend == "paid")
    assert len(answers) == 64
    assert spent is not None
    assert spent <= 0.0105
    assert paid == pytest.approx(spent / 0.001001, abs=1)


async def test_full_queue_is_the_sdks_own_rate_limit(tmp_path: Path) -> None:
    """Beyond max_concurrent_requests plus the queue, the SDK refuses with its own error."""
    config = settings(
        fake("a"),
        rate_limit={
            "enabled": True,
            "max_concurrent_requests": 1,
            "queue_limit": 1,
            "queue_timeout_seconds": 5,
        },
    )
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        backend = script(svc, "a")
        backend.default_reply = FakeReply(delay=0.2)
        results = await asyncio.gather(*(svc.chat(HI) for _ in range(3)), return_exceptions=True)

    refused = [r for r in results if isinstance(r, RateLimitedError)]
    assert len(refused) == 1
    assert refused[0].source == "sdk"
    assert backend.calls == 2


async def test_spend_survives_a_restart_on_sqlite(tmp_path: Path) -> None:
    """Spend recorded in SQLite is still there when the service is opened again."""
    config = settings(
        fake("paid", priority=1, max_spend_usd=0.0045, **PRICED),
        fake("free", priority=2),
        caching={"provider": "sqlite", "connection_string": str(tmp_path / "state.db")},
    )
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        script(svc, "paid").default_reply = COSTLY
        first = [(await svc.chat(HI)).backend for _ in range(2)]
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        script(svc, "paid").default_reply = COSTLY
        after_restart = (await svc.chat(HI)).backend

    assert first == ["paid", "paid"]
    assert after_restart == "free"


async def test_a_backends_own_concurrency_limit_fails_over(tmp_path: Path) -> None:
    """A backend's own rate_limit admits one call at a time; the overflow goes elsewhere."""
    limited = fake(
        "a",
        priority=1,
        rate_limit={
            "enabled": True,
            "max_concurrent_requests": 1,
            "queue_limit": 1,
            "queue_timeout_seconds": 0.05,
        },
    )
    config = settings(limited, fake("b", priority=2))
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        script(svc, "a").default_reply = FakeReply(delay=0.3)
        answers = await asyncio.gather(*(svc.chat(HI) for _ in range(3)))

    assert sorted(a.backend for a in answers) == ["a", "b", "b"]


async def test_tokens_per_minute_sends_the_excess_elsewhere(tmp_path: Path) -> None:
    """tokens_per_minute admits a call on its estimate (input + max_tokens) and settles to
    the tokens really used; a call that would pass the limit waits, then fails over when
    the queue timeout ends."""
    limited = fake(
        "a",
        priority=1,
        tokens_per_minute=1500,
        rate_limit={"enabled": True, "max_requests": 1000, "queue_timeout_seconds": 0.05},
    )
    config = settings(limited, fake("b", priority=2))
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        script(svc, "a").default_reply = COSTLY  # uses 2,000 tokens
        served = [(await svc.chat(HI)).backend for _ in range(2)]

    assert served == ["a", "b"]
