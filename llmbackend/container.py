"""The composition root: the only place that knows how the SDK's parts are wired together.

Library classes take their collaborators through ``__init__`` and never import this module.
:func:`open_service` is the one entry point that validates, initialises and shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import attrs
from dependency_injector import containers, providers

from llmbackend._logging import LoggerFactory
from llmbackend._memory import ConversationMemory
from llmbackend._observer import Observer
from llmbackend._prompting import PromptPipeline, check_prompt_builders, prompt_builder_table
from llmbackend._redaction import Redactor, redactor_for
from llmbackend._registry import PluginRegistry, default_registry
from llmbackend._state_guard import build_state_guard, needs_store
from llmbackend._telemetry import build_observer, metrics_registry_for
from llmbackend._tokens import ESTIMATE, TokenCounter, default_token_counter
from llmbackend.backends.base import BaseLlmBackend
from llmbackend.config import load_settings
from llmbackend.errors import ConfigProblem, ConfigurationError, LlmBackendError
from llmbackend.plugins import ILlmBackendPlugin
from llmbackend.prompts import PromptBuilderFactory
from llmbackend.service import LlmService
from llmbackend.settings import CacheProvider, LlmBackendConfig, LlmSettings
from llmbackend.state._factory import open_store
from llmbackend.state._protocols import StateStore

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

__all__ = ["Container", "SessionHolder", "open_service"]


@attrs.define
class SessionHolder:
    """Hands the shared aiohttp session to backends, which borrow it per call."""

    session: aiohttp.ClientSession | None = None

    def __call__(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            raise LlmBackendError("the service is not open: use `async with open_service(...)`")
        return self.session


async def _http_session(
    settings: LlmSettings, holder: SessionHolder
) -> AsyncIterator[aiohttp.ClientSession]:
    """One connection pool for every backend; attempt deadlines are applied per call."""
    connector = aiohttp.TCPConnector(limit=settings.max_connections, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_seconds)
    session = aiohttp.ClientSession(connector=connector, timeout=timeout, raise_for_status=False)
    holder.session = session
    try:
        yield session
    finally:
        holder.session = None
        await session.close()


def effective_backend_config(settings: LlmSettings, config: LlmBackendConfig) -> LlmBackendConfig:
    """The backend config with global defaults filled in where the backend sets none."""
    return attrs.evolve(
        config,
        temperature=settings.default_temperature
        if config.temperature is None
        else config.temperature,
        max_output_tokens=config.max_output_tokens or settings.default_max_tokens,
        timeout_seconds=config.timeout_seconds or settings.timeout_seconds,
        max_retries=settings.max_retries if config.max_retries is None else config.max_retries,
        first_token_timeout_seconds=config.first_token_timeout_seconds
        or settings.first_token_timeout_seconds,
        stream_idle_timeout_seconds=config.stream_idle_timeout_seconds
        or settings.stream_idle_timeout_seconds,
    )


def _build_backends(
    settings: LlmSettings,
    registry: PluginRegistry,
    logger_factory: LoggerFactory,
    session_factory: SessionHolder,
) -> list[BaseLlmBackend]:
    return [
        registry.create_backend(
            effective_backend_config(settings, config), logger_factory, session_factory
        )
        for config in settings.backends
    ]


def _prompt_pipeline(
    settings: LlmSettings,
    table: Mapping[str, PromptBuilderFactory],
    memory_store: StateStore | None,
    token_counter: TokenCounter,
    logger_factory: LoggerFactory,
) -> PromptPipeline:
    memory = None
    if memory_store is not None:
        memory = ConversationMemory(
            memory_store,
            settings.memory,
            token_counter=token_counter,
            logger_factory=logger_factory,
        )
    return PromptPipeline.build(
        settings, settings.backends, table=table, memory=memory, logger_factory=logger_factory
    )


class Container(containers.DeclarativeContainer):
    """Wires settings → logger factory → session → plugin registry → backends → observer
    → service. ``metrics_registry``, ``tracer_provider`` and ``extra_observers`` may be
    given; by default metrics go to a registry of the service's own."""

    settings = providers.Dependency(instance_of=LlmSettings)
    registry = providers.Dependency(instance_of=PluginRegistry)
    given_metrics_registry: providers.Object[CollectorRegistry | None] = providers.Object(None)
    tracer_provider: providers.Object[TracerProvider | None] = providers.Object(None)
    extra_observers: providers.Object[tuple[Observer, ...]] = providers.Object(())
    redactor = providers.Singleton(redactor_for, settings)
    logger_factory = providers.Singleton(
        LoggerFactory,
        log_prompts=settings.provided.telemetry.log_prompts,
        log_responses=settings.provided.telemetry.log_responses,
        redactor=redactor,
    )
    session_holder = providers.Singleton(SessionHolder)
    http_session = providers.Resource(_http_session, settings=settings, holder=session_holder)
    backends = providers.Singleton(
        _build_backends,
        settings=settings,
        registry=registry,
        logger_factory=logger_factory,
        session_factory=session_holder,
    )
    metrics_registry = providers.Singleton(metrics_registry_for, settings, given_metrics_registry)
    observer = providers.Singleton(
        build_observer,
        settings,
        backends,
        metrics_registry=metrics_registry,
        tracer_provider=tracer_provider,
        redactor=redactor,
        extra=extra_observers,
    )
    #: The shared-state store (opened by ``open_service`` when a feature needs one).
    state_store: providers.Object[StateStore | None] = providers.Object(None)
    state = providers.Singleton(build_state_guard, settings, state_store, logger_factory)
    #: Prompt builders by name (built-in, registered, from plugins), the conversation
    #: memory's store (opened by ``open_service`` when ``memory.enabled``) and tokenizer.
    prompt_builders: providers.Object[Mapping[str, PromptBuilderFactory]] = providers.Object({})
    memory_store: providers.Object[StateStore | None] = providers.Object(None)
    token_counter: providers.Object[TokenCounter] = providers.Object(ESTIMATE)
    prompts = providers.Singleton(
        _prompt_pipeline, settings, prompt_builders, memory_store, token_counter, logger_factory
    )
    service = providers.Singleton(
        LlmService,
        settings=settings,
        backends=backends,
        logger_factory=logger_factory,
        observer=observer,
        metrics_registry=metrics_registry,
        state=state,
        prompts=prompts,
    )


@contextlib.asynccontextmanager
async def open_service(
    settings: LlmSettings | Mapping[str, object] | str | os.PathLike[str] | None = None,
    *,
    plugins: Iterable[ILlmBackendPlugin] = (),
    registry: PluginRegistry | None = None,
    environ: Mapping[str, str] | None = None,
    secret_resolver: Callable[[str], str | None] | None = None,
    base_dir: Path | None = None,
    metrics_registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    observers: Sequence[Observer] = (),
    token_counter: TokenCounter | None = None,
) -> AsyncIterator[LlmService]:
    """Validate the settings, build the service, yield it, and shut everything down.

    Every problem (settings, unknown backend types, plugins named in ``specific_plugins``)
    is reported before anything starts: a bad config never half-starts the service.
    ``plugins`` are registered on top of the discovered ones for this service only.

    Telemetry: with ``telemetry.enable_metrics`` the service records into
    ``metrics_registry`` (default: a registry of its own, see ``service.metrics_registry``);
    with ``telemetry.enable_tracing`` it makes spans with ``tracer_provider`` (default: the
    global OpenTelemetry provider). ``observers`` receive every event as well.

    Conversation memory (``memory.enabled``) opens its own store and counts tokens with
    ``token_counter`` (default: tiktoken when installed, else the estimate).
    """
    # Reading files and importing plugins is blocking work: keep it off the event loop.
    resolved, plugin_registry, builders, counter, redactor = await asyncio.to_thread(
        functools.partial(
            _prepare,
            settings,
            plugins=plugins,
            registry=registry,
            environ=environ,
            secret_resolver=secret_resolver,
            base_dir=base_dir,
            token_counter=token_counter,
        )
    )
    async with contextlib.AsyncExitStack() as stack:
        store: StateStore | None = None
        if needs_store(resolved):
            caching = resolved.caching
            store = await stack.enter_async_context(
                open_store(caching.provider.value, caching.connection_string, caching.key_prefix)
            )
        memory_store: StateStore | None = None
        if resolved.memory.enabled:
            memory = resolved.memory
            memory_store = await stack.enter_async_context(
                open_store(
                    memory.provider.value,
                    memory.effective_connection_string(resolved.caching),
                    memory.key_prefix,
                )
            )
        container = Container(
            settings=resolved,
            registry=plugin_registry,
            given_metrics_registry=providers.Object(metrics_registry),
            tracer_provider=providers.Object(tracer_provider),
            extra_observers=providers.Object(tuple(observers)),
            state_store=providers.Object(store),
            prompt_builders=providers.Object(builders),
            memory_store=providers.Object(memory_store),
            token_counter=providers.Object(counter),
            # Compiled in the worker thread: a large secret pattern takes milliseconds.
            redactor=providers.Object(redactor),
        )
        service: LlmService = container.service()  # builds the backends; no HTTP yet
        try:
            await _maybe_await(container.init_resources())
            service.start()
            yield service
        finally:
            await service.aclose()
            await _maybe_await(container.shutdown_resources())


def _preload(settings: LlmSettings, registry: PluginRegistry) -> None:
    """Import, in the worker thread, the modules building the service will need: provider
    modules, the telemetry integrations and the store drivers. An import on the event loop
    is a stall of tens of milliseconds for every other task."""
    for config in settings.backends:
        plugin = registry.plugin_for(config.resolved_type)
        preload = getattr(plugin, "preload", None)  # optional: the built-in plugin has one
        if config.enabled and callable(preload):
            preload(config.resolved_type)
    modules = []
    if settings.telemetry.enable_metrics:
        modules.append("llmbackend._prometheus")
    if settings.telemetry.enable_tracing:
        modules.append("llmbackend._tracing")
    stores = {settings.caching.provider} if needs_store(settings) else set()
    if stores:  # the cache, limiter and ledger features
        modules += [
            "llmbackend.state._cache",
            "llmbackend.state._limiter",
            "llmbackend.state._budget",
        ]
    if settings.memory.enabled:
        stores.add(settings.memory.provider)
    modules += [_STORE_MODULES[kind] for kind in stores if kind in _STORE_MODULES]
    for module in modules:
        with contextlib.suppress(ImportError):  # opening the store reports a missing extra
            importlib.import_module(module)
    if settings.caching.enabled:
        from llmbackend.state._cache import response_converter

        response_converter()  # generated (un)structure code, built here once


#: The store modules that import a driver (aiosqlite, redis).
_STORE_MODULES = {
    CacheProvider.SQLITE: "llmbackend.state._sqlite",
    CacheProvider.REDIS: "llmbackend.state._redis",
}


async def _maybe_await(result: Awaitable[None] | None) -> None:
    # dependency-injector returns an awaitable only when some resource is async.
    if result is not None:
        await result


def _prepare(
    settings: LlmSettings | Mapping[str, object] | str | os.PathLike[str] | None,
    *,
    plugins: Iterable[ILlmBackendPlugin],
    registry: PluginRegistry | None,
    environ: Mapping[str, str] | None,
    secret_resolver: Callable[[str], str | None] | None,
    base_dir: Path | None,
    token_counter: TokenCounter | None,
) -> tuple[LlmSettings, PluginRegistry, dict[str, PromptBuilderFactory], TokenCounter, Redactor]:
    """Load and check everything a service needs; raise before anything starts."""
    resolved = load_settings(settings, environ=environ, secret_resolver=secret_resolver)
    plugin_registry = (registry or default_registry()).copy()
    for plugin in plugins:
        plugin_registry.register(plugin, source="runtime")
    plugin_registry.load_from_settings(resolved.plugins, base_dir=base_dir or Path.cwd())
    builders = prompt_builder_table(plugin_registry)
    problems: Sequence[ConfigProblem] = [
        *plugin_registry.check_backends(resolved.backends),
        *check_prompt_builders(resolved.backends, builders),
    ]
    if problems:
        raise ConfigurationError(problems)
    _preload(resolved, plugin_registry)
    if token_counter is None:
        # Only a conversation's trimming counts tokens; loading a tokenizer reads a file,
        # so it happens here, in this worker thread, never on the event loop.
        token_counter = default_token_counter() if resolved.memory.enabled else ESTIMATE
    return resolved, plugin_registry, builders, token_counter, redactor_for(resolved)
