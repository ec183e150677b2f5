"""Choosing a service's observers from ``telemetry`` settings, and exposing its metrics.

Nothing here imports ``prometheus_client`` or OpenTelemetry at module level: they load when
a service turns them on, so ``import llmbackend`` stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from llmbackend._observer import Observer, compose
from llmbackend._redaction import Redactor
from llmbackend.errors import LlmBackendError
from llmbackend.settings import LlmSettings

if TYPE_CHECKING:
    from aiohttp import web
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from llmbackend.backends.base import BaseLlmBackend
    from llmbackend.service import LlmService

__all__ = ["add_metrics_route", "build_observer", "metrics_registry_for", "render_metrics"]


def metrics_registry_for(
    settings: LlmSettings, given: CollectorRegistry | None = None
) -> CollectorRegistry | None:
    """The registry a service records into: ``given``, else a new one the service owns
    (never the process-global one); ``None`` when ``telemetry.enable_metrics`` is off."""
    if not settings.telemetry.enable_metrics:
        return None
    if given is not None:
        return given
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


def build_observer(
    settings: LlmSettings,
    backends: Sequence[BaseLlmBackend],
    *,
    metrics_registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    redactor: Redactor | None = None,
    extra: Sequence[Observer] = (),
) -> Observer:
    """The observer a service reports to: Prometheus metrics (into ``metrics_registry``,
    when metrics are on), traces (with ``tracer_provider`` or the global provider, when
    ``telemetry.enable_tracing`` is on) and ``extra`` observers, composed."""
    telemetry = settings.telemetry
    parts: list[Observer] = []
    if telemetry.enable_metrics and metrics_registry is not None:
        from llmbackend._prometheus import PrometheusObserver

        buckets = telemetry.latency_buckets_seconds
        parts.append(PrometheusObserver(metrics_registry, backends, buckets=buckets))
    if telemetry.enable_tracing:
        from llmbackend._tracing import TracingObserver

        parts.append(TracingObserver(tracer_provider, redactor=redactor))
    return compose([*parts, *extra])


def render_metrics(source: LlmService | CollectorRegistry) -> bytes:
    """The Prometheus text exposition of a service's metrics (or of a registry)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = source if isinstance(source, CollectorRegistry) else source.metrics_registry
    if registry is None:
        raise LlmBackendError("this service records no metrics: telemetry.enable_metrics is false")
    return generate_latest(registry)


def add_metrics_route(
    app: web.Application, source: LlmService | CollectorRegistry, path: str = "/metrics"
) -> None:
    """Serve :func:`render_metrics` of ``source`` at ``GET path`` on an aiohttp app."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(
            body=render_metrics(source), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app.router.add_get(path, metrics)
