"""The observer interface: what the service reports, in what order, and what it costs off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmbackend import open_service
from llmbackend._breaker import CircuitState
from llmbackend._observer import (
    NOOP_ATTEMPT,
    NOOP_OBSERVER,
    NOOP_REQUEST,
    AttemptObservation,
    CompositeObserver,
    Observer,
    RequestObservation,
    compose,
)
from llmbackend.backends.base import BaseLlmBackend
from llmbackend.errors import AllBackendsFailedError, BackendUnavailableError
from llmbackend.models import (
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishEvent,
    LlmResponse,
    Usage,
)
from llmbackend.service import LlmService
from llmbackend.settings import LlmBackendConfig, LlmSettings, TelemetrySettings
from llmbackend.testing import FakeBackend, FakeBackendPlugin, FakeReply

HELLO = ChatRequest(messages=[ChatMessage.user("hello")])
OFF = TelemetrySettings(enable_metrics=False, enable_tracing=False)


class Recorder(Observer):
    """Writes down every event as a tuple."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def request_started(
        self, operation: str, request: ChatRequest | EmbeddingRequest, correlation_id: str
    ) -> RequestObservation:
        self.events.append(("request", operation))
        return RecordedRequest(self.events)

    def breaker_changed(self, backend: str, old: CircuitState, new: CircuitState) -> None:
        self.events.append(("breaker", backend, new.value))

    def health_changed(self, backend: str, healthy: bool) -> None:
        self.events.append(("health", backend, healthy))

    def budget_changed(self, backend: str, spent_usd: float, limit_usd: float | None) -> None:
        self.events.append(("budget", backend, spent_usd, limit_usd))


class RecordedRequest(RequestObservation):
    def __init__(self, events: list[tuple[Any, ...]]) -> None:
        self.events = events

    def attempt_started(
        self,
        backend: BaseLlmBackend,
        attempt: int,
        retry_delay_s: float,
        circuit_state: CircuitState,
    ) -> AttemptObservation:
        self.events.append(("attempt", backend.name, attempt, retry_delay_s, circuit_state.value))
        return RecordedAttempt(self.events, backend.name)

    def skipped(self, backend: str, reason: str) -> None:
        self.events.append(("skipped", backend, reason))

    def fallback(self, from_backend: str | None, to_backend: str) -> None:
        self.events.append(("fallback", from_backend, to_backend))

    def retry_scheduled(self, backend: str, attempt: int, delay_s: float) -> None:
        self.events.append(("retry", backend, attempt, delay_s))

    def succeeded(self, backend: str, model: str | None) -> None:
        self.events.append(("request_succeeded", backend))

    def failed(self, error: BaseException) -> None:
        self.events.append(("request_failed", type(error).__name__))

    def cancelled(self) -> None:
        self.events.append(("request_cancelled",))


class RecordedAttempt(AttemptObservation):
    def __init__(self, events: list[tuple[Any, ...]], backend: str) -> None:
        self.events = events
        self.backend = backend

    def first_token(self) -> None:
        self.events.append(("first_token", self.backend))

    def succeeded(self, response: LlmResponse | EmbeddingResponse) -> None:
        self.events.append(("attempt_succeeded", self.backend))

    def stream_succeeded(
        self, finish: FinishEvent | None, usage: Usage | None, cost_usd: float | None
    ) -> None:
        reason = finish.reason.value if finish and finish.reason else None
        tokens = usage.total_tokens if usage else None
        self.events.append(("stream_succeeded", self.backend, reason, tokens))

    def failed(self, error: BaseException) -> None:
        self.events.append(("attempt_failed", self.backend, type(error).__name__))

    def cancelled(self) -> None:
        self.events.append(("attempt_cancelled", self.backend))


async def no_sleep(_delay: float) -> None:
    return None


def fake(name: str, **config: Any) -> FakeBackend:
    return FakeBackend(LlmBackendConfig(name=name, custom_backend_type="fake", **config))


async def test_the_service_reports_every_event_in_order() -> None:
    """Skip, attempts with numbers and delays, retry, breaker change, fallback, success,
    then a stream's first token and outcome: the observer hears all of it, in order."""
    a, b, off = fake("a", priority=1), fake("b", priority=2), fake("off", enabled=False)
    a.push(
        BackendUnavailableError("down", backend="a", retry_after=0.25),
        BackendUnavailableError("down", backend="a"),
    )
    recorder = Recorder()
    settings = LlmSettings(telemetry=OFF, max_retries=1)
    service = LlmService(settings, [a, b, off], sleep=no_sleep, observer=recorder)

    await service.chat(HELLO)
    _ = [event async for event in service.stream(HELLO)]

    assert recorder.events == [
        ("request", "chat"),
        ("skipped", "off", "disabled"),
        ("attempt", "a", 1, 0.0, "closed"),
        ("attempt_failed", "a", "BackendUnavailableError"),
        ("retry", "a", 1, 0.25),
        ("attempt", "a", 2, 0.25, "closed"),
        ("attempt_failed", "a", "BackendUnavailableError"),
        ("fallback", "a", "b"),
        ("attempt", "b", 3, 0.0, "closed"),
        ("attempt_succeeded", "b"),
        ("request_succeeded", "b"),
        ("request", "stream"),
        ("skipped", "off", "disabled"),
        ("attempt", "a", 1, 0.0, "closed"),
        ("first_token", "a"),
        ("stream_succeeded", "a", "stop", 2),
        ("request_succeeded", "a"),
    ]


async def test_breaker_health_and_budget_changes_are_reported(tmp_path: Path) -> None:
    """Through open_service(observers=...): the breaker opening, the backend turning
    unhealthy and healthy again, and budget reports reach the observer."""
    recorder = Recorder()
    settings = {
        "backends": [{"name": "a", "custom_backend_type": "fake"}],
        "max_retries": 0,
        "telemetry": {"enable_metrics": False},
        "circuit_breaker": {"failure_threshold": 1, "minimum_throughput": 1},
        "health_check": {"unhealthy_threshold": 1, "healthy_threshold": 1},
    }
    async with open_service(
        settings, plugins=[FakeBackendPlugin()], base_dir=tmp_path, observers=[recorder]
    ) as service:
        backend = service.backend("a")
        assert isinstance(backend, FakeBackend)
        backend.push(BackendUnavailableError("down", backend="a"))
        with pytest.raises(AllBackendsFailedError):
            await service.chat(HELLO)
        await service.test_backends()
        service.report_budget("a", 0.5, 2.0)

    assert [e for e in recorder.events if e[0] in {"breaker", "health", "budget"}] == [
        ("breaker", "a", "open"),
        ("health", "a", False),
        ("health", "a", True),
        ("budget", "a", 0.5, 2.0),
    ]


async def test_a_cancelled_stream_reader_ends_the_attempt_and_request_as_cancelled() -> None:
    """Walking away from a stream is neither a success nor a failure."""
    a = fake("a")
    a.push(FakeReply(text="one two three"))
    recorder = Recorder()
    service = LlmService(LlmSettings(telemetry=OFF), [a], observer=recorder)

    events = service.stream(HELLO)
    await anext(events)
    await events.aclose()

    assert recorder.events[-3:] == [
        ("first_token", "a"),
        ("attempt_cancelled", "a"),
        ("request_cancelled",),
    ]


async def test_with_telemetry_off_a_request_allocates_no_observations() -> None:
    """Telemetry off: the no-op observer hands out the same shared observations for every
    request and attempt, so nothing is created per request."""
    service = LlmService(LlmSettings(telemetry=OFF), [fake("a")])

    await service.chat(HELLO)

    assert service.observer is NOOP_OBSERVER
    assert service.metrics_registry is None
    request = NOOP_OBSERVER.request_started("chat", HELLO, "x")
    assert request is NOOP_REQUEST
    attempt = request.attempt_started(service.backend("a"), 1, 0.0, CircuitState.CLOSED)
    assert attempt is NOOP_ATTEMPT


def test_composition_drops_no_ops_and_forwards_to_every_observer() -> None:
    """compose() is the no-op for nothing, the observer itself for one, a composite for
    more; a composite forwards each event to each and skips no-op observations."""
    first, second = Recorder(), Recorder()
    assert compose([]) is NOOP_OBSERVER
    assert compose([NOOP_OBSERVER, first]) is first
    both = compose([first, second])
    assert isinstance(both, CompositeObserver)

    request = both.request_started("chat", HELLO, "x")
    request.skipped("b", "disabled")
    both.health_changed("b", False)
    assert (
        first.events
        == second.events
        == [
            ("request", "chat"),
            ("skipped", "b", "disabled"),
            ("health", "b", False),
        ]
    )
    alone = CompositeObserver([NOOP_OBSERVER, first]).request_started("embed", HELLO, "y")
    assert isinstance(alone, RecordedRequest)
