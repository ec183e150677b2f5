"""The settings tree: one frozen attrs value per section, with the documented defaults.

Load settings with :func:`llmbackend.load_settings` (dict, JSON, TOML, environment); it
validates everything and reports every problem at once with its path.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from attrs import field, frozen

__all__ = [
    "BUILTIN_BACKEND_TYPES",
    "DEFAULT_BASE_URLS",
    "DEFAULT_LATENCY_BUCKETS",
    "CacheProvider",
    "CachingSettings",
    "CircuitBreakerSettings",
    "HealthCheckSettings",
    "LlmBackendConfig",
    "LlmSettings",
    "MemorySettings",
    "PluginSettings",
    "RateLimitSettings",
    "SecretsProvider",
    "SecretsSettings",
    "SelectionStrategy",
    "SimultaneousPrimary",
    "SpendResetPeriod",
    "StreamRecovery",
    "TelemetrySettings",
    "Weekday",
]


class SelectionStrategy(enum.StrEnum):
    """How the service orders (or fans out to) backends for a request."""

    FAILOVER = "failover"
    ROUND_ROBIN = "round_robin"
    LOWEST_LATENCY = "lowest_latency"
    SPECIFIC = "specific"
    RANDOM = "random"
    SIMULTANEOUS = "simultaneous"


class CacheProvider(enum.StrEnum):
    MEMORY = "memory"
    SQLITE = "sqlite"
    REDIS = "redis"


class SecretsProvider(enum.StrEnum):
    CONFIGURATION = "configuration"
    ENVIRONMENT_VARIABLES = "environment_variables"
    FILE = "file"
    CUSTOM = "custom"


class SpendResetPeriod(enum.StrEnum):
    NEVER = "never"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


class StreamRecovery(enum.StrEnum):
    """What a stream does when it breaks after content reached the caller."""

    #: Raise ``StreamInterruptedError`` with the partial text and usage.
    RAISE = "raise"
    #: Emit ``StreamRestarted`` and stream the whole answer again from the next backend.
    RESTART = "restart"
    #: Ask the next backend to continue the partial text (assistant prefill); restart if refused.
    CONTINUE = "continue"


class SimultaneousPrimary(enum.StrEnum):
    """Which answer the simultaneous strategy returns as the primary one."""

    FASTEST = "fastest"
    PRIORITY = "priority"


class Weekday(enum.StrEnum):
    MONDAY = "monday"
    TUESDAY = "tuesday"
    WEDNESDAY = "wednesday"
    THURSDAY = "thursday"
    FRIDAY = "friday"
    SATURDAY = "saturday"
    SUNDAY = "sunday"


#: Backend types built into the SDK (the built-in plugin provides those it implements).
BUILTIN_BACKEND_TYPES: tuple[str, ...] = (
    "openai",
    "azure_openai",
    "anthropic",
    "gemini",
    "cohere",
    "ollama",
    "lmstudio",
    "llamacpp",
    "easynmt",
    "openai_compatible",
)

#: The ``base_url`` a built-in backend uses when its config names none.
DEFAULT_BASE_URLS: Mapping[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "cohere": "https://api.cohere.com",
    "ollama": "http://localhost:11434",
    "lmstudio": "http://localhost:1234/v1",
    "llamacpp": "http://localhost:8080",
    "easynmt": "http://localhost:24080",
}


def _headers(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(value) if value else {}


def _headers_repr(value: Mapping[str, str]) -> str:
    # Header values are often credentials (Authorization, api-key): show only the names.
    return repr(dict.fromkeys(value, "[REDACTED]"))


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(value) if value else ()


@frozen(kw_only=True)
class LlmBackendConfig:
    """One configured backend. ``None`` parameters fall back to the global settings."""

    name: str
    #: A built-in type (see :data:`BUILTIN_BACKEND_TYPES`); ``custom`` (or omitted) when
    #: ``custom_backend_type`` names a plugin type.
    type: str | None = None
    #: Selects a plugin-provided backend type (case-insensitive).
    custom_backend_type: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    model_name: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop_sequences: tuple[str, ...] = field(default=(), converter=_strings)
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    #: Lower is tried first.
    priority: int = 100
    weight: float = 1.0
    enabled: bool = True
    #: Bounds one attempt; the request's total deadline is ``LlmSettings.timeout_seconds``.
    timeout_seconds: float | None = None
    #: Streams: longest wait for the first event (default: the global setting).
    first_token_timeout_seconds: float | None = None
    #: Streams: longest silence between two events (default: the global setting).
    stream_idle_timeout_seconds: float | None = None
    max_retries: int | None = None
    additional_headers: Mapping[str, str] = field(
        factory=dict, converter=_headers, repr=_headers_repr
    )
    deployment_name: str | None = None
    api_version: str | None = None
    organization_id: str | None = None
    anthropic_version: str | None = None
    project_id: str | None = None
    location: str | None = None
    enable_streaming: bool = True
    enable_function_calling: bool = True
    cost_per_million_input_tokens: float | None = None
    cost_per_million_output_tokens: float | None = None
    #: Price of input tokens served from the provider's prompt cache (default: the input price).
    cost_per_million_cached_input_tokens: float | None = None
    max_spend_usd: float | None = None
    spend_reset_period: SpendResetPeriod = field(
        default=SpendResetPeriod.NEVER, converter=SpendResetPeriod
    )
    spend_reset_day_of_week: Weekday = field(default=Weekday.MONDAY, converter=Weekday)
    spend_reset_day_of_month: int = 1
    log_budget_exceeded: bool = True
    #: This backend's own limits (requests per window, concurrency, queue), besides the
    #: global ``rate_limit``.
    rate_limit: RateLimitSettings | None = None
    #: Tokens (input estimate + max_tokens) this backend may be sent per minute.
    tokens_per_minute: int | None = None
    #: How requests become this backend's prompt: ``default`` (system message, ``{{ name }}``
    #: variables, conversation memory), ``translation``, or a name a plugin registers.
    prompt_builder_type: str = "default"

    @property
    def resolved_type(self) -> str:
        """The backend type a plugin must provide, lower-cased."""
        chosen = self.custom_backend_type or self.type or ""
        return chosen.lower()

    @property
    def effective_base_url(self) -> str | None:
        """``base_url`` or the default for a built-in type."""
        return self.base_url or DEFAULT_BASE_URLS.get(self.resolved_type)


@frozen(kw_only=True)
class CircuitBreakerSettings:
    enabled: bool = True
    failure_threshold: int = 5
    duration_of_break_seconds: float = 30.0
    sampling_duration_seconds: float = 60.0
    minimum_throughput: int = 10
    #: Calls let through at once while half-open; the first outcome decides.
    half_open_max_probes: int = 1


@frozen(kw_only=True)
class RateLimitSettings:
    enabled: bool = False
    max_requests: int = 100
    window_seconds: float = 60.0
    max_concurrent_requests: int = 10
    queue_limit: int = 100
    #: Longest wait in the queue before the SDK's own ``RateLimitedError(source="sdk")``.
    queue_timeout_seconds: float = 30.0


@frozen(kw_only=True)
class CachingSettings:
    enabled: bool = False
    provider: CacheProvider = field(default=CacheProvider.MEMORY, converter=CacheProvider)
    expiration_minutes: float = 60.0
    max_cache_size_mb: float = 100.0
    connection_string: str | None = field(default=None, repr=False)
    key_prefix: str = "llm:"


@frozen(kw_only=True)
class HealthCheckSettings:
    #: Periodic checks (the first after one interval) and passive signals from real calls.
    enabled: bool = True
    interval_seconds: float = 60.0
    timeout_seconds: float = 10.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2


@frozen(kw_only=True)
class SecretsSettings:
    provider: SecretsProvider = field(
        default=SecretsProvider.CONFIGURATION, converter=SecretsProvider
    )
    environment_variable_prefix: str = "LLM_"
    #: For ``provider = "file"``: a JSON or TOML file mapping backend names to API keys.
    file_path: str | None = None


#: Latency histogram buckets in seconds: LLM calls take from tens of milliseconds to minutes.
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0
)  # fmt: skip


def _floats(value: Any) -> tuple[float, ...]:
    return tuple(value) if value else ()


@frozen(kw_only=True)
class TelemetrySettings:
    #: Prometheus metrics in a registry the service owns (or one passed to open_service).
    enable_metrics: bool = True
    #: OpenTelemetry spans through the global tracer provider (or one passed to open_service).
    enable_tracing: bool = False
    log_prompts: bool = False
    log_responses: bool = False
    service_name: str = "llmbackend"
    enable_cost_tracking: bool = True
    #: Buckets of the latency and time-to-first-token histograms, in seconds, increasing.
    latency_buckets_seconds: tuple[float, ...] = field(
        default=DEFAULT_LATENCY_BUCKETS, converter=_floats
    )
    #: Extra regular expressions whose matches are redacted from logs, errors and spans.
    redact_patterns: tuple[str, ...] = field(default=(), converter=_strings)


@frozen(kw_only=True)
class MemorySettings:
    """Conversation memory: the history of each ``conversation_id``, kept in a state store."""

    #: Keep history for requests that carry a ``conversation_id`` (off: such requests fail).
    enabled: bool = False
    provider: CacheProvider = field(default=CacheProvider.MEMORY, converter=CacheProvider)
    #: SQLite path or Redis URL; default: ``caching.connection_string`` when
    #: ``caching.provider`` is the same provider.
    connection_string: str | None = field(default=None, repr=False)
    #: Prompt of a conversation (system message, history, new messages), trimmed to this many
    #: tokens by dropping the oldest turns; also the most history that is stored.
    default_token_limit: int = 4096
    #: A conversation is forgotten this long after its last turn.
    ttl_minutes: float = 60.0
    #: Size bound of the memory and SQLite stores (least recently used / soonest to expire
    #: go first); Redis relies on the TTL and its ``maxmemory`` policy.
    max_size_mb: float = 100.0
    #: Prepended to conversation keys; distinct from ``caching.key_prefix`` so the cache's
    #: size bound never evicts a conversation (and the reverse).
    key_prefix: str = "llm-mem:"

    def effective_connection_string(self, caching: CachingSettings) -> str | None:
        """``connection_string``, or the cache's when both use the same provider."""
        if self.connection_string or caching.provider is not self.provider:
            return self.connection_string
        return caching.connection_string


@frozen(kw_only=True)
class PluginSettings:
    enabled: bool = True
    plugin_directory: str = "plugins"
    search_subdirectories: bool = True
    load_on_startup: bool = True
    #: Plugin files or modules to load explicitly; a failure here is an error, not a warning.
    specific_plugins: tuple[str, ...] = field(default=(), converter=_strings)


def _backends(value: Any) -> tuple[LlmBackendConfig, ...]:
    return tuple(value) if value else ()


@frozen(kw_only=True)
class LlmSettings:
    """The whole configuration of a service."""

    backends: tuple[LlmBackendConfig, ...] = field(default=(), converter=_backends)
    selection_strategy: SelectionStrategy = field(
        default=SelectionStrategy.FAILOVER, converter=SelectionStrategy
    )
    #: Total deadline of one request across all retries and failovers.
    timeout_seconds: float = 120.0
    max_retries: int = 3
    use_exponential_backoff: bool = True
    retry_delay_ms: float = 1000.0
    default_temperature: float = 0.7
    default_max_tokens: int = 2000
    #: Streams: longest wait for the first event of an attempt.
    first_token_timeout_seconds: float = 30.0
    #: Streams: longest silence between two events before the stream counts as stalled.
    stream_idle_timeout_seconds: float = 30.0
    #: What a stream does when it breaks after content reached the caller.
    stream_recovery: StreamRecovery = field(default=StreamRecovery.RAISE, converter=StreamRecovery)
    #: Simultaneous strategy: the primary answer is the fastest success or the best priority.
    simultaneous_primary: SimultaneousPrimary = field(
        default=SimultaneousPrimary.FASTEST, converter=SimultaneousPrimary
    )
    #: Whether a content-filter refusal may be retried on another backend (default: final).
    failover_on_content_filter: bool = False
    #: Size of the shared aiohttp connection pool (0 = unbounded).
    max_connections: int = 100
    #: Bounds establishing a connection, separately from the request deadline.
    connect_timeout_seconds: float = 10.0
    circuit_breaker: CircuitBreakerSettings = field(factory=CircuitBreakerSettings)
    rate_limit: RateLimitSettings = field(factory=RateLimitSettings)
    caching: CachingSettings = field(factory=CachingSettings)
    health_check: HealthCheckSettings = field(factory=HealthCheckSettings)
    secrets: SecretsSettings = field(factory=SecretsSettings)
    telemetry: TelemetrySettings = field(factory=TelemetrySettings)
    memory: MemorySettings = field(factory=MemorySettings)
    plugins: PluginSettings = field(factory=PluginSettings)

    def backend(self, name: str) -> LlmBackendConfig:
        """The backend config called ``name`` (KeyError when there is none)."""
        for config in self.backends:
            if config.name == name:
                return config
        raise KeyError(name)
