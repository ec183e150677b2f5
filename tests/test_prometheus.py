"""Prometheus metrics, checked by value after scripted traffic."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from llmbackend import open_service
from llmbackend._prometheus import PrometheusObserver, skip_category
from llmbackend._telemetry import render_metrics
from llmbackend.backends.base import Capability
from llmbackend.errors import (
    AllBackendsFailedError,
    AuthenticationError,
    BackendUnavailableError,
    RateLimitedError,
)
from llmbackend.models import ChatMessage, ChatRequest, EmbeddingRequest, TextDelta
from llmbackend.service import LlmService
from llmbackend.settings import (
    CircuitBreakerSettings,
    HealthCheckSettings,
    LlmBackendConfig,
    LlmSettings,
    TelemetrySettings,
)
from llmbackend.testing import Behavior, FakeBackend, FakeProviderServer, FakeReply

HELLO = ChatRequest(messages=[ChatMessage.user("hello there")])


class ChatOnly(FakeBackend):
    capabilities = frozenset({Capability.CHAT})


def fake(name: str, cls: type[FakeBackend] = FakeBackend, **config: Any) -> FakeBackend:
    return cls(LlmBackendConfig(name=name, custom_backend_type="fake", **config))


async def no_sleep(_delay: float) -> None:
    return None


def make(*backends: FakeBackend, **settings: Any) -> tuple[LlmService, CollectorRegistry]:
    registry = CollectorRegistry()
    service = LlmService(
        LlmSettings(**settings),
        list(backends),
        sleep=no_sleep,
        rng=random.Random(3),
        metrics_registry=registry,
    )
    return service, registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float]:
    """The non-zero samples called ``name``, keyed by their label values (labels sorted
    by name: backend, direction, model, operation, outcome, reason)."""
    found = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name and sample.value:
                found[tuple(v for _, v in sorted(sample.labels.items()))] = sample.value
    return found


async def test_success_retry_and_fallback_are_counted_by_value() -> None:
    """Two requests (one retried then failed over, one straight through) give exact counts."""
    a = fake("a", priority=1, cost_per_million_input_tokens=2.0, cost_per_million_output_tokens=4.0)
    b = fake("b", priority=2)
    a.push(RateLimitedError("slow", backend="a", retry_after=0.5), RateLimitedError("slow"))
    service, registry = make(a, b, max_retries=1)

    first = await service.chat(HELLO)
    second = await service.chat(attrs.evolve(HELLO, model="some-unbounded-override"))

    assert (first.backend, second.backend) == ("b", "a")
    assert samples(registry, "llmbackend_requests_total") == {
        ("a", "success", ""): 1,
        ("b", "success", ""): 1,
    }
    assert samples(registry, "llmbackend_attempts_total") == {
        ("a", "failure", "RateLimitedError"): 2,
        ("a", "success", ""): 1,
        ("b", "success", ""): 1,
    }
    assert samples(registry, "llmbackend_retries_total") == {("a",): 1}
    assert samples(registry, "llmbackend_fallbacks_total") == {("b",): 1}
    # The model label is the configured model, never a request's (unbounded) override.
    assert samples(registry, "llmbackend_tokens_total") == {
        ("a", "input", "fake-model"): 2,
        ("a", "output", "fake-model"): 1,
        ("b", "input", "fake-model"): 2,
        ("b", "output", "fake-model"): 1,
    }
    assert samples(registry, "llmbackend_cost_usd_total") == {("a", "fake-model"): 8e-6}
    assert samples(registry, "llmbackend_request_duration_seconds_count") == {
        ("chat", "success"): 2
    }
    assert samples(registry, "llmbackend_attempt_duration_seconds_count") == {
        ("a", "failure"): 2,
        ("a", "success"): 1,
        ("b", "success"): 1,
    }
    assert samples(registry, "llmbackend_in_flight_requests") == {}
    assert b"some-unbounded-override" not in render_metrics(registry)


async def test_failures_are_counted_by_the_error_class_the_caller_got() -> None:
    """A final caller error and an exhausted request are failures labelled by error class;
    attempts keep each backend's own error class."""
    a, b = fake("a", priority=1), fake("b", priority=2)
    a.push(AuthenticationError("bad key", backend="a", status=401))
    a.push(BackendUnavailableError("down", backend="a"))
    b.push(BackendUnavailableError("down", backend="b"))
    service, registry = make(a, b, max_retries=0)

    with pytest.raises(AuthenticationError):
        await service.chat(HELLO)
    with pytest.raises(AllBackendsFailedError):
        await service.chat(HELLO)

    assert samples(registry, "llmbackend_requests_total") == {
        ("a", "failure", "AuthenticationError"): 1,
        ("b", "failure", "AllBackendsFailedError"): 1,
    }
    assert samples(registry, "llmbackend_attempts_total") == {
        ("a", "failure", "AuthenticationError"): 1,
        ("a", "failure", "BackendUnavailableError"): 1,
        ("b", "failure", "BackendUnavailableError"): 1,
    }
    assert samples(registry, "llmbackend_request_duration_seconds_count") == {
        ("chat", "failure"): 2
    }


async def test_skipped_backends_are_counted_with_a_bounded_reason() -> None:
    """Each backend left out of a request counts once, with a category, not free text."""
    off = fake("off", enabled=False)
    chat_only = fake("chat_only", ChatOnly)
    embedder = fake("embedder")
    service, registry = make(off, chat_only, embedder)

    await service.embed(EmbeddingRequest(inputs=["x"]))
    await service.embed(EmbeddingRequest(inputs=["y"]))

    assert samples(registry, "llmbackend_requests_total") == {
        ("chat_only", "skipped", "unsupported"): 2,
        ("embedder", "success", ""): 2,
        ("off", "skipped", "disabled"): 2,
    }
    assert skip_category("circuit open (retry in 12.3 s)") == "circuit_open"
    assert skip_category("not selected (strategy 'specific')") == "not_selected"
    assert skip_category("something new") == "other"


async def test_in_flight_returns_to_zero_after_failures_and_cancellations() -> None:
    """The in-flight gauge counts a held call and drops back after a cancelled call, a
    failure and an abandoned stream."""
    slow = fake("slow")
    service, registry = make(slow, max_retries=0)

    slow.push(FakeReply(delay=3600))
    task = asyncio.create_task(service.chat(HELLO))
    await slow.request_received.wait()
    assert value(registry, "llmbackend_in_flight_requests", backend="slow") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert value(registry, "llmbackend_in_flight_requests", backend="slow") == 0

    slow.push(BackendUnavailableError("down", backend="slow"))
    with pytest.raises(AllBackendsFailedError):
        await service.chat(HELLO)
    assert value(registry, "llmbackend_in_flight_requests", backend="slow") == 0

    slow.push(FakeReply(text="one two three"))
    async with contextlib.aclosing(service.stream(HELLO)) as events:
        async for event in events:
            assert isinstance(event, TextDelta)
            assert value(registry, "llmbackend_in_flight_requests", backend="slow") == 1
            break  # the reader walks away mid-stream
    assert value(registry, "llmbackend_in_flight_requests", backend="slow") == 0

    assert samples(registry, "llmbackend_attempts_total") == {
        ("slow", "cancelled", ""): 2,
        ("slow", "failure", "BackendUnavailableError"): 1,
    }
    assert samples(registry, "llmbackend_requests_total") == {
        ("slow", "cancelled", ""): 2,
        ("slow", "failure", "AllBackendsFailedError"): 1,
    }


async def test_streams_record_time_to_first_token_and_tokens() -> None:
    """A stream observes one time-to-first-token sample and the usage it reported."""
    streamer = fake("streamer")
    streamer.push(FakeReply(text="a b c", prompt_tokens=7, completion_tokens=3))
    service, registry = make(streamer)

    events = [event async for event in service.stream(HELLO)]

    assert events
    assert samples(registry, "llmbackend_time_to_first_token_seconds_count") == {("streamer",): 1}
    assert samples(registry, "llmbackend_tokens_total") == {
        ("streamer", "input", "fake-model"): 7,
        ("streamer", "output", "fake-model"): 3,
    }
    assert samples(registry, "llmbackend_request_duration_seconds_count") == {
        ("stream", "success"): 1
    }


async def test_breaker_and_health_gauges_follow_transitions() -> None:
    """One failure opens the breaker (gauge 2) and marks the backend unhealthy (gauge 0);
    a passing check brings health back."""
    flaky = fake("flaky")
    flaky.push(BackendUnavailableError("down", backend="flaky"))
    service, registry = make(
        flaky,
        max_retries=0,
        circuit_breaker=CircuitBreakerSettings(failure_threshold=1, minimum_throughput=1),
        health_check=HealthCheckSettings(unhealthy_threshold=1, healthy_threshold=1),
    )
    assert value(registry, "llmbackend_circuit_state", backend="flaky") == 0
    assert value(registry, "llmbackend_backend_healthy", backend="flaky") == 1

    with pytest.raises(AllBackendsFailedError):
        await service.chat(HELLO)
    assert value(registry, "llmbackend_circuit_state", backend="flaky") == 2
    assert value(registry, "llmbackend_backend_healthy", backend="flaky") == 0

    await service.test_backends()
    assert value(registry, "llmbackend_backend_healthy", backend="flaky") == 1


async def test_budget_gauges_appear_only_when_the_budget_code_reports() -> None:
    """No budget samples by default; report_budget sets spent and the configured limit."""
    capped = fake("capped", max_spend_usd=5.0)
    service, registry = make(capped)
    assert value(registry, "llmbackend_budget_spent_usd", backend="capped") is None
    assert value(registry, "llmbackend_budget_limit_usd", backend="capped") is None

    service.report_budget("capped", 1.25)

    assert value(registry, "llmbackend_budget_spent_usd", backend="capped") == 1.25
    assert value(registry, "llmbackend_budget_limit_usd", backend="capped") == 5.0
    stats = service.get_statistics().backends["capped"]
    assert (stats.budget_spent_usd, stats.budget_limit_usd) == (1.25, 5.0)


async def test_cache_hit_hook_counts_a_cache_hit_not_a_success() -> None:
    """A request the cache answered counts as cache_hit for the backend that made it."""
    service, registry = make(fake("a"))
    observation = service.observer.request_started("chat", HELLO, "cid")

    observation.cache_hit("a")
    observation.succeeded("a", "fake-model")

    assert samples(registry, "llmbackend_requests_total") == {("a", "cache_hit", ""): 1}


async def test_two_services_do_not_collide_and_leave_the_global_registry_alone() -> None:
    """Each service owns a registry by default; the process-global one stays untouched."""
    before = {metric.name for metric in REGISTRY.collect()}
    one = LlmService(LlmSettings(), [fake("a")])
    two = LlmService(LlmSettings(), [fake("a")])

    await one.chat(HELLO)

    assert one.metrics_registry is not None
    assert two.metrics_registry is not None
    assert one.metrics_registry is not two.metrics_registry
    assert samples(one.metrics_registry, "llmbackend_requests_total") == {("a", "success", ""): 1}
    assert samples(two.metrics_registry, "llmbackend_requests_total") == {}
    assert {metric.name for metric in REGISTRY.collect()} == before


async def test_metrics_off_means_no_registry_and_no_metrics_observer() -> None:
    """With telemetry.enable_metrics false nothing is recorded anywhere."""
    off = TelemetrySettings(enable_metrics=False)
    service = LlmService(LlmSettings(telemetry=off), [fake("a")])

    await service.chat(HELLO)

    assert service.metrics_registry is None
    assert not isinstance(service.observer, PrometheusObserver)


@pytest.fixture
async def server() -> AsyncIterator[FakeProviderServer]:
    async with FakeProviderServer() as running:
        yield running


async def test_retries_and_tokens_over_http_match_what_the_provider_saw(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    """Against the fake provider server: one 429, then an answer whose usage is counted."""
    server.enqueue(Behavior.rate_limited(0), backend="primary")
    registry = CollectorRegistry()
    backend = {
        "name": "primary",
        "type": "openai_compatible",
        "base_url": server.url_for("primary"),
        "model_name": "fake-model",
    }
    async with open_service(
        {"backends": [backend]}, metrics_registry=registry, base_dir=tmp_path
    ) as service:
        response = await service.chat(HELLO)
        assert service.metrics_registry is registry

    assert server.counts["primary"] == 2
    assert samples(registry, "llmbackend_retries_total") == {("primary",): 1}
    assert samples(registry, "llmbackend_attempts_total") == {
        ("primary", "failure", "RateLimitedError"): 1,
        ("primary", "success", ""): 1,
    }
    assert response.prompt_tokens > 0
    assert samples(registry, "llmbackend_tokens_total") == {
        ("primary", "input", "fake-model"): response.prompt_tokens,
        ("primary", "output", "fake-model"): response.completion_tokens,
    }
