"""``MockPlugin``: the plugin object the registry finds through the entry point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from llmbackend.errors import PluginError
from llmbackend_mock.backend import MockBackend

if TYPE_CHECKING:
    from llmbackend._logging import LoggerFactory
    from llmbackend.backends.base import SessionFactory
    from llmbackend.settings import LlmBackendConfig

__all__ = ["MockPlugin"]


class MockPlugin:
    """Provides the ``mock`` backend type (select it with ``custom_backend_type = "mock"``)."""

    plugin_id: str = "mock"
    plugin_name: str = "Mock"
    version: str = "0.1.0"
    author: str = "llmbackend developers"
    description: str = "Plausible canned answers by prompt category, with simulated latency."
    supported_backend_types: Sequence[str] = ("mock",)

    def create_backend(
        self,
        backend_type: str,
        config: LlmBackendConfig,
        logger_factory: LoggerFactory,
        session_factory: SessionFactory,
    ) -> MockBackend:
        """Build a mock backend (it makes no HTTP calls; the session is never used)."""
        if backend_type != "mock":
            raise PluginError(f"the mock plugin cannot build backend type {backend_type!r}")
        return MockBackend(config, logger_factory=logger_factory, session_factory=session_factory)

    def validate(self) -> bool:
        """Nothing to check: the mock backend needs no service, key or extra package."""
        return True
