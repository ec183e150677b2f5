"""Plugins: the one path by which backend types (built-in or third-party) reach the SDK."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from llmbackend._logging import LoggerFactory
    from llmbackend.backends.base import BaseLlmBackend, SessionFactory
    from llmbackend.settings import LlmBackendConfig

__all__ = ["ILlmBackendPlugin"]


@runtime_checkable
class ILlmBackendPlugin(Protocol):
    """What a plugin provides. Any object with these members is a plugin (no base class).

    Optional, and not part of the protocol check: ``prompt_builders``, a mapping of prompt
    builder names to factories (``Callable[[], PromptBuilder]``, see
    :mod:`llmbackend.prompts`). A service whose plugins offer them lets backends select
    them with ``prompt_builder_type``. Built-in names cannot be replaced; a malformed
    mapping is logged (``prompt_builders_ignored``) and skipped.

    Also optional: ``preload(backend_type)``, called by ``open_service`` in its worker
    thread for each enabled backend of the plugin's types, to import heavy modules there
    rather than on the event loop when ``create_backend`` runs.
    """

    plugin_id: str
    plugin_name: str
    version: str
    author: str
    description: str
    #: Backend type names this plugin builds; matched case-insensitively.
    supported_backend_types: Sequence[str]

    def create_backend(
        self,
        backend_type: str,
        config: LlmBackendConfig,
        logger_factory: LoggerFactory,
        session_factory: SessionFactory,
    ) -> BaseLlmBackend:
        """Build a backend of ``backend_type`` (lower-cased) for ``config``."""
        ...

    def validate(self) -> bool:
        """Whether the plugin can work here (dependencies present...). False skips it."""
        ...
