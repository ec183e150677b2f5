"""Service resilience: breakers, health, stream recovery modes, stream timeouts, concurrency."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from llmbackend.config import load_settings
from llmbackend.errors import (
    AllBackendsFailedError,
    BackendTimeoutError,
    BackendUnavailableError,
    ContentFilteredError,
    ContextLengthExceededError,
    InvalidRequestError,
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
from llmbackend.settings import LlmBackendConfig
from llmbackend.testing import FakeBackend, FakeReply

HELLO = ChatRequest(messages=[ChatMessage.user("hello")])
RESET = BackendUnavailableError("connection reset")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake(name: str, **config: Any) -> FakeBackend:
    values: dict[str, Any] = {"name": name, "custom_backend_type": "fake", "timeout_seconds": 5}
    values.update(config)
    return FakeBackend(LlmBackendConfig(**values))


def service(*backends: FakeBackend, clock: Clock | None = None, **settings: Any) -> LlmService:
    async def no_sleep(_delay: float) -> None:
        return None

    return LlmService(
        load_settings(settings),
        list(backends),
        sleep=no_sleep,
        rng=random.Random(1),
        clock=clock or Clock(),
    )


BREAKER = {
    "failure_threshold": 2,
    "minimum_throughput": 2,
    "duration_of_break_seconds": 30,
    "sampling_duration_seconds": 60,
}


async def collect(svc: LlmService, request: ChatRequest = HELLO) -> list[StreamEvent]:
    return [event async for event in svc.stream(request)]


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# --- circuit breaker through the service -------------------------------------------------


async def test_single_backend_breaker_opens_and_then_fails_fast() -> None:
    """Even with one backend, an open breaker stops calls from reaching it."""
    clock = Clock()
    only = fake("only")
    only.default_reply = RESET
    svc = service(only, clock=clock, max_retries=0, circuit_breaker=BREAKER)
    for _ in range(2):
        with pytest.raises(AllBackendsFailedError):
            await svc.chat(HELLO)
    assert svc.get_statistics().backends["only"].circuit_state == "open"

    with pytest.raises(AllBackendsFailedError) as raised:
        await svc.chat(HELLO)

    assert only.calls == 2
    assert raised.value.skipped == {"only": "circuit open (retry in 30.0 s)"}


async def test_flapping_primary_serves_from_fallback_and_returns_after_recovery() -> None:
    """While the primary's breaker is open the fallback serves; after the break a probe
    finds the primary healthy again and traffic returns to it."""
    clock = Clock()
    primary, fallback = fake("primary", priority=1), fake("fallback", priority=2)
    primary.default_reply = RESET
    svc = service(primary, fallback, clock=clock, max_retries=0, circuit_breaker=BREAKER)

    served = [(await svc.chat(HELLO)).backend for _ in range(5)]
    assert served == ["fallback"] * 5
    assert primary.calls == 2  # then the breaker kept it out

    primary.default_reply = "back"
    clock.now += 30
    assert svc.breaker("primary").state.value == "half_open"
    served = [(await svc.chat(HELLO)).backend for _ in range(3)]
    assert served == ["primary"] * 3
    assert svc.get_statistics().backends["primary"].circuit_state == "closed"


async def test_caller_errors_do_not_open_the_breaker() -> None:
    """Repeated 400s and content-filter refusals leave the breaker closed."""
    only = fake("only")
    only.push(*[InvalidRequestError("bad", status=400)] * 3)
    svc = service(only, max_retries=0, circuit_breaker=BREAKER)
    for _ in range(3):
        with pytest.raises(InvalidRequestError):
            await svc.chat(HELLO)
    assert svc.breaker("only").state.value == "closed"


# --- health ------------------------------------------------------------------------------


async def test_passive_failures_mark_unhealthy_and_checks_bring_it_back() -> None:
    """unhealthy_threshold failed calls mark a backend unhealthy (skipped); healthy_threshold
    successful checks restore it."""
    primary, fallback = fake("primary"), fake("fallback")
    primary.push(RESET, RESET)
    svc = service(
        primary,
        fallback,
        max_retries=0,
        circuit_breaker={"enabled": False},
        health_check={"unhealthy_threshold": 2, "healthy_threshold": 2},
    )
    for _ in range(2):
        assert (await svc.chat(HELLO)).backend == "fallback"
    assert svc.get_statistics().backends["primary"].healthy is False

    assert (await svc.chat(HELLO)).backend == "fallback"
    assert primary.calls == 2  # skipped while unhealthy

    await svc.test_backends()
    assert svc.get_statistics().backends["primary"].healthy is False  # one success so far
    await svc.test_backends()
    assert svc.get_statistics().backends["primary"].healthy is True
    assert (await svc.chat(HELLO)).backend == "primary"


async def test_disabled_health_checks_never_mark_unhealthy() -> None:
    """With health_check.enabled false, failures never take a backend out of rotation."""
    primary = fake("primary")
    primary.push(*[RESET] * 5)
    svc = service(
        primary,
        fake("fallback"),
        max_retries=0,
        circuit_breaker={"enabled": False},
        health_check={"enabled": False, "unhealthy_threshold": 1},
    )
    for _ in range(5):
        await svc.chat(HELLO)
    assert primary.calls == 5
    assert svc.get_statistics().backends["primary"].healthy is True


async def test_background_checks_start_and_stop_with_the_service() -> None:
    """start() runs periodic checks; aclose() stops them and leaves no task behind."""
    down = fake("down")
    down.available = False
    second_wait = asyncio.Event()
    waits = 0

    async def sleep(_delay: float) -> None:
        nonlocal waits
        waits += 1
        if waits == 2:  # the first periodic check has completed
            second_wait.set()
        await asyncio.sleep(0)

    settings = load_settings({"health_check": {"unhealthy_threshold": 1}})
    svc = LlmService(settings, [down], sleep=sleep)
    before = asyncio.all_tasks()
    async with svc:
        await second_wait.wait()
        assert svc.get_statistics().backends["down"].healthy is False
        assert svc.health.state("down").last_checked_at is not None
    assert asyncio.all_tasks() == before


# --- failure classes -------------------------------------------------------------------


async def test_context_length_prefers_a_larger_window() -> None:
    """After a context-length error, the backend with the larger max_input_tokens goes next."""
    small, medium, large = (
        fake("small", priority=1, max_input_tokens=4000),
        fake("medium", priority=2, max_input_tokens=8000),
        fake("large", priority=3, max_input_tokens=128000),
    )
    small.push(ContextLengthExceededError("too long", status=400))
    svc = service(small, medium, large)
    assert (await svc.chat(HELLO)).backend == "large"
    assert medium.calls == 0


async def test_content_filter_failover_is_a_setting() -> None:
    """failover_on_content_filter lets another backend answer a refused prompt."""
    strict, lenient = fake("strict"), fake("lenient")
    strict.push(ContentFilteredError("refused", status=400))
    svc = service(strict, lenient, failover_on_content_filter=True)
    assert (await svc.chat(HELLO)).backend == "lenient"


# --- streaming recovery --------------------------------------------------------------------


def cut_after(chunks: int, text: str = "one two three four") -> FakeReply:
    return FakeReply(text=text, fail_after_chunks=chunks, error=RESET)


async def test_restart_mode_announces_and_streams_the_whole_answer_again() -> None:
    """restart: a StreamRestarted event (discard what was shown) then the full answer."""
    primary, backup = fake("primary"), fake("backup")
    primary.push(cut_after(2))
    backup.push("alpha beta")
    svc = service(primary, backup, stream_recovery="restart")

    events = await collect(svc)

    restarts = [e for e in events if isinstance(e, StreamRestarted)]
    assert restarts == [
        StreamRestarted(
            failed_backend="primary",
            next_backend="backup",
            discard_chars=len("one two "),
            error=restarts[0].error,
        )
    ]
    after = events[events.index(restarts[0]) + 1 :]
    assert text_of(after) == "alpha beta"
    assert isinstance(events[-1], FinishEvent)
    assert events[-1].backend == "backup"
    assert backup.history[0] == HELLO  # the original request, no prefill


async def test_continue_mode_prefills_the_partial_text() -> None:
    """continue: the next backend gets the partial answer as an assistant prefix."""
    primary, backup = fake("primary"), fake("backup")
    primary.push(cut_after(2))
    backup.push("three four")
    svc = service(primary, backup, stream_recovery="continue")

    events = await collect(svc)

    sent = backup.history[0]
    assert isinstance(sent, ChatRequest)
    assert sent.messages[-1] == ChatMessage.assistant("one two")
    (restart,) = [e for e in events if isinstance(e, StreamRestarted)]
    assert restart.discard_chars == 0
    assert text_of(events) == "one two three four"


async def test_continue_falls_back_to_restart_when_prefill_is_refused() -> None:
    """A backend that rejects the prefill restarts the answer instead."""
    primary, backup = fake("primary"), fake("backup")
    primary.push(cut_after(1))
    backup.push(InvalidRequestError("assistant prefill is not supported", status=400), "full")
    svc = service(primary, backup, stream_recovery="continue")

    events = await collect(svc)

    (restart,) = [e for e in events if isinstance(e, StreamRestarted)]
    assert restart.discard_chars == len("one ")
    assert text_of(events[events.index(restart) :]) == "full"
    assert backup.history[1] == HELLO


async def test_when_recovery_fails_the_caller_gets_the_real_cut() -> None:
    """If every recovery attempt fails, the error is the original cut with its partial text."""
    primary, backup = fake("primary"), fake("backup", max_retries=0)
    primary.push(cut_after(2))
    backup.push(
        InvalidRequestError("no prefill", status=400), InvalidRequestError("bad", status=400)
    )
    svc = service(primary, backup, stream_recovery="continue")

    with pytest.raises(StreamInterruptedError) as raised:
        await collect(svc)

    assert raised.value.partial_text == "one two "
    assert raised.value.backend == "primary"


async def test_raise_mode_keeps_partial_text() -> None:
    """raise: StreamInterruptedError with the text shown; no other backend is asked."""
    primary, backup = fake("primary"), fake("backup")
    primary.push(cut_after(3))
    svc = service(primary, backup, stream_recovery="raise")
    with pytest.raises(StreamInterruptedError) as raised:
        await collect(svc)
    assert raised.value.partial_text == "one two three "
    assert backup.calls == 0
    assert svc.get_statistics().failed_requests == 1


async def test_stream_recovery_can_be_set_per_request() -> None:
    """A request's stream_recovery wins over the settings."""
    primary, backup = fake("primary"), fake("backup")
    primary.push(cut_after(1))
    svc = service(primary, backup, stream_recovery="raise")
    events = await collect(svc, ChatRequest(messages=HELLO.messages, stream_recovery="restart"))
    assert any(isinstance(e, StreamRestarted) for e in events)


async def test_first_token_timeout_fails_over_without_waiting_for_the_deadline() -> None:
    """A backend slow to send its first token is abandoned after first_token_timeout."""
    slow, quick = fake("slow", first_token_timeout_seconds=0.05), fake("quick")
    slow.push(FakeReply(delay=30))
    svc = service(slow, quick, timeout_seconds=60)

    events = await collect(svc)

    assert text_of(events) == "ok"
    assert slow.statistics().last_error is not None
    assert "waiting for the first event" in slow.statistics().last_error


class StallingBackend(FakeBackend):
    """Sends one chunk and then goes silent."""

    async def _stream(self, request: ChatRequest):  # type: ignore[no-untyped-def,override]
        yield TextDelta(text="partial ")
        await asyncio.sleep(3600)


async def test_stalled_stream_is_cut_by_the_idle_timeout() -> None:
    """A stream silent for stream_idle_timeout is reported as interrupted, never as done."""
    stalling = StallingBackend(
        LlmBackendConfig(name="stall", custom_backend_type="fake", stream_idle_timeout_seconds=0.05)
    )
    svc = service(stalling)
    with pytest.raises(StreamInterruptedError) as raised:
        await collect(svc)
    assert raised.value.partial_text == "partial "
    assert isinstance(raised.value.__cause__, BackendTimeoutError)


# --- concurrency -------------------------------------------------------------------------


async def test_200_concurrent_requests_through_a_flapping_primary_lose_none() -> None:
    """Every one of 200 concurrent requests is answered while the primary flaps."""
    primary, fallback = fake("primary", priority=1), fake("fallback", priority=2)
    primary.push(*[RESET if n % 3 else FakeReply(text="p") for n in range(300)])
    svc = service(primary, fallback, max_retries=1, circuit_breaker=BREAKER)
    before = asyncio.all_tasks()

    answers = await asyncio.gather(*(svc.chat(HELLO) for _ in range(200)))

    assert len(answers) == 200
    assert {a.backend for a in answers} <= {"primary", "fallback"}
    stats = svc.get_statistics()
    assert (stats.requests, stats.successful_requests, stats.failed_requests) == (200, 200, 0)
    assert asyncio.all_tasks() == before
