"""The built-in plugin: the SDK's own backend types, registered like any third-party plugin.

Provider modules are imported only when a backend of their type is built, so importing
llmbackend (or creating the default registry) never pays for providers that are not used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from llmbackend.backends.base import BaseLlmBackend
from llmbackend.errors import PluginError

if TYPE_CHECKING:
    from llmbackend._logging import LoggerFactory
    from llmbackend.backends.base import SessionFactory
    from llmbackend.settings import LlmBackendConfig

__all__ = ["IMPLEMENTED_BACKENDS", "BuiltinPlugin"]

_OPENAI = "llmbackend.backends.openai:OpenAIBackend"

#: Implemented built-in backend types -> ``"module:Class"``. Adding a type is one line here.
IMPLEMENTED_BACKENDS: Final[Mapping[str, str]] = {
    "openai": _OPENAI,
    "openai_compatible": _OPENAI,
    "lmstudio": _OPENAI,
    "llamacpp": _OPENAI,
    "anthropic": "llmbackend.backends.anthropic:AnthropicBackend",
    "azure_openai": "llmbackend.backends.azure_openai:AzureOpenAIBackend",
    "gemini": "llmbackend.backends.gemini:GeminiBackend",
    "cohere": "llmbackend.backends.cohere:CohereBackend",
    "ollama": "llmbackend.backends.ollama:OllamaBackend",
    "easynmt": "llmbackend.backends.easynmt:EasyNmtBackend",
}


class BuiltinPlugin:
    """Provides the built-in backend types that are implemented (see ``IMPLEMENTED_BACKENDS``)."""

    plugin_id: str = "builtin"
    plugin_name: str = "Built-in backends"
    author: str = "llmbackend developers"
    description: str = "The provider backends that ship with llmbackend."

    def __init__(self, backends: Mapping[str, str] | None = None) -> None:
        self._backends = {
            name.lower(): target for name, target in (backends or IMPLEMENTED_BACKENDS).items()
        }
        self.supported_backend_types: Sequence[str] = tuple(self._backends)
        self.version: str = _sdk_version()

    def __repr__(self) -> str:
        return f"<BuiltinPlugin types={list(self.supported_backend_types)!r}>"

    def create_backend(
        self,
        backend_type: str,
        config: LlmBackendConfig,
        logger_factory: LoggerFactory,
        session_factory: SessionFactory,
    ) -> BaseLlmBackend:
        """Import the provider module for ``backend_type`` (on first use) and build it."""
        target = self._backends.get(backend_type.lower())
        if target is None:
            raise PluginError(f"the built-in plugin has no backend type {backend_type!r}")
        backend_class = _load_class(target)
        return backend_class(config, logger_factory=logger_factory, session_factory=session_factory)

    def validate(self) -> bool:
        """Always usable: provider dependencies are the SDK's own."""
        return True

    def preload(self, backend_type: str) -> None:
        """Import the provider module of ``backend_type`` now. ``open_service`` calls this
        from its worker thread, so building the backend later never imports on the loop."""
        target = self._backends.get(backend_type.lower())
        if target is not None:
            _load_class(target)


def _load_class(target: str) -> type[BaseLlmBackend]:
    module_name, _, class_name = target.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"cannot load built-in backend {target!r}: {exc}") from exc
    if not (isinstance(found, type) and issubclass(found, BaseLlmBackend)):
        raise PluginError(f"built-in backend {target!r} is not a BaseLlmBackend subclass")
    return found


def _sdk_version() -> str:
    import importlib.metadata  # ~20 ms: only when a registry is made

    try:
        return importlib.metadata.version("llmbackend")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
