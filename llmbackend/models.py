"""Frozen values that cross the SDK's public surface: requests, responses, stream events, stats."""

from __future__ import annotations

import enum
import json
import types
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, TypeAlias

import attrs
from attrs import field, frozen

from llmbackend.settings import SelectionStrategy, StreamRecovery

__all__ = [
    "BackendHealth",
    "BackendStatistics",
    "ChatMessage",
    "ChatRequest",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "FinishEvent",
    "FinishReason",
    "LlmRequest",
    "LlmResponse",
    "PluginInfo",
    "ServiceStatistics",
    "StreamEvent",
    "StreamRestarted",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolDefinition",
    "Usage",
    "UsageEvent",
]

Role: TypeAlias = Literal["system", "user", "assistant", "tool"]


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if value is not None else ()


def _mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value) if value else {}


def _read_only(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(value))


def _variables(value: Mapping[str, str] | None) -> Mapping[str, str]:
    variables = dict(value) if value else {}
    for name, text in variables.items():
        if not isinstance(name, str) or not isinstance(text, str):
            raise TypeError(
                f"variables must map names to strings; {name!r} maps to {type(text).__name__}"
            )
    return variables


def _conversation_id(value: str | None) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError("conversation_id must be a non-empty string (or None)")
    return value


class FinishReason(enum.StrEnum):
    """Why a model stopped, normalised across providers (the raw value is kept beside it)."""

    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    ERROR = "error"


@frozen(kw_only=True)
class ToolCall:
    """A function call the model asked for. ``arguments`` is the JSON text as the model wrote it."""

    id: str
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> Any:
        """The arguments decoded from JSON (``{}`` for an empty string)."""
        return json.loads(self.arguments) if self.arguments.strip() else {}


@frozen(kw_only=True)
class ToolDefinition:
    """A function the model may call: a name, a description and a JSON-schema for parameters."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        factory=lambda: {"type": "object", "properties": {}}, converter=_mapping
    )


@frozen(kw_only=True)
class ChatMessage:
    """One message of a conversation."""

    role: Role
    content: str | None = None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = field(default=(), converter=_tuple)
    tool_call_id: str | None = None

    @classmethod
    def system(cls, content: str) -> ChatMessage:
        return cls(role="system", content=content)

    @classmethod
    def user(cls, content: str, *, name: str | None = None) -> ChatMessage:
        return cls(role="user", content=content, name=name)

    @classmethod
    def assistant(
        cls, content: str | None = None, *, tool_calls: Sequence[ToolCall] = ()
    ) -> ChatMessage:
        return cls(role="assistant", content=content, tool_calls=tool_calls)

    @classmethod
    def tool(cls, content: str, *, tool_call_id: str, name: str | None = None) -> ChatMessage:
        return cls(role="tool", content=content, tool_call_id=tool_call_id, name=name)


@frozen(kw_only=True)
class ChatRequest:
    """A chat call. ``None`` parameters fall back to the backend config, then global settings."""

    messages: tuple[ChatMessage, ...] = field(converter=_tuple)
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop_sequences: tuple[str, ...] = field(default=(), converter=_tuple)
    tools: tuple[ToolDefinition, ...] = field(default=(), converter=_tuple)
    tool_choice: str | Mapping[str, Any] | None = None
    response_format: Mapping[str, Any] | None = None
    preferred_backend: str | None = None
    metadata: Mapping[str, Any] = field(factory=dict, converter=_mapping)
    #: Per-request overrides of the service settings (``None``: use the settings).
    selection_strategy: SelectionStrategy | None = field(
        default=None, converter=attrs.converters.optional(SelectionStrategy)
    )
    timeout_seconds: float | None = None
    first_token_timeout_seconds: float | None = None
    stream_idle_timeout_seconds: float | None = None
    stream_recovery: StreamRecovery | None = field(
        default=None, converter=attrs.converters.optional(StreamRecovery)
    )
    #: Per-request cache opt-outs: ``cache_read=False`` never serves a cached answer,
    #: ``cache_write=False`` never stores this answer.
    cache_read: bool = True
    cache_write: bool = True
    #: The conversation whose history (``memory`` settings) is prepended; this request's
    #: messages and the answer are added to it after a successful call. Send only the new
    #: message(s): the history comes from memory.
    conversation_id: str | None = field(default=None, converter=_conversation_id)
    #: Values for ``{{ name }}`` placeholders in the system and user messages (the
    #: ``default`` prompt builder), or a builder's inputs (``translation``: languages).
    variables: Mapping[str, str] = field(factory=dict, converter=_variables)

    @messages.validator
    def _check_messages(self, _attr: attrs.Attribute[Any], value: tuple[ChatMessage, ...]) -> None:
        if not value:
            raise ValueError("a chat request needs at least one message")


@frozen(kw_only=True)
class LlmRequest:
    """A single-prompt completion: a user prompt and an optional system prompt."""

    prompt: str
    system_prompt: str | None = None
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop_sequences: tuple[str, ...] = field(default=(), converter=_tuple)
    preferred_backend: str | None = None
    metadata: Mapping[str, Any] = field(factory=dict, converter=_mapping)
    selection_strategy: SelectionStrategy | None = field(
        default=None, converter=attrs.converters.optional(SelectionStrategy)
    )
    timeout_seconds: float | None = None
    #: See :attr:`ChatRequest.conversation_id`.
    conversation_id: str | None = field(default=None, converter=_conversation_id)
    #: See :attr:`ChatRequest.variables`.
    variables: Mapping[str, str] = field(factory=dict, converter=_variables)

    def to_chat(self) -> ChatRequest:
        """The equivalent chat request: an optional system message, then the prompt."""
        messages = [ChatMessage.user(self.prompt)]
        if self.system_prompt:
            messages.insert(0, ChatMessage.system(self.system_prompt))
        return ChatRequest(
            messages=messages,
            model=self.model,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            top_p=self.top_p,
            stop_sequences=self.stop_sequences,
            preferred_backend=self.preferred_backend,
            metadata=self.metadata,
            selection_strategy=self.selection_strategy,
            timeout_seconds=self.timeout_seconds,
            conversation_id=self.conversation_id,
            variables=self.variables,
        )


@frozen(kw_only=True)
class Usage:
    """Token counts reported by a provider.

    ``cached_prompt_tokens`` is the part of ``prompt_tokens`` served from the provider's cache.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = 0

    @classmethod
    def of(cls, prompt: int, completion: int, total: int | None = None, cached: int = 0) -> Usage:
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion if total is None else total,
            cached_prompt_tokens=cached,
        )


@frozen(kw_only=True)
class LlmResponse:
    """The answer to a completion or chat call, with who answered and what it cost."""

    content: str
    backend: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = 0
    finish_reason: FinishReason | None = None
    raw_finish_reason: str | None = None
    duration_ms: float = 0.0
    #: ``None`` means unknown (the backend has no prices configured), never "free".
    cost_usd: float | None = None
    tool_calls: tuple[ToolCall, ...] = field(default=(), converter=_tuple)
    #: Other answers gathered by the simultaneous strategy.
    alternative_responses: tuple[LlmResponse, ...] = field(default=(), converter=_tuple)
    #: Errors of the backends that failed during a simultaneous fan-out.
    failed_alternatives: tuple[Exception, ...] = field(default=(), converter=_tuple, eq=False)
    cached: bool = False

    @property
    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.total_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens,
        )


# --- stream events -------------------------------------------------------------------------


@frozen(kw_only=True)
class TextDelta:
    """A piece of answer text."""

    text: str


@frozen(kw_only=True)
class ToolCallDelta:
    """A fragment of a tool call; fragments with the same ``index`` belong to one call."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments_delta: str = ""


@frozen(kw_only=True)
class UsageEvent:
    """Token usage for the whole stream, as reported by the provider."""

    usage: Usage


@frozen(kw_only=True)
class FinishEvent:
    """The provider really finished. Sent last, and only when the stream completed normally."""

    reason: FinishReason | None
    raw_reason: str | None
    backend: str
    model: str
    #: Malformed frames skipped in an otherwise healthy stream.
    malformed_events: int = 0
    #: Replayed from the response cache: no backend was called and nothing was spent.
    cached: bool = False


@frozen(kw_only=True)
class StreamRestarted:
    """The stream broke and starts again from another backend (``stream_recovery``).

    Discard the last ``discard_chars`` characters already shown (all of the interrupted
    answer for ``restart``; nothing for ``continue``, whose next text follows on).
    """

    failed_backend: str
    next_backend: str
    discard_chars: int
    error: str


StreamEvent: TypeAlias = TextDelta | ToolCallDelta | UsageEvent | FinishEvent | StreamRestarted


# --- embeddings ---------------------------------------------------------------------------


@frozen(kw_only=True)
class EmbeddingRequest:
    """Texts to embed."""

    inputs: tuple[str, ...] = field(converter=_tuple)
    model: str | None = None
    dimensions: int | None = None
    preferred_backend: str | None = None
    metadata: Mapping[str, Any] = field(factory=dict, converter=_mapping)
    selection_strategy: SelectionStrategy | None = field(
        default=None, converter=attrs.converters.optional(SelectionStrategy)
    )
    timeout_seconds: float | None = None

    @inputs.validator
    def _check_inputs(self, _attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        if not value:
            raise ValueError("an embedding request needs at least one input")


@frozen(kw_only=True)
class EmbeddingResponse:
    """One vector per input, in input order."""

    embeddings: tuple[tuple[float, ...], ...]
    backend: str
    model: str
    prompt_tokens: int = 0
    duration_ms: float = 0.0
    cost_usd: float | None = None


# --- health, statistics, plugins ------------------------------------------------------------


@frozen(kw_only=True)
class BackendHealth:
    """The result of one availability check."""

    backend: str
    available: bool
    latency_ms: float
    checked_at: datetime
    error: str | None = None


@frozen(kw_only=True)
class BackendStatistics:
    """A snapshot of one backend's counters (see ``BaseLlmBackend.statistics()``)."""

    name: str
    backend_type: str
    model: str | None
    total_requests: int
    successful_requests: int
    failed_requests: int
    consecutive_failures: int
    average_latency_ms: float
    p50_latency_ms: float
    p95_latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    total_cost_usd: float
    last_error: str | None
    last_error_at: datetime | None
    last_success_at: datetime | None
    last_used_at: datetime | None
    #: Filled by the service: breaker state, health and the latency estimate (EWMA).
    circuit_state: str = "closed"
    healthy: bool = True
    latency_estimate_ms: float | None = None
    #: The last health problem (a failed check or call), ``None`` while none was seen.
    health_error: str | None = None
    #: Spend in the current budget period, as last reported by the budget code.
    budget_spent_usd: float | None = None
    #: The backend's ``max_spend_usd`` (``None``: no budget).
    budget_limit_usd: float | None = None
    #: When the current budget period ends and spend resets (``None``: never / no budget).
    budget_period_end: datetime | None = None

    @property
    def success_rate(self) -> float:
        """Successful share of all requests (1.0 when there were none)."""
        return self.successful_requests / self.total_requests if self.total_requests else 1.0


@frozen(kw_only=True)
class ServiceStatistics:
    """A snapshot of a service: its own counters and each backend's statistics."""

    requests: int
    successful_requests: int
    failed_requests: int
    #: Requests answered by a backend other than the first one tried.
    failovers: int
    retries: int
    #: Read-only: a snapshot is not a handle on the service.
    backends: Mapping[str, BackendStatistics] = field(converter=_read_only)
    #: Answers served from the response cache (they cost nothing and reach no backend).
    cache_hits: int = 0
    cache_misses: int = 0


@frozen(kw_only=True)
class PluginInfo:
    """What the registry knows about a loaded plugin."""

    plugin_id: str
    name: str
    version: str
    author: str
    description: str
    backend_types: tuple[str, ...]
    #: Where it came from: ``builtin``, ``entry_point:<name>``, ``file:<path>`` or ``runtime``.
    source: str
