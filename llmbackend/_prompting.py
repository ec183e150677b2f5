"""How the service applies prompt builders and conversation memory to a request.

Per request, :meth:`PromptPipeline.prepare` loads the conversation's history once; then
each attempt asks the :class:`PreparedChat` for the request of *that* backend (built by its
builder, once per backend and request). A request with no variables and no conversation,
on a service whose backends all use the ``default`` builder, skips all of this: the
service sends it as it is (:meth:`PromptPipeline.needs` is the only cost).

After a successful answer (a chat, a completed stream or a cache hit) the request's new
messages and the answer are added to the conversation; a failed request leaves it as it
was. The response cache is keyed on :meth:`PreparedChat.cache_view`: the request with the
history in front, so the same question in two different conversations never shares an
answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

import attrs

from llmbackend._config_problems import find_suggestion
from llmbackend._logging import LoggerFactory
from llmbackend._memory import ConversationMemory
from llmbackend.errors import (
    ConfigProblem,
    ConfigurationError,
    InvalidRequestError,
    LlmBackendError,
    PluginError,
    StateStoreError,
)
from llmbackend.models import ChatMessage, ChatRequest, LlmResponse
from llmbackend.prompts import (
    BUILTIN_PROMPT_BUILDERS,
    SOURCE_KEYS,
    TARGET_KEYS,
    DefaultPromptBuilder,
    PromptBuilder,
    PromptBuilderFactory,
    PromptContext,
    builder_name,
    registered_prompt_builders,
    substituted,
)
from llmbackend.settings import CacheProvider, LlmBackendConfig, LlmSettings

if TYPE_CHECKING:
    from llmbackend._registry import PluginRegistry
    from llmbackend.backends.base import BaseLlmBackend

__all__ = [
    "PreparedChat",
    "PromptPipeline",
    "check_prompt_builders",
    "prompt_builder_table",
]

_LOGGER: Final = "llmbackend.prompts"


def prompt_builder_table(
    registry: PluginRegistry | None, logger_factory: LoggerFactory | None = None
) -> dict[str, PromptBuilderFactory]:
    """Every builder a service may use: built-in, registered, and those of ``registry``'s
    plugins (an optional ``prompt_builders`` mapping on the plugin; in registration order,
    a later plugin's name wins). A malformed mapping is logged and skipped, like any broken
    plugin; a plugin cannot replace a built-in builder."""
    table = registered_prompt_builders()
    if registry is None:
        return table
    log = (logger_factory or LoggerFactory())(_LOGGER)
    for info in registry.get_plugin_info():
        offered = getattr(registry.get(info.plugin_id), "prompt_builders", None)
        if offered is None:
            continue
        if not isinstance(offered, Mapping):
            log.warning("prompt_builders_ignored", plugin_id=info.plugin_id, error="not a mapping")
            continue
        for name, factory in offered.items():
            try:
                key = builder_name(name, owner=f"plugin {info.plugin_id!r}: ")
                if key in BUILTIN_PROMPT_BUILDERS:
                    raise PluginError(f"prompt builder {key!r} is built in")  # noqa: TRY301
                if not callable(factory):
                    raise PluginError(f"the factory of {key!r} is not callable")  # noqa: TRY301
            except PluginError as exc:
                log.warning("prompt_builders_ignored", plugin_id=info.plugin_id, error=str(exc))
                continue
            if key in table:
                log.info("prompt_builder_overridden", name=key, plugin_id=info.plugin_id)
            table[key] = factory
    return table


def check_prompt_builders(
    configs: Sequence[LlmBackendConfig], table: Mapping[str, PromptBuilderFactory]
) -> list[ConfigProblem]:
    """A problem for each backend whose ``prompt_builder_type`` names no known builder."""
    problems = []
    known = sorted(table)
    for index, config in enumerate(configs):
        name = config.prompt_builder_type.strip().lower()
        if name in table:
            continue
        message = f"unknown prompt builder {config.prompt_builder_type!r}"
        if suggestion := find_suggestion(name, known):
            message += f"; did you mean {suggestion!r}?"
        message += f" (known: {', '.join(known)}; plugins may register more)"
        problems.append(ConfigProblem(f"backends[{index}].prompt_builder_type", message))
    return problems


def _context(config: LlmBackendConfig) -> PromptContext:
    return PromptContext(
        backend=config.name,
        backend_type=config.resolved_type,
        model=config.model_name,
        max_input_tokens=config.max_input_tokens,
    )


class PromptPipeline:
    """The builders of a service's backends and its conversation memory."""

    def __init__(
        self,
        builders: Mapping[str, PromptBuilder],
        contexts: Mapping[str, PromptContext],
        *,
        memory: ConversationMemory | None = None,
        logger_factory: LoggerFactory | None = None,
    ) -> None:
        self._builders = dict(builders)
        self._contexts = dict(contexts)
        #: The conversation memory (``None``: ``memory.enabled`` is off).
        self.memory = memory
        # Only the built-in default builder is known to leave a plain request untouched.
        self._plain = all(type(b) is DefaultPromptBuilder for b in self._builders.values())
        self._log = (logger_factory or LoggerFactory())(_LOGGER)
        if memory is not None:
            for name, context in self._contexts.items():
                limit = min(memory.token_limit, context.max_input_tokens or memory.token_limit)
                self._contexts[name] = attrs.evolve(
                    context, token_limit=limit, token_counter=memory.token_counter
                )

    @classmethod
    def build(
        cls,
        settings: LlmSettings,
        configs: Sequence[LlmBackendConfig],
        *,
        table: Mapping[str, PromptBuilderFactory] | None = None,
        memory: ConversationMemory | None = None,
        logger_factory: LoggerFactory | None = None,
    ) -> PromptPipeline:
        """The pipeline of backends configured by ``configs``.

        ``table`` defaults to the built-in and registered builders. Without ``memory``, and
        with ``memory.enabled``, a ``memory`` provider gets an in-process store; other
        providers need a store opened first (``open_service`` does it).
        """
        table = registered_prompt_builders() if table is None else table
        if problems := check_prompt_builders(configs, table):
            raise ConfigurationError(problems)
        if memory is None and settings.memory.enabled:
            if settings.memory.provider is not CacheProvider.MEMORY:
                raise ConfigurationError(
                    [
                        ConfigProblem(
                            "memory.provider",
                            f"a {settings.memory.provider.value!r} store must be opened first:"
                            " use open_service(), or pass a PromptPipeline with its memory",
                        )
                    ]
                )
            from llmbackend.state._memory import MemoryStore  # only with memory on

            store = MemoryStore(settings.memory.key_prefix)
            memory = ConversationMemory(store, settings.memory, logger_factory=logger_factory)
        builders = {}
        for config in configs:
            factory = table[config.prompt_builder_type.strip().lower()]
            where = f"prompt builder {config.prompt_builder_type!r} of backend {config.name!r}"
            try:
                builder = factory()
            except Exception as exc:
                raise PluginError(
                    f"{where} could not be created: {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(builder, PromptBuilder):
                raise PluginError(f"{where} is a {type(builder).__name__}, with no build() method")
            builders[config.name] = builder
        contexts = {config.name: _context(config) for config in configs}
        return cls(builders, contexts, memory=memory, logger_factory=logger_factory)

    def needs(self, request: ChatRequest) -> bool:
        """Whether ``request`` must be prepared (else it is sent as it is)."""
        return not self._plain or request.conversation_id is not None or bool(request.variables)

    async def prepare(self, request: ChatRequest) -> PreparedChat:
        """``request`` with its conversation's history, ready to be built per backend."""
        history: tuple[ChatMessage, ...] = ()
        if request.conversation_id is not None:
            if self.memory is None:
                raise InvalidRequestError(
                    "the request has a conversation_id but conversation memory is off:"
                    " set memory.enabled = true",
                    code="memory_disabled",
                )
            history = await self.memory.history(request.conversation_id)
        return PreparedChat(self, request, history)

    def build_for(
        self, backend: BaseLlmBackend, request: ChatRequest, history: tuple[ChatMessage, ...]
    ) -> ChatRequest:
        """``request`` as ``backend``'s builder makes it, given the conversation ``history``."""
        name = backend.name
        builder = self._builders.get(name)
        if builder is None:  # a backend the pipeline was not built for (tests, fan-out fakes)
            builder, context = DefaultPromptBuilder(), _context(backend.config)
        else:
            context = self._contexts[name]
        if request.conversation_id is None:
            context = attrs.evolve(context, token_limit=None)
        elif history:
            context = attrs.evolve(context, history=history)
        try:
            built = builder.build(request, context)
        except LlmBackendError:
            raise
        except Exception as exc:
            raise PluginError(
                f"the prompt builder of backend {name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(built, ChatRequest):
            raise PluginError(
                f"the prompt builder of backend {name!r} returned {type(built).__name__},"
                " not a ChatRequest"
            )
        return built

    async def remember(self, request: ChatRequest, response: LlmResponse | None) -> None:
        """Add the request's new messages and ``response`` to its conversation (when it has
        one and memory is on). A store failure is logged: the answer is still returned."""
        if self.memory is None or request.conversation_id is None or response is None:
            return
        variables = request.variables
        turn = [
            substituted(message, variables, strict=False)
            for message in request.messages
            if message.role != "system"
        ]
        # A tool-call-only answer has no text: ``None``, as providers send it back.
        content = response.content or (None if response.tool_calls else "")
        turn.append(ChatMessage.assistant(content, tool_calls=response.tool_calls))
        try:
            await self.memory.append(request.conversation_id, turn)
        except StateStoreError as exc:
            self._log.warning(
                "memory_store_failed", conversation=request.conversation_id, error=str(exc)
            )


class PreparedChat:
    """One request with its conversation history: built per backend, remembered after."""

    __slots__ = ("_built", "_pipeline", "history", "request")

    def __init__(
        self, pipeline: PromptPipeline, request: ChatRequest, history: tuple[ChatMessage, ...]
    ) -> None:
        self._pipeline = pipeline
        self.request = request
        self.history = history
        self._built: dict[str, ChatRequest] = {}

    def for_backend(self, backend: BaseLlmBackend) -> ChatRequest:
        """The request ``backend`` receives (built once per backend)."""
        built = self._built.get(backend.name)
        if built is None:
            built = self._pipeline.build_for(backend, self.request, self.history)
            self._built[backend.name] = built
        return built

    def shape(self, backend: BaseLlmBackend, request: ChatRequest) -> ChatRequest:
        """``request`` (this one, or a variant such as a stream's prefill) for ``backend``."""
        if request is self.request:
            return self.for_backend(backend)
        return self._pipeline.build_for(backend, request, self.history)

    async def chat(self, backend: BaseLlmBackend) -> LlmResponse:
        """``backend.chat`` with the request built for it."""
        return await backend.chat(self.for_backend(backend))

    def cache_view(self) -> ChatRequest:
        """What the response cache keys on: the history before the request's messages, and
        the translation languages given in metadata as variables."""
        request = self.request
        languages = {
            key: value
            for key in (*TARGET_KEYS, *SOURCE_KEYS)
            if key not in request.variables and isinstance(value := request.metadata.get(key), str)
        }
        if not self.history and not languages:
            return request
        return attrs.evolve(
            request,
            messages=(*self.history, *request.messages),
            variables={**request.variables, **languages},
        )

    async def remember(self, response: LlmResponse | None) -> None:
        """Add this turn and ``response`` to the conversation (see ``PromptPipeline``)."""
        await self._pipeline.remember(self.request, response)
