"""BaseLlmBackend: timing, metrics, cost, timeouts, stream integrity, capability errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

import pytest

from llmbackend._logging import LoggerFactory
from llmbackend.backends.base import ATTEMPT_DEADLINE, BaseLlmBackend, Capability
from llmbackend.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    NotSupportedError,
    StreamInterruptedError,
)
from llmbackend.models import (
    ChatMessage,
    ChatRequest,
    FinishReason,
    LlmRequest,
    LlmResponse,
    StreamEvent,
    TextDelta,
    ToolDefinition,
    Usage,
)
from llmbackend.settings import LlmBackendConfig
from llmbackend.testing import FakeBackend, FakeReply

HELLO = ChatRequest(messages=[ChatMessage.user("hello world")])


def config(**overrides: object) -> LlmBackendConfig:
    values: dict[str, object] = {"name": "b", "custom_backend_type": "fake", "timeout_seconds": 5.0}
    values.update(overrides)
    return LlmBackendConfig(**values)  # type: ignore[arg-type]


class MinimalBackend(BaseLlmBackend):
    """A subclass that implements only _chat: everything else must come from the base."""

    async def _chat(self, request: ChatRequest) -> LlmResponse:
        return LlmResponse(content="hi", backend="ignored", model="m", prompt_tokens=3)


class UnfinishedStream(FakeBackend):
    """Streams text and then simply stops, with no finish event."""

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        yield TextDelta(text="half an ans")


async def test_success_is_timed_priced_and_counted() -> None:
    """A successful call gets duration, cost at configured prices and updates the metrics."""
    backend = FakeBackend(
        config(cost_per_million_input_tokens=2.0, cost_per_million_output_tokens=10.0)
    )
    backend.push(FakeReply(text="a b c", prompt_tokens=1000, completion_tokens=500))

    response = await backend.chat(HELLO)

    assert response.backend == "b"
    assert response.cost_usd == pytest.approx(0.002 + 0.005)
    assert response.duration_ms > 0
    stats = backend.statistics()
    assert (stats.total_requests, stats.successful_requests, stats.failed_requests) == (1, 1, 0)
    assert (stats.prompt_tokens, stats.completion_tokens, stats.total_tokens) == (1000, 500, 1500)
    assert stats.total_cost_usd == pytest.approx(0.007)
    assert stats.last_success_at is not None
    assert stats.last_used_at == stats.last_success_at


async def test_cost_is_unknown_without_prices() -> None:
    """A backend without prices reports cost as None, not 0."""
    response = await FakeBackend(config()).chat(HELLO)
    assert response.cost_usd is None


async def test_failures_count_consecutively_and_reset_on_success() -> None:
    """consecutive_failures grows with each failure, the last error is kept, success resets it."""
    backend = FakeBackend(config())
    backend.push(BackendUnavailableError("boom", backend="b"), BackendUnavailableError("again"))
    for _ in range(2):
        with pytest.raises(BackendUnavailableError):
            await backend.chat(HELLO)
    assert backend.statistics().consecutive_failures == 2
    assert backend.statistics().last_error == "BackendUnavailableError: again"
    assert backend.statistics().last_error_at is not None

    await backend.chat(HELLO)

    stats = backend.statistics()
    assert stats.consecutive_failures == 0
    assert stats.failed_requests == 2
    assert stats.success_rate == pytest.approx(1 / 3)


async def test_latency_percentiles() -> None:
    """p50 and p95 latencies come from recorded successful durations."""
    backend = FakeBackend(config())
    for ms in range(1, 101):
        backend.record_success(float(ms))
    stats = backend.statistics()
    assert stats.p50_latency_ms == pytest.approx(50.5)
    assert stats.p95_latency_ms == pytest.approx(95.05)
    assert stats.average_latency_ms == pytest.approx(50.5)


async def test_attempt_timeout_becomes_backend_timeout() -> None:
    """timeout_seconds bounds one call; the caller sees BackendTimeoutError."""
    backend = FakeBackend(config(timeout_seconds=0.01))
    backend.push(FakeReply(delay=5))
    with pytest.raises(BackendTimeoutError):
        await backend.chat(HELLO)
    assert backend.statistics().failed_requests == 1


async def test_a_shorter_caller_deadline_replaces_the_attempt_timer_not_a_longer_one() -> None:
    """Under a caller's deadline (ATTEMPT_DEADLINE, set by the service) the backend arms no
    timer of its own when the deadline comes first, and keeps its own when it is shorter;
    either way the call is bounded: a slow answer still ends as a timeout."""
    backend = FakeBackend(config(timeout_seconds=5.0))
    loop = asyncio.get_running_loop()
    assert backend._own_timeout() == 5.0  # no caller deadline
    token = ATTEMPT_DEADLINE.set(loop.time() + 1.0)
    try:
        assert backend._own_timeout() is None  # the caller's 1 s timer ends it first
        assert FakeBackend(config(timeout_seconds=0.5))._own_timeout() == 0.5
        backend.push(FakeReply(delay=5))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):  # the caller's timer, as the service arms it
                await backend.chat(HELLO)
    finally:
        ATTEMPT_DEADLINE.reset(token)


async def test_minimal_subclass_gets_complete_and_refuses_the_rest() -> None:
    """A subclass with only _chat supports complete(); streaming/embeddings are NotSupported."""
    backend = MinimalBackend(config())
    response = await backend.complete(LlmRequest(prompt="x"))
    assert response.content == "hi"
    assert response.backend == "b"
    with pytest.raises(NotSupportedError, match="does not support streaming"):
        [e async for e in backend.stream(HELLO)]
    with pytest.raises(NotSupportedError, match="does not support tools"):
        await backend.chat(
            ChatRequest(messages=[ChatMessage.user("x")], tools=[ToolDefinition(name="f")])
        )
    assert backend.statistics().failed_requests == 0


async def test_config_switches_off_streaming_and_tools() -> None:
    """enable_streaming / enable_function_calling false narrow the capabilities."""
    backend = FakeBackend(config(enable_streaming=False, enable_function_calling=False))
    assert not backend.supports(Capability.STREAMING)
    assert not backend.supports(Capability.TOOLS)
    assert backend.supports(Capability.CHAT)


async def test_stream_without_finish_is_interrupted_not_complete() -> None:
    """A stream that just stops raises StreamInterruptedError with the partial text."""
    backend = UnfinishedStream(config())
    seen: list[StreamEvent] = []

    async def consume() -> None:
        async for event in backend.stream(HELLO):
            seen.append(event)  # noqa: PERF401  # keep what arrived before the cut

    with pytest.raises(StreamInterruptedError) as raised:
        await consume()
    assert raised.value.partial_text == "half an ans"
    assert seen == [TextDelta(text="half an ans")]
    assert backend.statistics().failed_requests == 1


async def test_stream_failure_after_content_is_an_interruption() -> None:
    """A transport failure after text was delivered is reported as StreamInterruptedError."""
    backend = FakeBackend(config())
    backend.push(
        FakeReply(text="a b c", fail_after_chunks=1, error=BackendUnavailableError("reset"))
    )
    with pytest.raises(StreamInterruptedError) as raised:
        [e async for e in backend.stream(HELLO)]
    assert raised.value.partial_text == "a "
    assert isinstance(raised.value.__cause__, BackendUnavailableError)


async def test_complete_stream_records_usage() -> None:
    """A finished stream counts as a success with the usage the provider reported."""
    backend = FakeBackend(config())
    backend.push(FakeReply(text="one two", prompt_tokens=4, completion_tokens=2))
    events = [e async for e in backend.stream(HELLO)]
    assert events[-1].reason is FinishReason.STOP  # type: ignore[union-attr]
    stats = backend.statistics()
    assert (stats.successful_requests, stats.total_tokens) == (1, 6)


async def test_content_is_logged_only_when_enabled(caplog: pytest.LogCaptureFixture) -> None:
    """Prompts and answers stay out of logs unless log_prompts / log_responses are on."""
    caplog.set_level(logging.DEBUG, logger="llmbackend.backend")
    quiet = FakeBackend(config(), default_reply="secret answer")
    await quiet.chat(ChatRequest(messages=[ChatMessage.user("private prompt")]))
    loud = FakeBackend(
        config(name="loud"),
        default_reply="secret answer",
        logger_factory=LoggerFactory(log_prompts=True, log_responses=True),
    )
    await loud.chat(ChatRequest(messages=[ChatMessage.user("private prompt")]))

    quiet_records = [r.getMessage() for r in caplog.records if "backend='b'" in r.getMessage()]
    loud_records = [r.getMessage() for r in caplog.records if "backend='loud'" in r.getMessage()]
    assert quiet_records
    assert loud_records
    assert not any("private prompt" in m or "secret answer" in m for m in quiet_records)
    assert any("private prompt" in m and "secret answer" in m for m in loud_records)


def test_api_key_is_not_in_repr() -> None:
    """Neither the config's nor the backend's repr shows the API key."""
    backend = FakeBackend(config(api_key="sk-very-secret"))
    assert "sk-very-secret" not in repr(backend)
    assert "sk-very-secret" not in repr(backend.config)


def test_cached_input_tokens_use_their_own_price() -> None:
    """With a cached-input price, cached prompt tokens are charged at it; without, at the
    input price."""
    usage = Usage.of(1000, 100, cached=600)
    plain = FakeBackend(
        config(cost_per_million_input_tokens=10.0, cost_per_million_output_tokens=20.0)
    )
    discounted = FakeBackend(
        config(
            cost_per_million_input_tokens=10.0,
            cost_per_million_output_tokens=20.0,
            cost_per_million_cached_input_tokens=1.0,
        )
    )
    assert plain.cost_of(usage) == pytest.approx((1000 * 10 + 100 * 20) / 1e6)
    assert discounted.cost_of(usage) == pytest.approx((400 * 10 + 600 * 1 + 100 * 20) / 1e6)
