"""LlmService: failover order, retries, deadlines, streaming failover, statistics."""

from __future__ import annotations

import asyncio
import random

import pytest

from llmbackend.backends.base import Capability
from llmbackend.errors import (
    AllBackendsFailedError,
    AuthenticationError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    ContentFilteredError,
    ContextLengthExceededError,
    RateLimitedError,
    StreamInterruptedError,
)
from llmbackend.models import (
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    FinishEvent,
    LlmRequest,
    TextDelta,
    UsageEvent,
)
from llmbackend.service import LlmService
from llmbackend.settings import LlmBackendConfig, LlmSettings
from llmbackend.testing import FakeBackend, FakeReply


class ChatOnlyBackend(FakeBackend):
    capabilities = frozenset({Capability.CHAT})


HELLO = ChatRequest(messages=[ChatMessage.user("hello")])


def fake(name: str, *, priority: int = 100, enabled: bool = True, **kwargs: object) -> FakeBackend:
    config = LlmBackendConfig(
        name=name,
        custom_backend_type="fake",
        priority=priority,
        enabled=enabled,
        timeout_seconds=kwargs.pop("timeout_seconds", 5.0),  # type: ignore[arg-type]
        max_retries=kwargs.pop("max_retries", None),  # type: ignore[arg-type]
    )
    return FakeBackend(config, **kwargs)  # type: ignore[arg-type]


class RecordingSleep:
    """Records requested backoff delays instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_service(*backends: FakeBackend, **settings: object) -> tuple[LlmService, RecordingSleep]:
    sleep = RecordingSleep()
    service = LlmService(
        LlmSettings(**settings),  # type: ignore[arg-type]
        list(backends),
        sleep=sleep,
        rng=random.Random(7),
    )
    return service, sleep


async def test_failover_follows_priority_then_declaration_order() -> None:
    """Lower priority is tried first; equal priorities keep their declared order."""
    late, first, second = fake("late", priority=200), fake("first", priority=1), fake("second")
    first.push(BackendUnavailableError("down", backend="first"))
    service, _ = make_service(late, first, second, max_retries=0)

    response = await service.chat(HELLO)

    assert response.backend == "second"
    assert [b.name for b in service.backends] == ["first", "second", "late"]
    assert (first.calls, second.calls, late.calls) == (1, 1, 0)
    assert service.get_statistics().failovers == 1


async def test_retryable_failure_is_retried_on_the_same_backend_with_backoff() -> None:
    """A 5xx-style failure is retried up to max_retries, with exponential delays."""
    primary, backup = fake("primary"), fake("backup")
    primary.push(BackendUnavailableError("503", backend="primary"), BackendUnavailableError("503"))
    service, sleep = make_service(primary, backup, max_retries=3, retry_delay_ms=100)

    response = await service.chat(HELLO)

    assert response.backend == "primary"
    assert primary.calls == 3
    assert backup.calls == 0
    assert len(sleep.delays) == 2
    # Jittered between half and the full exponential value: 0.1 s, then 0.2 s.
    assert 0.05 <= sleep.delays[0] <= 0.1
    assert 0.1 <= sleep.delays[1] <= 0.2
    assert service.get_statistics().retries == 2


async def test_fixed_delay_when_exponential_backoff_is_off() -> None:
    """use_exponential_backoff=false waits retry_delay_ms every time."""
    primary = fake("primary")
    primary.push(*[BackendUnavailableError("503")] * 3)
    service, sleep = make_service(
        primary, max_retries=3, retry_delay_ms=250, use_exponential_backoff=False
    )

    await service.chat(HELLO)

    assert sleep.delays == [0.25, 0.25, 0.25]


async def test_retry_after_from_the_provider_wins_over_backoff() -> None:
    """A 429 with Retry-After waits exactly what the provider asked for."""
    primary = fake("primary")
    primary.push(RateLimitedError("slow down", retry_after=2.5))
    service, sleep = make_service(primary, max_retries=2, retry_delay_ms=10)

    response = await service.chat(HELLO)

    assert response.backend == "primary"
    assert sleep.delays == [2.5]


async def test_backend_max_retries_wins_over_global() -> None:
    """A backend's own max_retries overrides the global setting."""
    primary, backup = fake("primary", max_retries=0), fake("backup")
    primary.push(BackendUnavailableError("503"))
    service, sleep = make_service(primary, backup, max_retries=5)

    response = await service.chat(HELLO)

    assert response.backend == "backup"
    assert primary.calls == 1
    assert sleep.delays == []


async def test_wait_longer_than_the_deadline_fails_over_at_once() -> None:
    """If Retry-After would overrun the request deadline, the next backend serves instead."""
    primary, backup = fake("primary"), fake("backup")
    primary.push(RateLimitedError("later", retry_after=60))
    service, sleep = make_service(primary, backup, timeout_seconds=5, max_retries=3)

    response = await service.chat(HELLO)

    assert response.backend == "backup"
    assert sleep.delays == []
    assert primary.calls == 1


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationError("bad key", status=401),
        ContentFilteredError("refused", status=400),
    ],
)
async def test_caller_errors_are_final(error: Exception) -> None:
    """401 and content-filter refusals reach the caller as is: no retry, no failover."""
    primary, backup = fake("primary"), fake("backup")
    primary.push(error)
    service, sleep = make_service(primary, backup)

    with pytest.raises(type(error)) as raised:
        await service.chat(HELLO)

    assert raised.value is error
    assert (primary.calls, backup.calls) == (1, 0)
    assert sleep.delays == []
    assert service.get_statistics().failed_requests == 1


async def test_context_length_fails_over_without_retry() -> None:
    """Context length exceeded is not retried on the same backend but another may serve."""
    primary, backup = fake("primary"), fake("backup")
    primary.push(ContextLengthExceededError("too long", status=400))
    service, sleep = make_service(primary, backup, max_retries=3)

    response = await service.chat(HELLO)

    assert response.backend == "backup"
    assert primary.calls == 1
    assert sleep.delays == []


async def test_timeout_fails_over_without_retrying_the_silent_backend() -> None:
    """An attempt that times out is not retried: the next backend answers."""
    silent, backup = fake("silent", timeout_seconds=0.05), fake("backup")
    silent.push(FakeReply(delay=10))
    service, _ = make_service(silent, backup, max_retries=3)

    response = await service.chat(HELLO)

    assert response.backend == "backup"
    assert silent.calls == 1


async def test_total_deadline_bounds_all_attempts() -> None:
    """timeout_seconds bounds the whole request even when each attempt allows longer."""
    slow = fake("slow", timeout_seconds=30)
    slow.push(FakeReply(delay=30))
    service, _ = make_service(slow, timeout_seconds=0.05)

    with pytest.raises(AllBackendsFailedError) as raised:
        await service.chat(HELLO)

    assert [type(e) for e in raised.value.exceptions] == [BackendTimeoutError]


async def test_all_failed_groups_every_attempt_and_names_skipped_backends() -> None:
    """When nothing serves, the error holds each attempt and why others were skipped."""
    first, off = fake("first"), fake("off", enabled=False)
    first.push(*[BackendUnavailableError("503", backend="first")] * 2)
    service, _ = make_service(first, off, max_retries=1)

    with pytest.raises(AllBackendsFailedError) as raised:
        await service.chat(HELLO)

    error = raised.value
    assert isinstance(error, ExceptionGroup)
    assert len(error.exceptions) == 2
    assert error.skipped == {"off": "disabled"}
    assert "off: skipped (disabled)" in str(error)
    assert off.calls == 0


async def test_preferred_backend_is_tried_first() -> None:
    """preferred_backend moves that backend to the front of the failover order."""
    first, second = fake("first", priority=1), fake("second", priority=2)
    service, _ = make_service(first, second)

    response = await service.chat(
        ChatRequest(messages=[ChatMessage.user("hi")], preferred_backend="second")
    )

    assert response.backend == "second"
    assert first.calls == 0


async def test_unknown_preferred_backend_is_an_error_not_a_fallback() -> None:
    """Naming a backend that does not exist fails clearly instead of using another."""
    service, _ = make_service(fake("only"))

    with pytest.raises(ConfigurationError, match="unknown backend 'nope'; configured: only"):
        await service.chat(ChatRequest(messages=[ChatMessage.user("hi")], preferred_backend="nope"))
    with pytest.raises(ConfigurationError, match="configured: only; did you mean 'only'"):
        await service.chat(ChatRequest(messages=[ChatMessage.user("hi")], preferred_backend="Only"))


async def test_complete_sends_system_and_user_messages() -> None:
    """complete() is chat with the system prompt then one user message."""
    backend = fake("only")
    service, _ = make_service(backend)

    await service.complete(LlmRequest(prompt="2+2?", system_prompt="be brief", temperature=0.1))

    sent = backend.history[0]
    assert isinstance(sent, ChatRequest)
    assert [(m.role, m.content) for m in sent.messages] == [
        ("system", "be brief"),
        ("user", "2+2?"),
    ]
    assert sent.temperature == 0.1


async def test_embed_skips_backends_without_embeddings() -> None:
    """Embedding requests go to backends that support them; others are skipped, not failed."""
    chat_only = ChatOnlyBackend(LlmBackendConfig(name="chat_only", custom_backend_type="fake"))
    embedder = fake("embedder")
    service, _ = make_service(chat_only, embedder)

    response = await service.embed(EmbeddingRequest(inputs=["a", "b"]))

    assert response.backend == "embedder"
    assert len(response.embeddings) == 2
    assert chat_only.calls == 0


async def test_stream_fails_over_before_first_token() -> None:
    """A stream that fails before any content fails over transparently."""
    primary, backup = fake("primary", max_retries=0), fake("backup")
    primary.push(BackendUnavailableError("refused"))
    backup.push("hello there")
    service, _ = make_service(primary, backup)

    events = [event async for event in service.stream(HELLO)]

    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "hello there"
    assert isinstance(events[-1], FinishEvent)
    assert events[-1].backend == "backup"
    assert any(isinstance(e, UsageEvent) for e in events)


async def test_stream_cut_after_content_raises_with_partial_text() -> None:
    """A cut after content reached the caller raises StreamInterruptedError, never ends quietly."""
    primary, backup = fake("primary"), fake("backup")
    primary.push(
        FakeReply(text="one two three", fail_after_chunks=2, error=BackendUnavailableError("reset"))
    )
    service, _ = make_service(primary, backup)

    received: list[str] = []

    async def consume() -> None:
        async for event in service.stream(HELLO):
            if isinstance(event, TextDelta):
                received.append(event.text)  # noqa: PERF401  # must keep what came before the cut

    with pytest.raises(StreamInterruptedError) as raised:
        await consume()

    assert "".join(received) == "one two "
    assert raised.value.partial_text == "one two "
    assert backup.calls == 0


async def test_statistics_count_requests_and_backend_metrics() -> None:
    """get_statistics() reports service counters and per-backend counts and tokens."""
    primary, backup = fake("primary", max_retries=0), fake("backup")
    primary.push(BackendUnavailableError("503"))
    service, _ = make_service(primary, backup)

    await service.chat(HELLO)
    await service.chat(HELLO)

    stats = service.get_statistics()
    assert (stats.requests, stats.successful_requests, stats.failed_requests) == (2, 2, 0)
    assert stats.backends["primary"].failed_requests == 1
    assert stats.backends["primary"].successful_requests == 1
    assert stats.backends["primary"].last_error == "BackendUnavailableError: 503"
    assert stats.backends["backup"].successful_requests == 1
    assert stats.backends["backup"].prompt_tokens == 1


async def test_test_backends_checks_all_concurrently() -> None:
    """test_backends() returns a health result per backend, including unavailable ones."""
    up, down = fake("up"), fake("down")
    down.available = False
    service, _ = make_service(up, down)

    health = await service.test_backends()

    assert health["up"].available is True
    assert health["down"].available is False
    assert health["down"].error is not None
    assert "marked unavailable" in health["down"].error


async def test_cancelling_the_caller_cancels_the_attempt() -> None:
    """Cancelling a request cancels its in-flight attempt and leaves no task behind."""
    slow = fake("slow", timeout_seconds=60)
    slow.push(FakeReply(delay=60))
    service, _ = make_service(slow)
    before = asyncio.all_tasks()

    task = asyncio.create_task(service.chat(HELLO))
    await slow.request_received.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert asyncio.all_tasks() == before
    assert service.get_statistics().backends["slow"].failed_requests == 0


async def test_statistics_are_a_read_only_snapshot() -> None:
    """A snapshot cannot be changed and does not move with later traffic; it carries the
    last health problem and the success rate."""
    flaky = fake("flaky")
    flaky.push(BackendUnavailableError("down", backend="flaky"))
    service, _ = make_service(flaky, max_retries=1)
    await service.chat(HELLO)

    before = service.get_statistics()
    await service.chat(HELLO)

    with pytest.raises(TypeError):
        before.backends["other"] = before.backends["flaky"]  # type: ignore[index]
    stats = before.backends["flaky"]
    assert (stats.total_requests, stats.successful_requests) == (2, 1)
    assert stats.success_rate == 0.5
    assert stats.health_error == "BackendUnavailableError: [flaky] down"
    assert (stats.budget_spent_usd, stats.budget_limit_usd) == (None, None)
    assert service.get_statistics().backends["flaky"].total_requests == 3
