"""OpenTelemetry traces: request and attempt spans, GenAI attributes, errors, no-SDK cost."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from llmbackend import open_service
from llmbackend._observer import NOOP_REQUEST
from llmbackend._tracing import TracingObserver, provider_name
from llmbackend.errors import (
    AllBackendsFailedError,
    BackendUnavailableError,
    RateLimitedError,
)
from llmbackend.models import ChatMessage, ChatRequest, EmbeddingRequest
from llmbackend.service import LlmService
from llmbackend.settings import LlmBackendConfig, LlmSettings, TelemetrySettings
from llmbackend.testing import FakeBackend, FakeBackendPlugin, FakeReply

HELLO = ChatRequest(messages=[ChatMessage.user("hello there")], max_tokens=50, temperature=0.2)
TRACING = TelemetrySettings(enable_metrics=False, enable_tracing=True)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    yield spans
    spans.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    """A tracer provider of the test's own: the global provider is never set."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider


def fake(name: str, **config: Any) -> FakeBackend:
    return FakeBackend(LlmBackendConfig(name=name, custom_backend_type="fake", **config))


async def no_sleep(_delay: float) -> None:
    return None


def make(provider: TracerProvider, *backends: FakeBackend, **settings: Any) -> LlmService:
    return LlmService(
        LlmSettings(telemetry=TRACING, **settings),
        list(backends),
        sleep=no_sleep,
        rng=random.Random(5),
        tracer_provider=provider,
    )


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def attributes_of(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_chat_is_one_request_span_with_one_attempt_child(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A successful chat: an internal request span and a client attempt span carrying the
    GenAI semantic-convention attributes."""
    service = make(provider, fake("a", model_name="m-1", cost_per_million_input_tokens=1.0))

    response = await service.chat(HELLO)

    (request,) = by_name(exporter.get_finished_spans(), "llmbackend.chat")
    (attempt,) = by_name(exporter.get_finished_spans(), "chat m-1")
    assert request.kind is SpanKind.INTERNAL
    assert attempt.kind is SpanKind.CLIENT
    assert parent_id(attempt) == request.context.span_id
    assert attempt.context.trace_id == request.context.trace_id
    attributes = dict(attempt.attributes or {})
    correlation = attributes.pop("llmbackend.correlation_id")
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "fake",
        "gen_ai.system": "fake",
        "gen_ai.request.model": "m-1",
        "gen_ai.request.max_tokens": 50,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.response.model": "m-1",
        "gen_ai.usage.input_tokens": response.prompt_tokens,
        "gen_ai.usage.output_tokens": response.completion_tokens,
        "gen_ai.response.finish_reasons": ("stop",),
        "llmbackend.backend": "a",
        "llmbackend.backend_type": "fake",
        "llmbackend.attempt": 1,
        "llmbackend.retry_delay_s": 0.0,
        "llmbackend.circuit_state": "closed",
        "llmbackend.cost_usd": response.cost_usd,
    }
    assert dict(request.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "llmbackend.operation": "chat",
        "llmbackend.correlation_id": correlation,
        "llmbackend.backend": "a",
        "gen_ai.response.model": "m-1",
        "llmbackend.cache_hit": False,
    }
    assert request.status.status_code is StatusCode.UNSET


async def test_retries_and_fallback_are_attempt_spans_with_errors_recorded(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Each attempt is a child span numbered in order, with its retry delay; failed ones
    carry the error status, error.type and an exception event; the request span has
    retry, fallback and skip events."""
    a, b, off = fake("a", priority=1), fake("b", priority=2), fake("off", enabled=False)
    a.push(RateLimitedError("slow", backend="a", retry_after=0.5), RateLimitedError("slow"))
    service = make(provider, a, b, off, max_retries=1)

    await service.chat(HELLO)

    spans = exporter.get_finished_spans()
    (request,) = by_name(spans, "llmbackend.chat")
    attempts = sorted(
        by_name(spans, "chat fake-model"), key=lambda s: attributes_of(s)["llmbackend.attempt"]
    )
    assert [parent_id(s) for s in attempts] == [request.context.span_id] * 3
    summary = [
        (
            attributes_of(s)["llmbackend.attempt"],
            attributes_of(s)["llmbackend.backend"],
            attributes_of(s)["llmbackend.retry_delay_s"],
            s.status.status_code,
            attributes_of(s).get("error.type"),
        )
        for s in attempts
    ]
    assert summary == [
        (1, "a", 0.0, StatusCode.ERROR, "RateLimitedError"),
        (2, "a", 0.5, StatusCode.ERROR, "RateLimitedError"),
        (3, "b", 0.0, StatusCode.UNSET, None),
    ]
    (event,) = attempts[0].events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "llmbackend.errors.RateLimitedError"
    assert event.attributes["exception.message"] == "[a] slow"
    assert "RateLimitedError" in str(event.attributes["exception.stacktrace"])
    assert [(e.name, dict(e.attributes or {})) for e in request.events] == [
        (
            "llmbackend.backend_skipped",
            {"llmbackend.backend": "off", "llmbackend.reason": "disabled"},
        ),
        (
            "llmbackend.retry_scheduled",
            {"llmbackend.backend": "a", "llmbackend.attempt": 1, "llmbackend.delay_s": 0.5},
        ),
        ("llmbackend.fallback", {"llmbackend.from_backend": "a", "llmbackend.backend": "b"}),
    ]


async def test_a_failed_request_has_an_error_status_and_type(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """When nothing serves, the request span says why: status, error.type, exception."""
    down = fake("down")
    down.push(BackendUnavailableError("no route", backend="down", status=503))
    service = make(provider, down, max_retries=0)

    with pytest.raises(AllBackendsFailedError):
        await service.chat(HELLO)

    spans = exporter.get_finished_spans()
    (request,) = by_name(spans, "llmbackend.chat")
    (attempt,) = by_name(spans, "chat fake-model")
    assert request.status.status_code is StatusCode.ERROR
    assert request.attributes is not None
    assert request.attributes["error.type"] == "AllBackendsFailedError"
    assert "no route" in str(request.status.description)
    assert attempt.attributes is not None
    assert attempt.attributes["http.response.status_code"] == 503
    assert attempt.attributes["llmbackend.retryable"] is True


async def test_a_stream_attempt_records_time_to_first_chunk_and_usage(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A stream's attempt span has the time to its first chunk, usage and finish reason."""
    streamer = fake("s")
    streamer.push(FakeReply(text="one two", prompt_tokens=4, completion_tokens=2))
    service = make(provider, streamer)

    _ = [event async for event in service.stream(HELLO)]

    spans = exporter.get_finished_spans()
    (request,) = by_name(spans, "llmbackend.stream")
    (attempt,) = by_name(spans, "chat fake-model")
    seen = attributes_of(attempt)
    assert seen["gen_ai.response.time_to_first_chunk"] >= 0
    assert seen["gen_ai.usage.input_tokens"] == 4
    assert seen["gen_ai.usage.output_tokens"] == 2
    assert seen["gen_ai.response.finish_reasons"] == ("stop",)
    assert request.attributes is not None
    assert request.attributes["llmbackend.backend"] == "s"


async def test_embeddings_use_the_embeddings_operation(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """An embedding call is an ``embeddings`` operation with input tokens only."""
    service = make(provider, fake("e"))

    await service.embed(EmbeddingRequest(inputs=["a b c"]))

    (attempt,) = by_name(exporter.get_finished_spans(), "embeddings fake-model")
    assert attempt.attributes is not None
    assert attempt.attributes["gen_ai.operation.name"] == "embeddings"
    assert attempt.attributes["gen_ai.usage.input_tokens"] == 3
    assert "gen_ai.usage.output_tokens" not in attempt.attributes


async def test_a_cancelled_call_ends_its_spans_without_an_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Cancelling the caller ends both spans, marked cancelled, with no error status."""
    slow = fake("slow")
    slow.push(FakeReply(delay=3600))
    service = make(provider, slow)

    task = asyncio.create_task(service.chat(HELLO))
    await slow.request_received.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    for span in spans:
        assert span.attributes is not None
        assert span.attributes["llmbackend.cancelled"] is True
        assert span.status.status_code is StatusCode.UNSET


async def test_the_request_span_is_a_child_of_the_callers_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A request made inside the application's span joins the application's trace."""
    service = make(provider, fake("a"))
    tracer = provider.get_tracer("app")

    with tracer.start_as_current_span("handle_http_request") as outer:
        await service.chat(HELLO)

    (request,) = by_name(exporter.get_finished_spans(), "llmbackend.chat")
    assert parent_id(request) == outer.get_span_context().span_id


async def test_without_an_sdk_or_when_not_sampled_no_attempt_spans_are_made(
    exporter: InMemorySpanExporter,
) -> None:
    """With the API's no-op provider, or a sampler that drops the request, the observer
    hands out the shared no-op observation: no per-attempt span objects at all."""
    for tracer_provider in (trace.NoOpTracerProvider(), TracerProvider(sampler=ALWAYS_OFF)):
        observer = TracingObserver(tracer_provider)
        assert observer.request_started("chat", HELLO, "cid") is NOOP_REQUEST
    service = make(TracerProvider(sampler=ALWAYS_OFF), fake("a"))
    await service.chat(HELLO)
    assert exporter.get_finished_spans() == ()


async def test_fan_out_attempts_share_the_request_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Under the simultaneous strategy every branch's attempt is a child of one request."""
    service = make(provider, fake("a"), fake("b"), selection_strategy="simultaneous")

    await service.chat(HELLO)

    spans = exporter.get_finished_spans()
    (request,) = by_name(spans, "llmbackend.chat")
    attempts = by_name(spans, "chat fake-model")
    assert sorted(attributes_of(s)["llmbackend.backend"] for s in attempts) == ["a", "b"]
    assert {parent_id(s) for s in attempts} == {request.context.span_id}


def test_provider_names_follow_the_semantic_conventions() -> None:
    """Backend types map to the well-known gen_ai.provider.name values."""
    cases = {
        ("openai", None): "openai",
        ("azure_openai", None): "azure.ai.openai",
        ("anthropic", None): "anthropic",
        ("gemini", None): "gcp.gemini",
        ("gemini", "my-project"): "gcp.vertex_ai",
        ("cohere", None): "cohere",
        ("ollama", None): "ollama",
    }
    for (kind, project), expected in cases.items():
        config = LlmBackendConfig(name="x", type=kind, project_id=project)
        assert provider_name(FakeBackend(config)) == expected


async def test_open_service_traces_with_the_given_provider(
    provider: TracerProvider, exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    """telemetry.enable_tracing through open_service uses the tracer provider passed in."""
    settings = {
        "backends": [{"name": "a", "custom_backend_type": "fake"}],
        "telemetry": {"enable_tracing": True},
    }
    async with open_service(
        settings, plugins=[FakeBackendPlugin()], base_dir=tmp_path, tracer_provider=provider
    ) as service:
        await service.chat(HELLO)

    names = sorted(span.name for span in exporter.get_finished_spans())
    assert names == ["chat fake-model", "llmbackend.chat"]
