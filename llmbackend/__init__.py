"""llmbackend: many LLM providers behind one dependable asyncio interface.

Start with :func:`open_service`::

    async with open_service("llmbackend.toml") as service:
        answer = await service.complete(LlmRequest(prompt="Hello"))
"""

from typing import TYPE_CHECKING

from llmbackend._correlation import correlation_id
from llmbackend._lazy import lazy_names
from llmbackend._logging import LoggerFactory, configure_logging
from llmbackend._memory import ConversationMemory
from llmbackend._observer import AttemptObservation, Observer, RequestObservation
from llmbackend._registry import (
    PluginRegistry,
    default_registry,
    get_plugin_info,
    load_plugin,
    register_plugin,
    unregister_plugin,
)
from llmbackend._telemetry import add_metrics_route, render_metrics
from llmbackend._tokens import TokenCounter, default_token_counter
from llmbackend.backends.base import BaseLlmBackend, Capability
from llmbackend.config import load_settings
from llmbackend.container import open_service
from llmbackend.errors import (
    AllBackendsFailedError,
    AuthenticationError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    BudgetExceededError,
    CircuitOpenError,
    ConfigProblem,
    ConfigurationError,
    ContentFilteredError,
    ContextLengthExceededError,
    InvalidRequestError,
    LlmBackendError,
    MalformedResponseError,
    ModelNotFoundError,
    NotSupportedError,
    PluginError,
    RateLimitedError,
    StateStoreError,
    StreamInterruptedError,
)
from llmbackend.models import (
    BackendHealth,
    BackendStatistics,
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishEvent,
    FinishReason,
    LlmRequest,
    LlmResponse,
    PluginInfo,
    ServiceStatistics,
    StreamEvent,
    StreamRestarted,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    Usage,
    UsageEvent,
)
from llmbackend.plugins import ILlmBackendPlugin
from llmbackend.prompts import (
    DefaultPromptBuilder,
    PromptBuilder,
    PromptContext,
    TranslationPromptBuilder,
    prompt_builder_names,
    register_prompt_builder,
    unregister_prompt_builder,
)
from llmbackend.service import LlmService
from llmbackend.settings import (
    CacheProvider,
    CachingSettings,
    CircuitBreakerSettings,
    HealthCheckSettings,
    LlmBackendConfig,
    LlmSettings,
    MemorySettings,
    PluginSettings,
    RateLimitSettings,
    SecretsProvider,
    SecretsSettings,
    SelectionStrategy,
    SimultaneousPrimary,
    SpendResetPeriod,
    StreamRecovery,
    TelemetrySettings,
    Weekday,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from llmbackend.quick import (
        Answer,
        AnswerStream,
        AsyncChatSession,
        ChatSession,
        aask,
        achat,
        aclose_default_service,
        ask,
        astream,
        chat,
        configure,
        stream,
    )

__all__ = [
    "AllBackendsFailedError",
    "Answer",
    "AnswerStream",
    "AsyncChatSession",
    "AttemptObservation",
    "AuthenticationError",
    "BackendError",
    "BackendHealth",
    "BackendStatistics",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "BaseLlmBackend",
    "BudgetExceededError",
    "CacheProvider",
    "CachingSettings",
    "Capability",
    "ChatMessage",
    "ChatRequest",
    "ChatSession",
    "CircuitBreakerSettings",
    "CircuitOpenError",
    "ConfigProblem",
    "ConfigurationError",
    "ContentFilteredError",
    "ContextLengthExceededError",
    "ConversationMemory",
    "DefaultPromptBuilder",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "FinishEvent",
    "FinishReason",
    "HealthCheckSettings",
    "ILlmBackendPlugin",
    "InvalidRequestError",
    "LlmBackendConfig",
    "LlmBackendError",
    "LlmRequest",
    "LlmResponse",
    "LlmService",
    "LlmSettings",
    "LoggerFactory",
    "MalformedResponseError",
    "MemorySettings",
    "ModelNotFoundError",
    "NotSupportedError",
    "Observer",
    "PluginError",
    "PluginInfo",
    "PluginRegistry",
    "PluginSettings",
    "PromptBuilder",
    "PromptContext",
    "RateLimitSettings",
    "RateLimitedError",
    "RequestObservation",
    "SecretsProvider",
    "SecretsSettings",
    "SelectionStrategy",
    "ServiceStatistics",
    "SimultaneousPrimary",
    "SpendResetPeriod",
    "StateStoreError",
    "StreamEvent",
    "StreamInterruptedError",
    "StreamRecovery",
    "StreamRestarted",
    "TelemetrySettings",
    "TextDelta",
    "TokenCounter",
    "ToolCall",
    "ToolCallDelta",
    "ToolDefinition",
    "TranslationPromptBuilder",
    "Usage",
    "UsageEvent",
    "Weekday",
    "aask",
    "achat",
    "aclose_default_service",
    "add_metrics_route",
    "ask",
    "astream",
    "chat",
    "configure",
    "configure_logging",
    "correlation_id",
    "default_registry",
    "default_token_counter",
    "get_plugin_info",
    "load_plugin",
    "load_settings",
    "open_service",
    "prompt_builder_names",
    "register_plugin",
    "register_prompt_builder",
    "render_metrics",
    "stream",
    "unregister_plugin",
    "unregister_prompt_builder",
]


#: The quick API loads on first use (``llmbackend.ask``): a service-only application never
#: pays for it at import.
_LAZY = dict.fromkeys(
    (
        "Answer",
        "AnswerStream",
        "AsyncChatSession",
        "ChatSession",
        "aask",
        "achat",
        "aclose_default_service",
        "ask",
        "astream",
        "chat",
        "configure",
        "stream",
    ),
    "llmbackend.quick",
)


__getattr__, __dir__ = lazy_names(globals(), _LAZY, __all__)
