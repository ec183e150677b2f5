"""Choosing observers from settings, rendering metrics and serving them on /metrics."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from llmbackend._observer import NOOP_OBSERVER, CompositeObserver, Observer
from llmbackend._prometheus import PrometheusObserver
from llmbackend._telemetry import (
    add_metrics_route,
    build_observer,
    metrics_registry_for,
    render_metrics,
)
from llmbackend._tracing import TracingObserver
from llmbackend.errors import LlmBackendError
from llmbackend.models import ChatMessage, ChatRequest
from llmbackend.service import LlmService
from llmbackend.settings import LlmBackendConfig, LlmSettings, TelemetrySettings
from llmbackend.testing import FakeBackend

HELLO = ChatRequest(messages=[ChatMessage.user("hello")])


def fake() -> FakeBackend:
    return FakeBackend(LlmBackendConfig(name="a", custom_backend_type="fake"))


def settings(*, metrics: bool, tracing: bool) -> LlmSettings:
    return LlmSettings(telemetry=TelemetrySettings(enable_metrics=metrics, enable_tracing=tracing))


def test_the_settings_choose_the_observers() -> None:
    """Off: the no-op; metrics or tracing alone: that observer; both plus an extra one: a
    composite of all three."""
    registry = CollectorRegistry()
    extra = Observer()
    assert build_observer(settings(metrics=False, tracing=False), []) is NOOP_OBSERVER
    metrics_only = build_observer(
        settings(metrics=True, tracing=False), [], metrics_registry=registry
    )
    assert isinstance(metrics_only, PrometheusObserver)
    assert metrics_only.registry is registry
    tracing = build_observer(settings(metrics=False, tracing=True), [])
    assert isinstance(tracing, TracingObserver)
    everything = build_observer(
        settings(metrics=True, tracing=True),
        [],
        metrics_registry=CollectorRegistry(),
        tracer_provider=TracerProvider(),
        extra=[extra],
    )
    assert isinstance(everything, CompositeObserver)
    assert [type(o) for o in everything.observers] == [
        PrometheusObserver,
        TracingObserver,
        Observer,
    ]


def test_a_service_owns_a_fresh_registry_unless_given_one() -> None:
    """metrics_registry_for: the given registry, else a new one; none with metrics off."""
    given = CollectorRegistry()
    on, off = settings(metrics=True, tracing=False), settings(metrics=False, tracing=False)
    assert metrics_registry_for(on, given) is given
    fresh = metrics_registry_for(on)
    assert isinstance(fresh, CollectorRegistry)
    assert fresh is not metrics_registry_for(on)
    assert metrics_registry_for(off, given) is None


async def test_render_metrics_takes_a_service_or_a_registry() -> None:
    """Both forms give the same exposition text; a service without metrics says why."""
    service = LlmService(LlmSettings(), [fake()])
    await service.chat(HELLO)
    assert service.metrics_registry is not None

    text = render_metrics(service)

    assert text == render_metrics(service.metrics_registry)
    assert b'llmbackend_requests_total{backend="a",outcome="success",reason=""} 1.0' in text
    quiet = LlmService(settings(metrics=False, tracing=False), [])
    with pytest.raises(LlmBackendError, match="enable_metrics is false"):
        render_metrics(quiet)


async def test_metrics_route_serves_the_text_format_over_http() -> None:
    """add_metrics_route puts GET /metrics on an application, in Prometheus' format."""
    registry = CollectorRegistry()
    service = LlmService(LlmSettings(), [fake()], metrics_registry=registry)
    await service.chat(HELLO)
    app = web.Application()
    add_metrics_route(app, service)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            body = await response.read()
            content_type = response.headers["Content-Type"]
    finally:
        await runner.cleanup()

    assert response.status == 200
    assert content_type.startswith("text/plain; version=")
    assert body == render_metrics(registry)
