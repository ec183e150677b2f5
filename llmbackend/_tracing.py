"""OpenTelemetry traces: a span per service call and a child span per attempt on a backend.

The request span (``llmbackend.chat``, ``llmbackend.stream``, ``llmbackend.embed``;
internal) is a child of the caller's current span. Each attempt is a client span named
``{gen_ai.operation.name} {gen_ai.request.model}`` carrying the GenAI semantic-convention
attributes (``gen_ai.provider.name`` and its predecessor ``gen_ai.system``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.input_tokens``,
``gen_ai.usage.output_tokens``, ``gen_ai.response.finish_reasons``) and the SDK's own
(``llmbackend.backend``, ``llmbackend.attempt``, ``llmbackend.retry_delay_s``,
``llmbackend.circuit_state``, ``llmbackend.cache_hit``, ``llmbackend.correlation_id``).
Errors set the span status, ``error.type`` and an exception event. Every string attribute
passes through the redactor.

Without an OpenTelemetry SDK (or when the request is not sampled) the request span does
not record and no attempt spans are made: tracing then costs one no-op span per request.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from llmbackend._observer import (
    NOOP_REQUEST,
    AttemptObservation,
    Observer,
    RequestObservation,
)
from llmbackend._redaction import Redactor
from llmbackend.errors import BackendError

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

__all__ = ["TracingObserver", "provider_name"]

#: ``gen_ai.provider.name`` well-known values by backend type (others use the type).
_PROVIDERS = {
    "azure_openai": "azure.ai.openai",
    "gemini": "gcp.gemini",
    "mistral": "mistral_ai",
    "mistralai": "mistral_ai",
}


def provider_name(backend: BaseLlmBackend) -> str:
    """The GenAI provider name of ``backend`` (Gemini on Vertex AI is ``gcp.vertex_ai``)."""
    kind = backend.backend_type
    if kind == "gemini" and backend.config.project_id:
        return "gcp.vertex_ai"
    return _PROVIDERS.get(kind, kind)


def _operation_name(operation: str) -> str:
    return "embeddings" if operation == "embed" else "chat"


class TracingObserver(Observer):
    """Makes spans with ``tracer_provider`` (default: the global one)."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        redactor: Redactor | None = None,
    ) -> None:
        from llmbackend import __version__

        self.tracer = trace.get_tracer("llmbackend", __version__, tracer_provider=tracer_provider)
        self.redactor = redactor or Redactor()
        self._per_backend: dict[str, dict[str, Any]] = {}

    def request_started(
        self,
        operation: str,
        request: ChatRequest | EmbeddingRequest,
        correlation_id: str,
    ) -> RequestObservation:
        span = self.tracer.start_span(f"llmbackend.{operation}", kind=SpanKind.INTERNAL)
        if not span.is_recording():
            return NOOP_REQUEST  # nothing would record the attempts either
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": _operation_name(operation),
            "llmbackend.operation": operation,
            "llmbackend.correlation_id": correlation_id,
        }
        if request.model:
            attributes["gen_ai.request.model"] = request.model
        self.set(span, attributes)
        return _Request(self, span, operation, request, correlation_id)

    def clean(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        """``attributes`` redacted, without the ``None`` values."""
        text = self.redactor.text
        cleaned: dict[str, Any] = {}
        for key, value in attributes.items():
            if isinstance(value, str):
                cleaned[key] = text(value)
            elif isinstance(value, tuple):
                cleaned[key] = tuple(text(v) if isinstance(v, str) else v for v in value)
            elif value is not None:
                cleaned[key] = value
        return cleaned

    def set(self, span: Span, attributes: Mapping[str, Any]) -> None:
        """Set ``attributes`` on ``span``, redacted; ``None`` values are left out."""
        span.set_attributes(self.clean(attributes))

    def backend_attributes(self, backend: BaseLlmBackend) -> dict[str, Any]:
        """The attributes every attempt on ``backend`` shares, redacted once."""
        found = self._per_backend.get(backend.name)
        if found is None:
            provider = provider_name(backend)
            url = backend.config.effective_base_url
            found = self._per_backend[backend.name] = self.clean(
                {
                    "gen_ai.provider.name": provider,
                    "gen_ai.system": provider,
                    "server.address": urlsplit(url).hostname if url else None,
                    "llmbackend.backend": backend.name,
                    "llmbackend.backend_type": backend.backend_type,
                }
            )
        return found

    def record_error(self, span: Span, error: BaseException) -> None:
        """Error status, ``error.type`` and an exception event, all redacted."""
        text = self.redactor.text
        message = text(str(error))
        span.set_status(Status(StatusCode.ERROR, message))
        attributes: dict[str, Any] = {"error.type": type(error).__name__}
        if isinstance(error, BackendError):
            attributes["http.response.status_code"] = error.status
            attributes["llmbackend.retryable"] = error.retryable
        self.set(span, attributes)
        span.add_event(
            "exception",
            {
                "exception.type": f"{type(error).__module__}.{type(error).__qualname__}",
                "exception.message": message,
                "exception.stacktrace": text("".join(traceback.format_exception(error))),
            },
        )


class _Attempt(AttemptObservation):
    __slots__ = ("_observer", "_span", "_started")

    def __init__(self, observer: TracingObserver, span: Span) -> None:
        self._observer = observer
        self._span = span
        self._started = time.perf_counter()

    def first_token(self) -> None:
        elapsed = time.perf_counter() - self._started
        self._span.set_attribute("gen_ai.response.time_to_first_chunk", elapsed)

    def succeeded(self, response: LlmResponse | EmbeddingResponse) -> None:
        reason = getattr(response, "finish_reason", None)
        self._finish(
            response.model,
            response.prompt_tokens,
            getattr(response, "completion_tokens", None),
            reason.value if reason is not None else None,
            response.cost_usd,
        )

    def stream_succeeded(
        self, finish: FinishEvent | None, usage: Usage | None, cost_usd: float | None
    ) -> None:
        self._finish(
            finish.model if finish else None,
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
            finish.reason.value if finish and finish.reason else None,
            cost_usd,
        )

    def _finish(
        self,
        model: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
        finish_reason: str | None,
        cost_usd: float | None,
    ) -> None:
        self._observer.set(
            self._span,
            {
                "gen_ai.response.model": model,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
                "gen_ai.response.finish_reasons": (finish_reason,) if finish_reason else None,
                "llmbackend.cost_usd": cost_usd,
            },
        )
        self._span.end()

    def failed(self, error: BaseException) -> None:
        self._observer.record_error(self._span, error)
        self._span.end()

    def cancelled(self) -> None:
        self._span.set_attribute("llmbackend.cancelled", True)
        self._span.end()


class _Request(RequestObservation):
    __slots__ = ("_cache_hit", "_correlation_id", "_observer", "_operation", "_request", "_span")

    def __init__(
        self,
        observer: TracingObserver,
        span: Span,
        operation: str,
        request: ChatRequest | EmbeddingRequest,
        correlation_id: str,
    ) -> None:
        self._observer = observer
        self._span = span
        self._operation = operation
        self._request = request
        self._correlation_id = correlation_id
        self._cache_hit = False

    def attempt_started(
        self,
        backend: BaseLlmBackend,
        attempt: int,
        retry_delay_s: float,
        circuit_state: CircuitState,
    ) -> AttemptObservation:
        request = self._request
        model = request.model or backend.model
        operation = _operation_name(self._operation)
        observer = self._observer
        attributes = observer.clean(
            {
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": model,
                "gen_ai.request.max_tokens": getattr(request, "max_tokens", None),
                "gen_ai.request.temperature": getattr(request, "temperature", None),
                "gen_ai.request.top_p": getattr(request, "top_p", None),
                "llmbackend.attempt": attempt,
                "llmbackend.retry_delay_s": retry_delay_s,
                "llmbackend.circuit_state": circuit_state.value,
                "llmbackend.correlation_id": self._correlation_id,
            }
        )
        span = observer.tracer.start_span(
            f"{operation} {model}" if model else operation,
            context=trace.set_span_in_context(self._span),
            kind=SpanKind.CLIENT,
            attributes={**observer.backend_attributes(backend), **attributes},
        )
        return _Attempt(observer, span)

    def skipped(self, backend: str, reason: str) -> None:
        self._event("llmbackend.backend_skipped", backend=backend, reason=reason)

    def fallback(self, from_backend: str | None, to_backend: str) -> None:
        self._event("llmbackend.fallback", from_backend=from_backend, backend=to_backend)

    def retry_scheduled(self, backend: str, attempt: int, delay_s: float) -> None:
        self._event("llmbackend.retry_scheduled", backend=backend, attempt=attempt, delay_s=delay_s)

    def cache_hit(self, backend: str) -> None:
        self._cache_hit = True

    def _event(self, name: str, **fields: Any) -> None:
        redact = self._observer.redactor.value
        attributes = {f"llmbackend.{k}": redact(v) for k, v in fields.items() if v is not None}
        self._span.add_event(name, attributes)

    def succeeded(self, backend: str, model: str | None) -> None:
        self._observer.set(
            self._span,
            {
                "llmbackend.backend": backend,
                "gen_ai.response.model": model,
                "llmbackend.cache_hit": self._cache_hit,
            },
        )
        self._span.end()

    def failed(self, error: BaseException) -> None:
        self._span.set_attribute("llmbackend.cache_hit", self._cache_hit)
        self._observer.record_error(self._span, error)
        self._span.end()

    def cancelled(self) -> None:
        self._span.set_attributes({"llmbackend.cancelled": True, "llmbackend.cache_hit": False})
        self._span.end()
