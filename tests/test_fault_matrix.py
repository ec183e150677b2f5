"""Every strategy against every fault in the catalogue, over real HTTP on 127.0.0.1.

A broken primary and a healthy backup share one ``FakeProviderServer``. For each case the
tests check what the caller receives (content or the exact error type), how many attempts
each backend's server saw, that rescue from a silent backend is bounded by the attempt
timeout (not the request deadline), and that no task or connection is left behind.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from llmbackend.backends.anthropic import AnthropicBackend
from llmbackend.backends.base import BaseLlmBackend
from llmbackend.backends.openai import OpenAIBackend
from llmbackend.config import load_settings
from llmbackend.errors import (
    AllBackendsFailedError,
    ContentFilteredError,
    LlmBackendError,
    StreamInterruptedError,
)
from llmbackend.models import (
    ChatMessage,
    ChatRequest,
    FinishEvent,
    StreamEvent,
    StreamRestarted,
    TextDelta,
)
from llmbackend.service import LlmService
from llmbackend.settings import LlmBackendConfig, SelectionStrategy
from llmbackend.testing import Behavior, FakeProviderServer

HI = ChatRequest(messages=[ChatMessage.user("hi")])
#: One attempt's limit; the request deadline is far larger, so a bounded rescue shows.
ATTEMPT = 0.3
DEADLINE = 20.0
#: A rescue from a silent backend must come well before the deadline.
RESCUE_BOUND = 5.0

#: fault -> (who answers a chat under failover, attempts seen by primary and backup).
#: max_retries is 2, so a retryable fault costs the primary 3 attempts.
CHAT: dict[str, tuple[str | type[Exception], int, int]] = {
    "ok": ("primary", 1, 0),
    "error_429": ("backup", 3, 1),
    # Retry-After 30 s (an HTTP date) would overrun the 20 s deadline: fail over at once.
    "error_429_date": ("backup", 1, 1),
    "error_429_no_retry_after": ("backup", 3, 1),
    "error_500": ("backup", 3, 1),
    "error_500_once": ("primary", 2, 0),
    "error_503": ("backup", 3, 1),
    "error_529": ("backup", 3, 1),
    "connection_reset": ("backup", 3, 1),
    # Silence is not retried: one attempt, then the backup.
    "never_answer": ("backup", 1, 1),
    "slow_first_token": ("backup", 1, 1),
    "cut_stream": ("backup", 3, 1),
    "stream_stall": ("backup", 1, 1),
    "stream_error": ("backup", 3, 1),
    "malformed_chunk": ("backup", 3, 1),
    "missing_done": ("primary", 1, 0),
    "context_length": ("backup", 1, 1),
    "content_filter": (ContentFilteredError, 1, 0),
    "content_filter_error": (ContentFilteredError, 1, 0),
    "rejects_prefill": ("primary", 1, 0),
    "flapping": ("backup", 3, 1),
}
SILENT = {"never_answer", "slow_first_token", "stream_stall"}
#: Faults that break a stream after content reached the caller.
MID_STREAM = {"cut_stream", "stream_stall", "stream_error"}
STRATEGIES = [s.value for s in SelectionStrategy]


async def no_sleep(_delay: float) -> None:
    return None


@pytest.fixture
async def server() -> AsyncIterator[FakeProviderServer]:
    async with FakeProviderServer() as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


def build(
    server: FakeProviderServer,
    session: aiohttp.ClientSession,
    primary_model: str,
    *,
    backup_model: str = "ok",
    wire: str = "openai",
    clock: Callable[[], float] = time.monotonic,
    attempt: float = ATTEMPT,
    **settings: Any,
) -> LlmService:
    def backend(name: str, model: str, priority: int) -> BaseLlmBackend:
        config = LlmBackendConfig(
            name=name,
            type=wire if wire == "anthropic" else "openai_compatible",
            base_url=server.root_url_for(name) if wire == "anthropic" else server.url_for(name),
            model_name=model,
            priority=priority,
            # random: the primary is (all but certainly) drawn first, like the others.
            weight=1000.0 if name == "primary" else 0.001,
            timeout_seconds=attempt,
            first_token_timeout_seconds=attempt,
            stream_idle_timeout_seconds=attempt,
            max_retries=2,
        )
        cls = AnthropicBackend if wire == "anthropic" else OpenAIBackend
        return cls(config, session_factory=lambda: session)

    options: dict[str, Any] = {"timeout_seconds": DEADLINE, "health_check": {"enabled": False}}
    options.update(settings)
    return LlmService(
        load_settings(options),
        [backend("primary", primary_model, 1), backend("backup", backup_model, 2)],
        sleep=no_sleep,
        rng=random.Random(5),
        clock=clock,
    )


def client_tasks() -> set[asyncio.Task[Any]]:
    """Tasks of this process except the fake server's own connection handlers."""
    return {
        task
        for task in asyncio.all_tasks()
        if not getattr(task.get_coro(), "__qualname__", "").startswith("RequestHandler.")
    }


async def leak_free(
    session: aiohttp.ClientSession, call: Callable[[], Awaitable[Any]]
) -> tuple[Any, float]:
    """Run ``call``; assert it leaves no task and no checked-out connection behind."""
    before = client_tasks()
    started = time.monotonic()
    try:
        result = await call()
    except LlmBackendError as exc:
        result = exc
    elapsed = time.monotonic() - started
    assert client_tasks() <= before
    # aiohttp has no public counter of checked-out connections; this is the connector's own.
    assert not session.connector._acquired  # type: ignore[union-attr]
    return result, elapsed


def expected_chat(fault: str, strategy: str) -> tuple[str | type[Exception], int, int]:
    answer, primary, backup = CHAT[fault]
    if strategy == "specific" and answer == "backup":
        return AllBackendsFailedError, primary, 0
    return answer, primary, backup


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("fault", sorted(CHAT))
async def test_chat(
    server: FakeProviderServer, session: aiohttp.ClientSession, fault: str, strategy: str
) -> None:
    """A chat under ``strategy`` with a faulty primary gets the expected answer or error."""
    service = build(server, session, fault, selection_strategy=strategy)
    request = ChatRequest(messages=HI.messages, preferred_backend="primary")

    result, elapsed = await leak_free(session, lambda: service.chat(request))

    answer, primary_attempts, backup_attempts = expected_chat(fault, strategy)
    counts = server.counts
    if strategy == "simultaneous":
        # Both run at once; whoever succeeds first is primary, the other an alternative.
        assert counts["backup"] == 1
        assert counts["primary"] == primary_attempts
        assert not isinstance(result, Exception), result
        answered = {result.backend, *(r.backend for r in result.alternative_responses)}
        assert answered == ({"primary", "backup"} if answer == "primary" else {"backup"})
        if answer != "primary":
            (failure,) = result.failed_alternatives
            if isinstance(answer, type):
                assert isinstance(failure, answer)
    else:
        assert (counts["primary"], counts["backup"]) == (primary_attempts, backup_attempts)
        if isinstance(answer, type):
            assert isinstance(result, answer), result
        else:
            assert not isinstance(result, Exception), result
            assert result.backend == answer
            assert result.content == server.reply
    if fault in SILENT:
        assert elapsed < RESCUE_BOUND


def stream_outcome(events: list[StreamEvent]) -> tuple[str, FinishEvent | None, list[int]]:
    """What the user sees after applying restarts, the finish event, and the discards."""
    shown = ""
    discards = []
    for event in events:
        if isinstance(event, TextDelta):
            shown += event.text
        elif isinstance(event, StreamRestarted):
            discards.append(event.discard_chars)
            shown = shown[: len(shown) - event.discard_chars]
    finish = events[-1] if events and isinstance(events[-1], FinishEvent) else None
    return shown, finish, discards


async def collect(service: LlmService, request: ChatRequest = HI) -> list[StreamEvent]:
    return [event async for event in service.stream(request)]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("fault", sorted(CHAT))
async def test_stream_raise_mode(
    server: FakeProviderServer, session: aiohttp.ClientSession, fault: str, strategy: str
) -> None:
    """Before content, any fault fails over transparently; after it, raise mode raises
    StreamInterruptedError with the partial text. Nothing ends like a normal answer."""
    service = build(server, session, fault, selection_strategy=strategy)
    request = ChatRequest(messages=HI.messages, preferred_backend="primary")

    result, elapsed = await leak_free(session, lambda: collect(service, request))

    if fault in MID_STREAM:
        assert isinstance(result, StreamInterruptedError)
        assert result.partial_text
        assert server.reply.startswith(result.partial_text)
        assert (server.counts["primary"], server.counts["backup"]) == (1, 0)
        return
    answer, primary_attempts, backup_attempts = CHAT[fault]
    if strategy == "specific" and answer == "backup":
        answer, backup_attempts = AllBackendsFailedError, 0
    if fault == "malformed_chunk":
        # Streamed, one bad frame amid good ones is skipped and counted: the primary serves.
        answer, primary_attempts, backup_attempts = "primary", 1, 0
    assert (server.counts["primary"], server.counts["backup"]) == (
        primary_attempts,
        backup_attempts,
    )
    if isinstance(answer, type):
        assert isinstance(result, answer), result
        return
    assert not isinstance(result, Exception), result
    shown, finish, discards = stream_outcome(result)
    assert shown == server.reply
    assert finish is not None
    assert finish.backend == answer
    assert discards == []
    assert finish.malformed_events == (1 if fault == "malformed_chunk" else 0)
    if fault in SILENT:
        assert elapsed < RESCUE_BOUND


@pytest.mark.parametrize("fault", sorted(MID_STREAM))
@pytest.mark.parametrize("mode", ["restart", "continue"])
async def test_stream_recovery_after_a_cut(
    server: FakeProviderServer, session: aiohttp.ClientSession, fault: str, mode: str
) -> None:
    """restart (and continue on a backend without prefill) announces the restart, discards
    what was shown, and the user ends with exactly one whole answer from the backup."""
    service = build(server, session, fault, stream_recovery=mode)

    events, _ = await leak_free(session, lambda: collect(service))

    assert not isinstance(events, Exception), events
    shown, finish, discards = stream_outcome(events)
    assert shown == server.reply
    assert finish is not None
    assert finish.backend == "backup"
    assert len(discards) == 1
    assert discards[0] > 0
    # OpenAI-style backends cannot continue a prefix, so even `continue` restarts cleanly.
    assert server.requests_for("backup")[-1].json["messages"] == [{"role": "user", "content": "hi"}]


async def test_continue_mode_prefills_a_backend_that_supports_it(
    server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """On Anthropic-style backends, continue sends the partial text as an assistant prefix
    and announces a restart that discards nothing."""
    service = build(server, session, "cut_stream", wire="anthropic", stream_recovery="continue")

    events, _ = await leak_free(session, lambda: collect(service))

    assert not isinstance(events, Exception), events
    (restart,) = [e for e in events if isinstance(e, StreamRestarted)]
    assert restart.discard_chars == 0
    partial = "".join(e.text for e in events[: events.index(restart)] if isinstance(e, TextDelta))
    sent = server.requests_for("backup")[-1].json["messages"]
    assert sent[-1] == {"role": "assistant", "content": partial.rstrip()}
    assert isinstance(events[-1], FinishEvent)
    assert events[-1].backend == "backup"


async def test_continue_falls_back_to_restart_when_the_prefill_is_refused(
    server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """A backup that rejects the prefill is asked again without it; the user sees one
    clean answer."""
    service = build(
        server,
        session,
        "cut_stream",
        backup_model="rejects_prefill",
        wire="anthropic",
        stream_recovery="continue",
    )

    events, _ = await leak_free(session, lambda: collect(service))

    assert not isinstance(events, Exception), events
    shown, finish, discards = stream_outcome(events)
    assert shown == server.reply
    assert finish is not None
    assert finish.backend == "backup"
    assert discards[0] > 0
    assert server.counts["backup"] == 2


async def test_failed_recovery_reports_the_real_cut(
    server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """If the backup fails too, the caller gets the primary's cut, not the backup's error."""
    service = build(
        server, session, "cut_stream", backup_model="error_503", stream_recovery="restart"
    )

    result, _ = await leak_free(session, lambda: collect(service))

    assert isinstance(result, StreamInterruptedError)
    assert result.backend == "primary"
    assert result.partial_text


async def test_cancelling_a_request_to_a_silent_backend_returns_its_connection(
    server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """Cancelling the caller cancels the in-flight attempt and releases the connection."""
    service = build(server, session, "never_answer")
    before = client_tasks()
    task = asyncio.create_task(service.chat(HI))
    await server.wait_for_requests(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client_tasks() <= before
    assert not session.connector._acquired  # type: ignore[union-attr]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_breaker_serves_from_fallback_and_returns_to_the_recovered_primary(
    server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """A flapping primary (2 failures, then healthy): its breaker opens, the fallback
    serves, and after the break a probe finds the primary well and traffic returns."""
    clock = Clock()
    server.register("flaps_twice", Behavior.flapping(2))
    breaker = {"failure_threshold": 2, "minimum_throughput": 2, "duration_of_break_seconds": 10}
    service = build(server, session, "flaps_twice", clock=clock, circuit_breaker=breaker)

    first = [(await service.chat(HI)).backend for _ in range(3)]
    assert first == ["backup"] * 3
    assert service.breaker("primary").state.value == "open"
    seen_while_open = server.counts["primary"]

    clock.now += 10
    later = [(await service.chat(HI)).backend for _ in range(3)]

    assert later == ["primary"] * 3
    assert server.counts["primary"] == seen_while_open + 3
    assert service.get_statistics().backends["primary"].circuit_state == "closed"


async def test_200_concurrent_requests_through_a_flapping_primary_lose_none(
    server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """200 concurrent chats over HTTP while the primary flaps: every one is answered."""
    # 200 answers at once can take longer than one short attempt timeout on a busy machine;
    # this test is about losing none, not about timeouts.
    service = build(server, session, "flapping", attempt=DEADLINE)

    answers, _ = await leak_free(
        session, lambda: asyncio.gather(*(service.chat(HI) for _ in range(200)))
    )

    assert not isinstance(answers, Exception), answers
    assert len(answers) == 200
    assert all(a.content == server.reply for a in answers)
    stats = service.get_statistics()
    assert (stats.requests, stats.successful_requests, stats.failed_requests) == (200, 200, 0)
