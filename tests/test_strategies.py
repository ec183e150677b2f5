"""Selection strategies through the service: who is tried, in which order."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from llmbackend.errors import (
    AllBackendsFailedError,
    BackendUnavailableError,
    ConfigurationError,
)
from llmbackend.models import ChatMessage, ChatRequest
from llmbackend.service import LlmService
from llmbackend.settings import LlmBackendConfig, LlmSettings, SelectionStrategy
from llmbackend.testing import FakeBackend, FakeReply


def fake(name: str, **config: object) -> FakeBackend:
    values: dict[str, object] = {"name": name, "custom_backend_type": "fake", "timeout_seconds": 5}
    values.update(config)
    return FakeBackend(LlmBackendConfig(**values))  # type: ignore[arg-type]


def service(*backends: FakeBackend, **settings: object) -> LlmService:
    async def no_sleep(_delay: float) -> None:
        return None

    return LlmService(
        LlmSettings(**settings),  # type: ignore[arg-type]
        list(backends),
        sleep=no_sleep,
        rng=random.Random(3),
    )


def ask(**overrides: object) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage.user("hi")], **overrides)  # type: ignore[arg-type]


async def test_round_robin_rotates_the_first_backend() -> None:
    """Each request starts at the next backend in turn."""
    a, b, c = fake("a"), fake("b"), fake("c")
    svc = service(a, b, c, selection_strategy="round_robin")
    served = [(await svc.chat(ask())).backend for _ in range(6)]
    assert served == ["a", "b", "c", "a", "b", "c"]


async def test_round_robin_still_fails_over() -> None:
    """When the backend whose turn it is fails, the next one serves."""
    a, b = fake("a", max_retries=0), fake("b")
    a.push(BackendUnavailableError("down"))
    svc = service(a, b, selection_strategy="round_robin")
    assert (await svc.chat(ask())).backend == "b"


async def test_lowest_latency_measures_untried_first_then_prefers_fastest() -> None:
    """Untried backends are tried first so they get measured; then the fastest wins."""
    slow, quick = fake("slow", priority=1), fake("quick", priority=2)
    slow.default_reply = FakeReply(text="slow", delay=0.03)
    svc = service(slow, quick, selection_strategy="lowest_latency")
    first = (await svc.chat(ask())).backend  # both untried: priority order
    second = (await svc.chat(ask())).backend  # quick still untried
    later = [(await svc.chat(ask())).backend for _ in range(3)]
    assert (first, second) == ("slow", "quick")
    assert later == ["quick"] * 3
    stats = svc.get_statistics().backends
    assert stats["slow"].latency_estimate_ms is not None
    assert stats["quick"].latency_estimate_ms is not None
    assert stats["quick"].latency_estimate_ms < stats["slow"].latency_estimate_ms


async def test_random_follows_weights() -> None:
    """A backend with nine times the weight serves roughly nine times as often."""
    heavy, light = fake("heavy", weight=9), fake("light", weight=1)
    svc = service(heavy, light, selection_strategy="random")
    served = Counter([(await svc.chat(ask())).backend for _ in range(400)])
    assert 320 <= served["heavy"] <= 390


async def test_specific_uses_only_the_named_backend() -> None:
    """specific sends to preferred_backend only; its failure is not rescued by others."""
    a, b = fake("a", max_retries=0), fake("b")
    b.push(BackendUnavailableError("down"))
    svc = service(a, b, selection_strategy="specific", max_retries=0)
    with pytest.raises(AllBackendsFailedError) as raised:
        await svc.chat(ask(preferred_backend="b"))
    assert a.calls == 0
    assert raised.value.skipped == {"a": "not selected (strategy 'specific')"}


async def test_specific_without_a_name_uses_the_first_by_priority() -> None:
    """With no preferred_backend, specific means the best-priority backend."""
    late, early = fake("late", priority=5), fake("early", priority=1)
    svc = service(late, early, selection_strategy="specific")
    assert (await svc.chat(ask())).backend == "early"


async def test_strategy_can_be_overridden_per_request() -> None:
    """A request's selection_strategy wins over the settings."""
    a, b = fake("a"), fake("b")
    svc = service(a, b, selection_strategy="failover")
    served = [
        (await svc.chat(ask(selection_strategy=SelectionStrategy.ROUND_ROBIN))).backend
        for _ in range(2)
    ]
    assert served == ["a", "b"]


async def test_unknown_preferred_backend_fails_under_every_strategy() -> None:
    """An unknown preferred_backend is a ConfigurationError, never a silent fallback."""
    svc = service(fake("a"))
    for strategy in SelectionStrategy:
        with pytest.raises(ConfigurationError, match="unknown backend 'zz'"):
            await svc.chat(ask(preferred_backend="zz", selection_strategy=strategy))


async def test_simultaneous_fastest_returns_all_results() -> None:
    """All backends run at once; the fastest success is primary, the rest are alternatives."""
    slow, fast, broken = fake("slow", priority=1), fake("fast", priority=2), fake("broken")
    slow.default_reply = FakeReply(text="slow answer", delay=0.05)
    fast.default_reply = "fast answer"
    broken.default_reply = BackendUnavailableError("down", backend="broken")
    svc = service(slow, fast, broken, selection_strategy="simultaneous", max_retries=0)

    response = await svc.chat(ask())

    assert response.backend == "fast"
    assert [r.backend for r in response.alternative_responses] == ["slow"]
    assert [type(e) for e in response.failed_alternatives] == [BackendUnavailableError]
    assert (slow.calls, fast.calls, broken.calls) == (1, 1, 1)


async def test_simultaneous_priority_prefers_the_best_priority_success() -> None:
    """simultaneous_primary=priority picks the best-priority success even if slower."""
    slow, fast = fake("slow", priority=1), fake("fast", priority=2)
    slow.default_reply = FakeReply(text="slow answer", delay=0.02)
    svc = service(slow, fast, selection_strategy="simultaneous", simultaneous_primary="priority")
    response = await svc.chat(ask())
    assert response.backend == "slow"
    assert [r.backend for r in response.alternative_responses] == ["fast"]


async def test_simultaneous_deadline_cancels_stragglers_and_leaves_no_task() -> None:
    """The request deadline bounds the fan-out; unfinished branches are cancelled."""
    hung, quick = fake("hung", timeout_seconds=60), fake("quick")
    hung.default_reply = FakeReply(delay=60)
    svc = service(hung, quick, selection_strategy="simultaneous")
    before = asyncio.all_tasks()

    response = await svc.chat(ask(timeout_seconds=0.1))

    assert response.backend == "quick"
    assert [type(e).__name__ for e in response.failed_alternatives] == ["BackendTimeoutError"]
    assert asyncio.all_tasks() == before
