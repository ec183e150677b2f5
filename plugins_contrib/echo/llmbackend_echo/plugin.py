"""``EchoPlugin``: the plugin object the registry finds through the entry point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from llmbackend.errors import PluginError
from llmbackend_echo.backend import EchoBackend

if TYPE_CHECKING:
    from llmbackend._logging import LoggerFactory
    from llmbackend.backends.base import SessionFactory
    from llmbackend.settings import LlmBackendConfig

__all__ = ["EchoPlugin"]


class EchoPlugin:
    """Provides the ``echo`` backend type (select it with ``custom_backend_type = "echo"``)."""

    plugin_id: str = "echo"
    plugin_name: str = "Echo"
    version: str = "0.1.0"
    author: str = "llmbackend developers"
    description: str = "Answers with the last user message; for demos and tests."
    supported_backend_types: Sequence[str] = ("echo",)

    def create_backend(
        self,
        backend_type: str,
        config: LlmBackendConfig,
        logger_factory: LoggerFactory,
        session_factory: SessionFactory,
    ) -> EchoBackend:
        """Build an echo backend. It makes no HTTP calls, so the session is never used."""
        if backend_type != "echo":
            raise PluginError(f"the echo plugin cannot build backend type {backend_type!r}")
        return EchoBackend(config, logger_factory=logger_factory, session_factory=session_factory)

    def validate(self) -> bool:
        """Nothing to check: the echo backend needs no service, key or extra package."""
        return True
