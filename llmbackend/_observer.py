"""The observer interface: the service's only hook points for metrics, traces and the like.

The service tells one :class:`Observer` what happens; it never talks to Prometheus or
OpenTelemetry itself. Per request it asks for a :class:`RequestObservation`, and per
attempt on a backend for an :class:`AttemptObservation`::

    observer.request_started(operation, request, correlation_id) -> RequestObservation
        .skipped(backend, reason)            a backend was not tried, and why
        .fallback(from_backend, to_backend)  the request moved on to another backend
        .retry_scheduled(backend, attempt, delay_s)
        .cache_hit(backend)                  the answer came from the cache
        .attempt_started(backend, attempt, retry_delay_s, circuit_state) -> AttemptObservation
            .first_token()                   a stream's first content event
            .succeeded(response) / .stream_succeeded(finish, usage, cost_usd)
            .failed(error) / .cancelled()    exactly one of the four ends an attempt
        .succeeded(backend, model) / .failed(error) / .cancelled()
    observer.breaker_changed(backend, old, new)
    observer.health_changed(backend, healthy)
    observer.budget_changed(backend, spent_usd, limit_usd)

The base classes do nothing, and the no-op observer hands out shared no-op observations, so
with telemetry off a request allocates nothing for it. Observers must not raise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from attrs import define

from llmbackend._health import HealthMonitor

if TYPE_CHECKING:
    from llmbackend._breaker import CircuitState
    from llmbackend.backends.base import BaseLlmBackend
    from llmbackend.models import (
        ChatRequest,
        EmbeddingRequest,
        EmbeddingResponse,
        FinishEvent,
        LlmResponse,
        Usage,
    )

__all__ = [
    "NOOP_ATTEMPT",
    "NOOP_OBSERVER",
    "NOOP_REQUEST",
    "AttemptObservation",
    "CompositeObserver",
    "ObservedHealthMonitor",
    "Observer",
    "RequestObservation",
    "compose",
    "skip_category",
]


class AttemptObservation:
    """One attempt on one backend. Exactly one of the ending methods is called."""

    __slots__ = ()

    def first_token(self) -> None:
        """A stream delivered its first content event (text or tool call)."""

    def succeeded(self, response: LlmResponse | EmbeddingResponse) -> None:
        """A chat or embedding call answered."""

    def stream_succeeded(
        self, finish: FinishEvent | None, usage: Usage | None, cost_usd: float | None
    ) -> None:
        """A stream finished normally."""

    def failed(self, error: BaseException) -> None:
        """The attempt failed with an SDK error (already redacted)."""

    def cancelled(self) -> None:
        """The attempt ended without an outcome (cancelled, or the stream was abandoned)."""


class RequestObservation:
    """One call of the service (``chat``, ``stream``, ``embed``)."""

    __slots__ = ()

    def attempt_started(
        self,
        backend: BaseLlmBackend,
        attempt: int,
        retry_delay_s: float,
        circuit_state: CircuitState,
    ) -> AttemptObservation:
        """Attempt number ``attempt`` (1-based, across backends) begins after waiting
        ``retry_delay_s`` (0 unless it is a retry)."""
        return NOOP_ATTEMPT

    def skipped(self, backend: str, reason: str) -> None:
        """``backend`` was not tried for this request."""

    def fallback(self, from_backend: str | None, to_backend: str) -> None:
        """The request moves on to ``to_backend`` after ``from_backend`` failed."""

    def retry_scheduled(self, backend: str, attempt: int, delay_s: float) -> None:
        """Retry number ``attempt`` on ``backend`` will start after ``delay_s`` seconds."""

    def cache_hit(self, backend: str) -> None:
        """The answer comes from the cache (``succeeded`` follows as usual)."""

    def succeeded(self, backend: str, model: str | None) -> None:
        """The request was answered by ``backend``."""

    def failed(self, error: BaseException) -> None:
        """The request failed; ``error`` is what the caller receives."""

    def cancelled(self) -> None:
        """The caller went away (task cancelled, or a stream abandoned)."""


class Observer:
    """Receives what the service does. Subclass and override what you need."""

    __slots__ = ()

    def request_started(
        self,
        operation: str,
        request: ChatRequest | EmbeddingRequest,
        correlation_id: str,
    ) -> RequestObservation:
        """A request begins: ``operation`` is ``chat``, ``stream`` or ``embed``."""
        return NOOP_REQUEST

    def breaker_changed(self, backend: str, old: CircuitState, new: CircuitState) -> None:
        """``backend``'s circuit breaker moved from ``old`` to ``new``."""

    def health_changed(self, backend: str, healthy: bool) -> None:
        """``backend`` became healthy or unhealthy."""

    def budget_changed(self, backend: str, spent_usd: float, limit_usd: float | None) -> None:
        """``backend``'s spend in the current period (fed by the budget code)."""


_P = TypeVar("_P", AttemptObservation, RequestObservation)

NOOP_ATTEMPT = AttemptObservation()
NOOP_REQUEST = RequestObservation()
#: Does nothing; the observer of a service with telemetry off.
NOOP_OBSERVER = Observer()


class _CompositeAttempt(AttemptObservation):
    __slots__ = ("_parts",)

    def __init__(self, parts: Sequence[AttemptObservation]) -> None:
        self._parts = parts

    def first_token(self) -> None:
        for part in self._parts:
            part.first_token()

    def succeeded(self, response: LlmResponse | EmbeddingResponse) -> None:
        for part in self._parts:
            part.succeeded(response)

    def stream_succeeded(
        self, finish: FinishEvent | None, usage: Usage | None, cost_usd: float | None
    ) -> None:
        for part in self._parts:
            part.stream_succeeded(finish, usage, cost_usd)

    def failed(self, error: BaseException) -> None:
        for part in self._parts:
            part.failed(error)

    def cancelled(self) -> None:
        for part in self._parts:
            part.cancelled()


class _CompositeRequest(RequestObservation):
    __slots__ = ("_parts",)

    def __init__(self, parts: Sequence[RequestObservation]) -> None:
        self._parts = parts

    def attempt_started(
        self,
        backend: BaseLlmBackend,
        attempt: int,
        retry_delay_s: float,
        circuit_state: CircuitState,
    ) -> AttemptObservation:
        return _combine(
            [
                p.attempt_started(backend, attempt, retry_delay_s, circuit_state)
                for p in self._parts
            ],
            NOOP_ATTEMPT,
            _CompositeAttempt,
        )

    def skipped(self, backend: str, reason: str) -> None:
        for part in self._parts:
            part.skipped(backend, reason)

    def fallback(self, from_backend: str | None, to_backend: str) -> None:
        for part in self._parts:
            part.fallback(from_backend, to_backend)

    def retry_scheduled(self, backend: str, attempt: int, delay_s: float) -> None:
        for part in self._parts:
            part.retry_scheduled(backend, attempt, delay_s)

    def cache_hit(self, backend: str) -> None:
        for part in self._parts:
            part.cache_hit(backend)

    def succeeded(self, backend: str, model: str | None) -> None:
        for part in self._parts:
            part.succeeded(backend, model)

    def failed(self, error: BaseException) -> None:
        for part in self._parts:
            part.failed(error)

    def cancelled(self) -> None:
        for part in self._parts:
            part.cancelled()


def _combine(parts: list[_P], noop: _P, composite: Callable[[list[_P]], _P]) -> _P:
    active = [part for part in parts if part is not noop]
    if not active:
        return noop
    return active[0] if len(active) == 1 else composite(active)


class CompositeObserver(Observer):
    """Forwards everything to several observers (metrics and traces, plus your own)."""

    __slots__ = ("observers",)

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = tuple(observers)

    def request_started(
        self,
        operation: str,
        request: ChatRequest | EmbeddingRequest,
        correlation_id: str,
    ) -> RequestObservation:
        return _combine(
            [o.request_started(operation, request, correlation_id) for o in self.observers],
            NOOP_REQUEST,
            _CompositeRequest,
        )

    def breaker_changed(self, backend: str, old: CircuitState, new: CircuitState) -> None:
        for observer in self.observers:
            observer.breaker_changed(backend, old, new)

    def health_changed(self, backend: str, healthy: bool) -> None:
        for observer in self.observers:
            observer.health_changed(backend, healthy)

    def budget_changed(self, backend: str, spent_usd: float, limit_usd: float | None) -> None:
        for observer in self.observers:
            observer.budget_changed(backend, spent_usd, limit_usd)


def compose(observers: Sequence[Observer]) -> Observer:
    """One observer for ``observers``: the no-op, the only one, or a composite."""
    active = [o for o in observers if o is not NOOP_OBSERVER]
    if not active:
        return NOOP_OBSERVER
    return active[0] if len(active) == 1 else CompositeObserver(active)


@define
class ObservedHealthMonitor(HealthMonitor):
    """The health monitor, reporting every healthy/unhealthy transition to ``on_change``
    (periodic checks, ``test_backends()`` and passive signals from real calls alike)."""

    on_change: Callable[[str, bool], None] | None = None

    def record(self, name: str, *, ok: bool, error: str | None = None) -> None:
        state = self.state(name)
        before = state.healthy
        super().record(name, ok=ok, error=error)
        if state.healthy is not before and self.on_change is not None:
            self.on_change(name, state.healthy)


#: Skip reasons by category: the reason text holds numbers, the category is a bounded label.
_SKIP_CATEGORIES = (
    ("disabled", "disabled"),
    ("support", "unsupported"),
    ("circuit", "circuit_open"),
    ("unhealthy", "unhealthy"),
    ("not selected", "not_selected"),
    ("budget", "budget_exhausted"),
    ("spend limit", "budget_exhausted"),
    ("spend", "budget_exhausted"),
    ("rate limit", "rate_limited"),
)


def skip_category(reason: str) -> str:
    """The bounded label for a skip reason (the reason itself may hold numbers)."""
    lowered = reason.lower()
    for marker, category in _SKIP_CATEGORIES:
        if marker in lowered:
            return category
    return "other"
