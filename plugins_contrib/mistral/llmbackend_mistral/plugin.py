"""``MistralPlugin``: the plugin object the registry finds through the entry point."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llmbackend.errors import PluginError

if TYPE_CHECKING:
    from llmbackend._logging import LoggerFactory
    from llmbackend.backends.base import BaseLlmBackend, SessionFactory
    from llmbackend.settings import LlmBackendConfig

__all__ = ["MistralPlugin"]

#: The module holding the backend; imported on first use so loading the plugin stays cheap.
_BACKEND_MODULE = "llmbackend_mistral.backend"


class MistralPlugin:
    """Provides the ``mistral`` / ``mistralai`` backend types
    (select them with ``custom_backend_type = "mistral"``)."""

    plugin_id: str = "mistral"
    plugin_name: str = "Mistral AI"
    version: str = "0.1.0"
    author: str = "llmbackend developers"
    description: str = (
        "Mistral AI (api.mistral.ai): chat, streaming, tools, embeddings and model listing."
    )
    supported_backend_types: Sequence[str] = ("Mistral", "MistralAI")

    def create_backend(
        self,
        backend_type: str,
        config: LlmBackendConfig,
        logger_factory: LoggerFactory,
        session_factory: SessionFactory,
    ) -> BaseLlmBackend:
        """Build a Mistral backend; no I/O happens until it is called."""
        if backend_type.lower() not in {name.lower() for name in self.supported_backend_types}:
            raise PluginError(f"the mistral plugin cannot build backend type {backend_type!r}")
        from llmbackend_mistral.backend import MistralBackend

        return MistralBackend(
            config, logger_factory=logger_factory, session_factory=session_factory
        )

    def validate(self) -> bool:
        """True when the backend and the SDK parts it builds on can be imported."""
        try:
            importlib.import_module(_BACKEND_MODULE)
        except ImportError:
            return False
        return True
