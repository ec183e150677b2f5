"""Prometheus metrics: an observer writing to an injected ``CollectorRegistry``.

Labels are the backend name (bounded by the configuration), the configured model of a
backend, the operation, an outcome and a reason (an error class or a skip category): no
label ever holds request content, a provider-chosen string or a secret.

=============================================  =========================================
metric                                          labels
=============================================  =========================================
``llmbackend_requests_total``                   backend, outcome, reason
``llmbackend_request_duration_seconds``         operation, outcome
``llmbackend_attempts_total``                   backend, outcome, reason
``llmbackend_attempt_duration_seconds``         backend, outcome
``llmbackend_time_to_first_token_seconds``      backend
``llmbackend_retries_total``                    backend
``llmbackend_fallbacks_total``                  backend (the backend fallen back to)
``llmbackend_tokens_total``                     backend, model, direction (input, output)
``llmbackend_cost_usd_total``                   backend, model
``llmbackend_in_flight_requests``               backend
``llmbackend_circuit_state``                    backend (0 closed, 1 half-open, 2 open)
``llmbackend_backend_healthy``                  backend (1 healthy, 0 unhealthy)
``llmbackend_budget_spent_usd`` / ``_limit_usd``  backend (only once the budget code reports)
=============================================  =========================================

Request outcomes: ``success``, ``failure`` (reason: the class of the error the caller got;
backend: the last one tried), ``cancelled``, ``cache_hit`` and ``skipped`` (one per backend
left out of a request; reason: ``disabled``, ``unsupported``, ``circuit_open``,
``unhealthy``, ``not_selected``, ``budget_exhausted``, ``rate_limited`` or ``other``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmbackend._breaker import CircuitState
from llmbackend._observer import (
    AttemptObservation,
    Observer,
    RequestObservation,
    skip_category,
)

if TYPE_CHECKING:
    from llmbackend.backends.base import BaseLlmBackend
    from llmbackend.models import (
        ChatRequest,
        EmbeddingRequest,
        EmbeddingResponse,
        FinishEvent,
        LlmResponse,
        Usage,
    )

__all__ = ["DEFAULT_BUCKETS", "PrometheusObserver", "skip_category"]

#: Latency buckets in seconds: LLM calls take from tens of milliseconds to minutes.
DEFAULT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

_CIRCUIT_CODES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


class _Series:
    """The pre-bound children of one backend, so the hot path does no label lookups."""

    __slots__ = (
        "attempt_ok",
        "cost",
        "failed_seconds",
        "fallbacks",
        "in_flight",
        "name",
        "ok_seconds",
        "request_ok",
        "retries",
        "tokens_in",
        "tokens_out",
        "ttft",
    )

    def __init__(self, observer: PrometheusObserver, name: str, model: str) -> None:
        self.name = name
        self.in_flight = observer.in_flight.labels(name)
        self.ttft = observer.ttft.labels(name)
        self.retries = observer.retries.labels(name)
        self.fallbacks = observer.fallbacks.labels(name)
        self.tokens_in = observer.tokens.labels(name, model, "input")
        self.tokens_out = observer.tokens.labels(name, model, "output")
        self.cost = observer.cost.labels(name, model)
        self.attempt_ok = observer.attempts.labels(name, "success", "")
        self.ok_seconds = observer.attempt_seconds.labels(name, "success")
        self.failed_seconds = observer.attempt_seconds.labels(name, "failure")
        self.request_ok = observer.requests.labels(name, "success", "")


class PrometheusObserver(Observer):
    """Records the SDK's metrics in ``registry`` (never the global one unless you pass it).

    ``backends`` are known up front so their gauges exist (in-flight 0, circuit closed,
    healthy) before the first request.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        backends: Iterable[BaseLlmBackend] = (),
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = registry

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["backend"], registry=registry)

        def histogram(name: str, doc: str, *labels: str) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=registry)

        self.requests = counter(
            "llmbackend_requests",
            "Requests by backend and outcome.",
            "backend",
            "outcome",
            "reason",
        )
        self.request_seconds = histogram(
            "llmbackend_request_duration_seconds",
            "Whole service calls, retries and failovers included.",
            "operation",
            "outcome",
        )
        self.attempts = counter(
            "llmbackend_attempts", "Calls to a backend.", "backend", "outcome", "reason"
        )
        self.attempt_seconds = histogram(
            "llmbackend_attempt_duration_seconds", "One call to a backend.", "backend", "outcome"
        )
        self.ttft = histogram(
            "llmbackend_time_to_first_token_seconds",
            "From the start of a stream attempt to its first content.",
            "backend",
        )
        self.retries = counter("llmbackend_retries", "Retries on the same backend.", "backend")
        self.fallbacks = counter(
            "llmbackend_fallbacks", "Requests that fell back to this backend.", "backend"
        )
        self.tokens = counter("llmbackend_tokens", "Tokens used.", "backend", "model", "direction")
        self.cost = counter("llmbackend_cost_usd", "Cost in USD.", "backend", "model")
        self.in_flight = gauge("llmbackend_in_flight_requests", "Calls to a backend in progress.")
        self.circuit = gauge(
            "llmbackend_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open."
        )
        self.healthy = gauge("llmbackend_backend_healthy", "1 healthy, 0 unhealthy.")
        self.budget_spent = gauge("llmbackend_budget_spent_usd", "Spend in the budget period.")
        self.budget_limit = gauge("llmbackend_budget_limit_usd", "Spend limit of the period.")
        self._series: dict[str, _Series] = {}
        self._children: dict[tuple[Any, ...], Any] = {}
        for backend in backends:
            self.series(backend.name, backend.model or "")

    def series(self, name: str, model: str = "") -> _Series:
        """The pre-bound metrics of backend ``name`` (created on first sight)."""
        found = self._series.get(name)
        if found is None:
            found = self._series[name] = _Series(self, name, model)
            self.circuit.labels(name).set(0)
            self.healthy.labels(name).set(1)
        return found

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached by label values (cheaper than the client's)."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def request_started(
        self,
        operation: str,
        request: ChatRequest | EmbeddingRequest,
        correlation_id: str,
    ) -> RequestObservation:
        return _Request(self, operation)

    def breaker_changed(self, backend: str, old: CircuitState, new: CircuitState) -> None:
        self.series(backend)
        self.circuit.labels(backend).set(_CIRCUIT_CODES[new])

    def health_changed(self, backend: str, healthy: bool) -> None:
        self.series(backend)
        self.healthy.labels(backend).set(1 if healthy else 0)

    def budget_changed(self, backend: str, spent_usd: float, limit_usd: float | None) -> None:
        self.budget_spent.labels(backend).set(spent_usd)
        if limit_usd is not None:
            self.budget_limit.labels(backend).set(limit_usd)


class _Attempt(AttemptObservation):
    __slots__ = ("_done", "_observer", "_series", "_started")

    def __init__(self, observer: PrometheusObserver, series: _Series) -> None:
        self._observer = observer
        self._series = series
        self._started = time.perf_counter()
        self._done = False
        series.in_flight.inc()

    def _end(self) -> float | None:
        if self._done:
            return None
        self._done = True
        self._series.in_flight.dec()
        return time.perf_counter() - self._started

    def first_token(self) -> None:
        self._series.ttft.observe(time.perf_counter() - self._started)

    def succeeded(self, response: LlmResponse | EmbeddingResponse) -> None:
        output = getattr(response, "completion_tokens", 0)
        self._success(response.prompt_tokens, output, response.cost_usd)

    def stream_succeeded(
        self, finish: FinishEvent | None, usage: Usage | None, cost_usd: float | None
    ) -> None:
        if usage is None:
            self._success(0, 0, cost_usd)
        else:
            self._success(usage.prompt_tokens, usage.completion_tokens, cost_usd)

    def _success(self, input_tokens: int, output_tokens: int, cost_usd: float | None) -> None:
        elapsed = self._end()
        if elapsed is None:
            return
        series = self._series
        series.attempt_ok.inc()
        series.ok_seconds.observe(elapsed)
        if input_tokens:
            series.tokens_in.inc(input_tokens)
        if output_tokens:
            series.tokens_out.inc(output_tokens)
        if cost_usd:
            series.cost.inc(cost_usd)

    def failed(self, error: BaseException) -> None:
        elapsed = self._end()
        if elapsed is None:
            return
        observer, name = self._observer, self._series.name
        observer.child(observer.attempts, name, "failure", type(error).__name__).inc()
        self._series.failed_seconds.observe(elapsed)

    def cancelled(self) -> None:
        if self._end() is not None:
            observer = self._observer
            observer.child(observer.attempts, self._series.name, "cancelled", "").inc()


class _Request(RequestObservation):
    __slots__ = ("_cache_hit", "_last", "_observer", "_operation", "_started")

    def __init__(self, observer: PrometheusObserver, operation: str) -> None:
        self._observer = observer
        self._operation = operation
        self._started = time.perf_counter()
        self._last: str = ""
        self._cache_hit = False

    def attempt_started(
        self,
        backend: BaseLlmBackend,
        attempt: int,
        retry_delay_s: float,
        circuit_state: CircuitState,
    ) -> AttemptObservation:
        self._last = backend.name
        return _Attempt(self._observer, self._observer.series(backend.name, backend.model or ""))

    def skipped(self, backend: str, reason: str) -> None:
        observer = self._observer
        observer.child(observer.requests, backend, "skipped", skip_category(reason)).inc()

    def fallback(self, from_backend: str | None, to_backend: str) -> None:
        self._observer.series(to_backend).fallbacks.inc()

    def retry_scheduled(self, backend: str, attempt: int, delay_s: float) -> None:
        self._observer.series(backend).retries.inc()

    def cache_hit(self, backend: str) -> None:
        self._cache_hit = True

    def _finish(self, backend: str, outcome: str, reason: str) -> None:
        observer = self._observer
        if outcome == "success":
            observer.series(backend).request_ok.inc()
        else:
            observer.child(observer.requests, backend, outcome, reason).inc()
        elapsed = time.perf_counter() - self._started
        observer.child(observer.request_seconds, self._operation, outcome).observe(elapsed)

    def succeeded(self, backend: str, model: str | None) -> None:
        self._finish(backend, "cache_hit" if self._cache_hit else "success", "")

    def failed(self, error: BaseException) -> None:
        self._finish(self._last, "failure", type(error).__name__)

    def cancelled(self) -> None:
        self._finish(self._last, "cancelled", "")
