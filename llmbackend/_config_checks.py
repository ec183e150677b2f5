"""Semantic checks on structured settings: what types alone cannot say.

They run on the best-effort settings even when some values failed to structure, so a user
sees a duplicate backend name and a misspelt key in the same error. Checks that need a plugin
(whether a ``custom_backend_type`` exists, what it requires) belong to the plugin registry.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Final

import attrs

from llmbackend._config_problems import KeyPath, ProblemLog, find_suggestion, format_path
from llmbackend._converter import field_types, normalise_token
from llmbackend._redaction import Redactor
from llmbackend.settings import (
    BUILTIN_BACKEND_TYPES,
    DEFAULT_BASE_URLS,
    CacheProvider,
    CachingSettings,
    CircuitBreakerSettings,
    HealthCheckSettings,
    LlmBackendConfig,
    LlmSettings,
    MemorySettings,
    RateLimitSettings,
    TelemetrySettings,
)

__all__ = ["CUSTOM_TYPE", "RANGES", "check_settings", "normalise_backend_types"]

#: The ``type`` that says "a plugin's type, named by ``custom_backend_type``".
CUSTOM_TYPE: Final = "custom"
_KNOWN_TYPES: Final = (*BUILTIN_BACKEND_TYPES, CUSTOM_TYPE)
_TYPE_LOOKUP: Final = {normalise_token(name): name for name in _KNOWN_TYPES}


@attrs.frozen
class _Range:
    low: float
    high: float | None = None
    exclusive_low: bool = False

    def allows(self, value: float) -> bool:
        above = value > self.low if self.exclusive_low else value >= self.low
        return above and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        if self.high is not None:
            return f"must be between {_number(self.low)} and {_number(self.high)}"
        return ("must be greater than " if self.exclusive_low else "must be at least ") + _number(
            self.low
        )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


_POSITIVE: Final = _Range(0, exclusive_low=True)
_NON_NEGATIVE: Final = _Range(0)
_AT_LEAST_ONE: Final = _Range(1)
_TEMPERATURE: Final = _Range(0, 2)
_PENALTY: Final = _Range(-2, 2)

#: Allowed ranges by settings class and field; ``None`` values are not checked.
RANGES: Final[Mapping[type, Mapping[str, _Range]]] = {
    LlmSettings: {
        "timeout_seconds": _POSITIVE,
        "max_retries": _NON_NEGATIVE,
        "retry_delay_ms": _NON_NEGATIVE,
        "default_temperature": _TEMPERATURE,
        "default_max_tokens": _AT_LEAST_ONE,
        "max_connections": _NON_NEGATIVE,  # 0 means an unbounded pool
        "first_token_timeout_seconds": _POSITIVE,
        "stream_idle_timeout_seconds": _POSITIVE,
        "connect_timeout_seconds": _POSITIVE,
    },
    LlmBackendConfig: {
        "temperature": _TEMPERATURE,
        "top_p": _Range(0, 1),
        "frequency_penalty": _PENALTY,
        "presence_penalty": _PENALTY,
        "max_input_tokens": _AT_LEAST_ONE,
        "max_output_tokens": _AT_LEAST_ONE,
        "weight": _POSITIVE,
        "timeout_seconds": _POSITIVE,
        "first_token_timeout_seconds": _POSITIVE,
        "stream_idle_timeout_seconds": _POSITIVE,
        "max_retries": _NON_NEGATIVE,
        "cost_per_million_input_tokens": _NON_NEGATIVE,
        "cost_per_million_output_tokens": _NON_NEGATIVE,
        "cost_per_million_cached_input_tokens": _NON_NEGATIVE,
        "max_spend_usd": _NON_NEGATIVE,
        "spend_reset_day_of_month": _Range(1, 31),
        "tokens_per_minute": _AT_LEAST_ONE,
    },
    CircuitBreakerSettings: {
        "failure_threshold": _AT_LEAST_ONE,
        "duration_of_break_seconds": _POSITIVE,
        "sampling_duration_seconds": _POSITIVE,
        "minimum_throughput": _AT_LEAST_ONE,
        "half_open_max_probes": _AT_LEAST_ONE,
    },
    RateLimitSettings: {
        "max_requests": _AT_LEAST_ONE,
        "window_seconds": _POSITIVE,
        "max_concurrent_requests": _AT_LEAST_ONE,
        "queue_limit": _AT_LEAST_ONE,
        "queue_timeout_seconds": _POSITIVE,
    },
    CachingSettings: {"expiration_minutes": _POSITIVE, "max_cache_size_mb": _POSITIVE},
    HealthCheckSettings: {
        "interval_seconds": _POSITIVE,
        "timeout_seconds": _POSITIVE,
        "unhealthy_threshold": _AT_LEAST_ONE,
        "healthy_threshold": _AT_LEAST_ONE,
    },
    MemorySettings: {
        "default_token_limit": _AT_LEAST_ONE,
        "ttl_minutes": _POSITIVE,
        "max_size_mb": _POSITIVE,
    },
}

#: A prompt builder name: which names exist is known once plugins are loaded (open time).
_BUILDER_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def normalise_backend_types(settings: LlmSettings) -> LlmSettings:
    """Spell each known ``type`` canonically (``AzureOpenAI`` → ``azure_openai``).

    Plugins are looked up by the exact lower-cased type, so the variants enums tolerate must
    be folded here, once, rather than by every consumer. ``settings`` comes back unchanged
    (the same object) when nothing needed folding.
    """
    backends = []
    for backend in settings.backends:
        canonical = _TYPE_LOOKUP.get(normalise_token(backend.type or ""))
        if canonical is not None and canonical != backend.type:
            backend = attrs.evolve(backend, type=canonical)  # noqa: PLW2901 - replacing on purpose
        backends.append(backend)
    if all(new is old for new, old in zip(backends, settings.backends, strict=True)):
        return settings
    return attrs.evolve(settings, backends=tuple(backends))


def check_settings(
    settings: LlmSettings,
    backends: Sequence[tuple[int, LlmBackendConfig]],
    log: ProblemLog,
) -> None:
    """Report every semantic problem; ``backends`` pairs each config with its source index."""
    _check_ranges(settings, (), log)
    for name, type_ in field_types(LlmSettings).items():
        if attrs.has(type_):
            _check_ranges(getattr(settings, name), (name,), log)
    _check_telemetry(settings.telemetry, log)
    caching = settings.caching
    if caching.provider in {CacheProvider.REDIS, CacheProvider.SQLITE} and not (
        caching.connection_string
    ):
        log.add(
            ("caching", "connection_string"),
            f"required when caching.provider is {caching.provider.value!r}",
        )
    _check_memory(settings, log)
    first_index: dict[str, int] = {}
    for index, backend in backends:
        path: KeyPath = ("backends", index)
        if not backend.name.strip():
            log.add((*path, "name"), "must not be empty")
        elif backend.name in first_index:
            shown = log.show((*path, "name"), backend.name)
            also = format_path(("backends", first_index[backend.name]))
            log.add((*path, "name"), f"duplicate backend name {shown} (also {also})")
        else:
            first_index[backend.name] = index
        _check_type(backend, path, log)
        _check_budget(backend, path, log)
        _check_ranges(backend, path, log)
        if not _BUILDER_NAME.fullmatch(backend.prompt_builder_type.strip()):
            shown = log.show((*path, "prompt_builder_type"), backend.prompt_builder_type)
            log.add(
                (*path, "prompt_builder_type"),
                f"{shown} is not a prompt builder name (letters, digits, '_', '-', '.')",
            )


def _check_memory(settings: LlmSettings, log: ProblemLog) -> None:
    memory, caching = settings.memory, settings.caching
    if not memory.enabled:
        return  # a section that is off needs no location
    location = memory.effective_connection_string(caching)
    if memory.provider in {CacheProvider.REDIS, CacheProvider.SQLITE} and not location:
        log.add(
            ("memory", "connection_string"),
            f"required when memory.provider is {memory.provider.value!r} (or set"
            f" caching.connection_string with caching.provider {memory.provider.value!r})",
        )
    one_sqlite_file = (
        memory.provider is CacheProvider.SQLITE
        and caching.provider is CacheProvider.SQLITE
        and location == caching.connection_string
    )
    ours, theirs = memory.key_prefix, caching.key_prefix
    if one_sqlite_file and (ours.startswith(theirs) or theirs.startswith(ours)):
        # SQLite bounds a store's size over every key under its prefix: nested prefixes
        # would let the cache's bound evict conversations (and the reverse).
        log.add(
            ("memory", "key_prefix"),
            f"{ours!r} overlaps caching.key_prefix {theirs!r} in the same SQLite file;"
            " use a prefix neither starts with (default 'llm-mem:')",
        )


def _check_telemetry(telemetry: TelemetrySettings, log: ProblemLog) -> None:
    buckets = telemetry.latency_buckets_seconds
    if not buckets or buckets[0] <= 0 or any(b <= a for a, b in itertools.pairwise(buckets)):
        log.add(
            ("telemetry", "latency_buckets_seconds"),
            "must be one or more positive numbers in increasing order",
        )
    for index, pattern in enumerate(telemetry.redact_patterns):
        try:
            re.compile(pattern)  # positions in the message are the pattern's own
            Redactor(patterns=(pattern,))  # and it must fit beside the built-in patterns
        except re.error as exc:
            log.add(("telemetry", "redact_patterns", index), f"not a regular expression: {exc}")


def _check_ranges(section: object, path: KeyPath, log: ProblemLog) -> None:
    for name, allowed in RANGES.get(type(section), {}).items():
        value = getattr(section, name)
        if value is not None and not allowed.allows(value):
            log.add((*path, name), f"{allowed}, got {log.show((*path, name), value)}")


def _check_budget(backend: LlmBackendConfig, path: KeyPath, log: ProblemLog) -> None:
    """A spend limit needs prices: without them no call can be priced or reserved."""
    priced = (
        backend.cost_per_million_input_tokens is not None
        or backend.cost_per_million_output_tokens is not None
    )
    # A negative limit is already reported by the range check.
    if backend.max_spend_usd is not None and backend.max_spend_usd >= 0 and not priced:
        log.add(
            (*path, "max_spend_usd"),
            "a budget needs prices: set cost_per_million_input_tokens and"
            " cost_per_million_output_tokens",
        )


def _check_type(backend: LlmBackendConfig, path: KeyPath, log: ProblemLog) -> None:
    kind, custom = backend.type, backend.custom_backend_type
    if kind is None:
        if custom is None:
            log.add(
                (*path, "type"),
                "missing; set type to a built-in type or custom_backend_type to a plugin's type",
            )
        return
    if kind not in _KNOWN_TYPES:
        message = f"unknown backend type {log.show((*path, 'type'), kind)}"
        if suggestion := find_suggestion(kind, _KNOWN_TYPES):
            message += f"; did you mean {suggestion!r}?"
        message += (
            f" (built-in types: {', '.join(BUILTIN_BACKEND_TYPES)};"
            " a plugin's type goes in custom_backend_type)"
        )
        log.add((*path, "type"), message)
        return
    if kind == CUSTOM_TYPE:
        if not custom:
            log.add((*path, "custom_backend_type"), "required when type is 'custom'")
        return
    if custom:
        log.add(
            (*path, "custom_backend_type"),
            f"conflicts with type {kind!r}; set type to 'custom' (or leave it out)"
            " to use a plugin's type",
        )
    if kind == "azure_openai" and not (backend.deployment_name or backend.model_name):
        log.add((*path, "deployment_name"), "required for type 'azure_openai' (or set model_name)")
    if kind not in DEFAULT_BASE_URLS and not backend.base_url:
        log.add((*path, "base_url"), f"required for type {kind!r}, which has no default URL")
