"""The circuit breaker state machine, driven by an injected clock."""

from __future__ import annotations

import pytest

from llmbackend._breaker import CircuitBreaker, CircuitState
from llmbackend.errors import (
    AuthenticationError,
    BackendUnavailableError,
    ContentFilteredError,
    ContextLengthExceededError,
    InvalidRequestError,
)
from llmbackend.settings import CircuitBreakerSettings

FAIL = BackendUnavailableError("503")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **settings: object) -> tuple[CircuitBreaker, list[tuple[str, str]]]:
    moves: list[tuple[str, str]] = []
    values: dict[str, object] = {
        "failure_threshold": 3,
        "minimum_throughput": 4,
        "sampling_duration_seconds": 60,
        "duration_of_break_seconds": 30,
    }
    values.update(settings)
    cb = CircuitBreaker(
        "b",
        CircuitBreakerSettings(**values),  # type: ignore[arg-type]
        clock,
        lambda _name, old, new: moves.append((old.value, new.value)),
    )
    return cb, moves


def test_opens_after_threshold_failures_once_throughput_is_reached() -> None:
    """3 failures do not open it before 4 calls were seen; the 4th call's failure does."""
    clock = Clock()
    cb, moves = breaker(clock)
    for _ in range(3):
        cb.record_failure(FAIL)
    assert cb.state is CircuitState.CLOSED  # only 3 calls: below minimum throughput
    cb.record_failure(FAIL)
    assert cb.state is CircuitState.OPEN
    assert not cb.allow()
    assert moves == [("closed", "open")]


def test_failures_outside_the_sampling_window_are_forgotten() -> None:
    """Old failures age out of the window and no longer count."""
    clock = Clock()
    cb, _ = breaker(clock)
    cb.record_failure(FAIL)
    cb.record_failure(FAIL)
    clock.now += 61
    cb.record_success()
    cb.record_failure(FAIL)
    cb.record_failure(FAIL)
    assert cb.state is CircuitState.CLOSED
    assert cb.snapshot().failures_in_window == 2


def test_half_open_after_the_break_admits_limited_probes() -> None:
    """After duration_of_break it turns half-open and admits half_open_max_probes calls."""
    clock = Clock()
    cb, _ = breaker(clock, half_open_max_probes=2)
    for _ in range(4):
        cb.record_failure(FAIL)
    clock.now += 29.9
    assert cb.state is CircuitState.OPEN
    assert cb.retry_in() == pytest.approx(0.1)
    clock.now += 0.1
    assert cb.state is CircuitState.HALF_OPEN
    assert cb.allow()
    assert cb.allow()
    assert not cb.allow()  # both probes in flight
    cb.release()  # one probe was cancelled
    assert cb.allow()


def test_probe_success_closes_and_probe_failure_reopens() -> None:
    """A successful probe closes the breaker; a failed one opens it for another break."""
    clock = Clock()
    cb, moves = breaker(clock)
    for _ in range(4):
        cb.record_failure(FAIL)
    clock.now += 30
    assert cb.allow()
    cb.record_failure(FAIL)
    assert cb.state is CircuitState.OPEN
    clock.now += 30
    assert cb.allow()
    cb.record_success()
    assert cb.state is CircuitState.CLOSED
    assert moves == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert cb.snapshot().times_opened == 2


def test_caller_errors_never_trip_it() -> None:
    """400, 401, context length and content filter count as the backend answering."""
    clock = Clock()
    cb, _ = breaker(clock, failure_threshold=1, minimum_throughput=1)
    for error in (
        InvalidRequestError("bad", status=400),
        AuthenticationError("key", status=401),
        ContextLengthExceededError("long", status=400),
        ContentFilteredError("no", status=400),
    ):
        cb.record_failure(error)
    assert cb.state is CircuitState.CLOSED
    cb.record_failure(FAIL)
    assert cb.state is CircuitState.OPEN


def test_disabled_breaker_always_allows() -> None:
    """With enabled=false nothing is counted and every call is allowed."""
    clock = Clock()
    cb, _ = breaker(clock, enabled=False, failure_threshold=1, minimum_throughput=1)
    cb.record_failure(FAIL)
    assert cb.allow()
    assert cb.state is CircuitState.CLOSED
