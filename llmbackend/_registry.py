"""The plugin registry: which plugin builds which backend type.

Every backend type, built-in or third-party, reaches the SDK through
:meth:`PluginRegistry.register`. The rules, each logged as a structlog event:

* an object that is not a plugin raises :class:`PluginError` naming what it lacks;
* a second plugin with an id already registered is rejected (``plugin_rejected``);
* a plugin whose ``validate()`` returns false or raises is skipped (``plugin_skipped``);
* a backend type claimed by two plugins goes to the later one (``plugin_type_overridden``);
* a plugin that cannot be imported is reported and skipped (``plugin_load_failed``), except
  when it was named explicitly (``specific_plugins``, :func:`load_plugin`): then it raises.

A backend config whose type no plugin provides is an error; it never becomes another type.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from llmbackend._logging import LoggerFactory
from llmbackend._plugin_import import protocol_problems
from llmbackend._plugin_loading import (
    ENTRY_POINT_GROUP,
    PluginLoadingMixin,
    _LoadContext,
    _Outcome,
)
from llmbackend.backends.base import BaseLlmBackend
from llmbackend.errors import ConfigProblem, PluginError
from llmbackend.models import PluginInfo

if TYPE_CHECKING:
    from llmbackend.backends.base import SessionFactory
    from llmbackend.plugins import ILlmBackendPlugin
    from llmbackend.settings import LlmBackendConfig

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginRegistry",
    "default_registry",
    "get_plugin_info",
    "load_plugin",
    "register_plugin",
    "unregister_plugin",
]

_LOGGER = "llmbackend.plugins"


@attrs.frozen(kw_only=True)
class _Entry:
    plugin: ILlmBackendPlugin
    source: str
    backend_types: tuple[str, ...]


class PluginRegistry(PluginLoadingMixin):
    """The plugins one service (or the process default) knows, and the types they provide."""

    def __init__(self, *, logger_factory: LoggerFactory | None = None) -> None:
        self._logger_factory = logger_factory or LoggerFactory()
        self._entries: dict[str, _Entry] = {}
        #: backend type (lower-cased) -> plugin id; derived from ``_entries`` (later wins).
        self._types: dict[str, str] = {}
        self._loading: _LoadContext | None = None

    @classmethod
    def with_builtin(cls, *, logger_factory: LoggerFactory | None = None) -> PluginRegistry:
        """A new registry holding only the built-in plugin (registered like any other)."""
        from llmbackend.backends._builtin import BuiltinPlugin

        registry = cls(logger_factory=logger_factory)
        registry.register(BuiltinPlugin(), source="builtin")
        return registry

    def __repr__(self) -> str:
        return f"<PluginRegistry plugins={list(self._entries)!r}>"

    def __contains__(self, plugin_id: object) -> bool:
        return plugin_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    # --- registration ----------------------------------------------------------------------

    def register(self, plugin: ILlmBackendPlugin, *, source: str = "runtime") -> bool:
        """Add ``plugin``; True when it was registered.

        Raises :class:`PluginError` when ``plugin`` does not satisfy the plugin protocol.
        Returns False (and logs why) for a duplicate id or a failed ``validate()``. ``source``
        is what ``get_plugin_info()`` reports; a ``register_plugin(registry)`` hook run by a
        loader registers with the loader's source (``file:...``) instead of ``runtime``.
        """
        if self._loading is not None and source == "runtime":
            # Called by a loader's ``register_plugin(registry)`` hook: keep the loader's origin.
            source = self._loading.source
        outcome = self._register(plugin, source)
        if self._loading is not None:
            self._loading.outcomes.append(outcome)
        return outcome.registered

    def _register(self, plugin: ILlmBackendPlugin, source: str) -> _Outcome:
        if problems := protocol_problems(plugin):
            raise PluginError(f"{plugin!r} is not an llmbackend plugin: {'; '.join(problems)}")
        plugin_id = plugin.plugin_id
        log = self._log().bind(plugin_id=plugin_id, source=source)
        if (existing := self._entries.get(plugin_id)) is not None:
            log.warning("plugin_rejected", reason="duplicate_id", existing_source=existing.source)
            detail = f"plugin id {plugin_id!r} is already registered (from {existing.source})"
            return _Outcome(
                plugin_id=plugin_id, registered=False, reason="duplicate_id", detail=detail
            )
        try:
            valid = plugin.validate()
        except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, never fatal
            error = f"{type(exc).__name__}: {exc}"
            log.warning("plugin_skipped", reason="validate_raised", error=error)
            detail = f"validate() raised {error}"
            return _Outcome(
                plugin_id=plugin_id, registered=False, reason="validate_raised", detail=detail
            )
        if not valid:
            log.warning("plugin_skipped", reason="validate_returned_false")
            return _Outcome(
                plugin_id=plugin_id,
                registered=False,
                reason="validate_returned_false",
                detail="validate() returned False",
            )
        types = tuple(
            dict.fromkeys(name.strip().lower() for name in plugin.supported_backend_types)
        )
        for backend_type in types:
            if (previous := self._types.get(backend_type)) is not None:
                log.warning(
                    "plugin_type_overridden", backend_type=backend_type, previous_plugin=previous
                )
            self._types[backend_type] = plugin_id
        self._entries[plugin_id] = _Entry(plugin=plugin, source=source, backend_types=types)
        log.debug("plugin_registered", backend_types=list(types))
        return _Outcome(plugin_id=plugin_id, registered=True)

    def unregister(self, plugin_id: str) -> bool:
        """Remove a plugin; True when it was registered. Types it overrode return to the
        plugin that provided them before."""
        if self._entries.pop(plugin_id, None) is None:
            return False
        self._types = {
            backend_type: entry.plugin.plugin_id
            for entry in self._entries.values()
            for backend_type in entry.backend_types
        }
        self._log().debug("plugin_unregistered", plugin_id=plugin_id)
        return True

    def copy(self) -> PluginRegistry:
        """An independent registry holding the same plugins (a service's own registry)."""
        clone = PluginRegistry(logger_factory=self._logger_factory)
        clone._entries = dict(self._entries)
        clone._types = dict(self._types)
        return clone

    # --- queries ---------------------------------------------------------------------------

    def plugin_for(self, backend_type: str) -> ILlmBackendPlugin | None:
        """The plugin providing ``backend_type`` (case-insensitive), or None."""
        plugin_id = self._types.get(backend_type.strip().lower())
        return None if plugin_id is None else self._entries[plugin_id].plugin

    def get(self, plugin_id: str) -> ILlmBackendPlugin | None:
        """The plugin registered as ``plugin_id``, or None."""
        entry = self._entries.get(plugin_id)
        return None if entry is None else entry.plugin

    def backend_types(self) -> list[str]:
        """Every backend type some plugin provides, sorted."""
        return sorted(self._types)

    def get_plugin_info(self) -> list[PluginInfo]:
        """One record per registered plugin, in registration order."""
        return [
            PluginInfo(
                plugin_id=plugin_id,
                name=entry.plugin.plugin_name,
                version=entry.plugin.version,
                author=entry.plugin.author,
                description=entry.plugin.description,
                backend_types=entry.backend_types,
                source=entry.source,
            )
            for plugin_id, entry in self._entries.items()
        ]

    # --- building backends -----------------------------------------------------------------

    def create_backend(
        self,
        config: LlmBackendConfig,
        logger_factory: LoggerFactory,
        session_factory: SessionFactory,
    ) -> BaseLlmBackend:
        """Build the backend ``config`` describes with the plugin providing its type.

        Raises :class:`PluginError` when no plugin provides the type, when the plugin raises,
        or when it returns something that is not a ``BaseLlmBackend``.
        """
        backend_type = config.resolved_type
        plugin = self.plugin_for(backend_type)
        if plugin is None:
            raise PluginError(f"backend {config.name!r}: {self._missing_type(backend_type)}")
        try:
            backend = plugin.create_backend(backend_type, config, logger_factory, session_factory)
        except Exception as exc:
            raise PluginError(
                f"plugin {plugin.plugin_id!r} could not create backend {config.name!r} "
                f"of type {backend_type!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(backend, BaseLlmBackend):
            raise PluginError(
                f"plugin {plugin.plugin_id!r} returned {type(backend).__name__} for backend "
                f"{config.name!r}; create_backend must return a BaseLlmBackend"
            )
        return backend

    def check_backends(self, configs: Sequence[LlmBackendConfig]) -> list[ConfigProblem]:
        """A problem for each config whose type no loaded plugin provides (all are checked)."""
        problems: list[ConfigProblem] = []
        for index, config in enumerate(configs):
            backend_type = config.resolved_type
            if self.plugin_for(backend_type) is not None:
                continue
            path = f"backends[{index}]."
            if not backend_type:
                problem = ConfigProblem(
                    path + "type", "no backend type: set type or custom_backend_type"
                )
            elif backend_type == "custom":
                problem = ConfigProblem(
                    path + "custom_backend_type",
                    "type 'custom' needs custom_backend_type naming a plugin type; "
                    + self._loaded_plugins(),
                )
            else:
                field = "custom_backend_type" if config.custom_backend_type else "type"
                problem = ConfigProblem(path + field, self._missing_type(backend_type))
            problems.append(problem)
        return problems

    def _missing_type(self, backend_type: str) -> str:
        return f"no loaded plugin provides backend type {backend_type!r}; {self._loaded_plugins()}"

    def _loaded_plugins(self) -> str:
        loaded = ", ".join(
            f"{plugin_id} ({', '.join(entry.backend_types)})"
            for plugin_id, entry in self._entries.items()
        )
        return f"loaded plugins: {loaded or 'none'}"

    def _log(self) -> Any:
        # Resolved per event, not cached: the application may configure structlog later.
        return self._logger_factory(_LOGGER)


# --- the process-wide default registry ---------------------------------------------------------

_default: PluginRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> PluginRegistry:
    """The process-wide registry (built-in plugin included); services copy it at start."""
    global _default  # noqa: PLW0603 - the one process-wide registry, created on first use
    with _default_lock:
        if _default is None:
            _default = PluginRegistry.with_builtin()
        return _default


def register_plugin(plugin: ILlmBackendPlugin) -> bool:
    """Register ``plugin`` in the default registry (see :meth:`PluginRegistry.register`)."""
    return default_registry().register(plugin)


def unregister_plugin(plugin_id: str) -> bool:
    """Remove a plugin from the default registry; True when it was there."""
    return default_registry().unregister(plugin_id)


def load_plugin(path: str | os.PathLike[str]) -> list[str]:
    """Load a plugin file, package or module into the default registry; raises
    :class:`PluginError` naming the path and the cause when it cannot."""
    return default_registry().load_path(path, strict=True)


def get_plugin_info() -> list[PluginInfo]:
    """What the default registry holds."""
    return default_registry().get_plugin_info()


def _swap_default(registry: PluginRegistry | None) -> PluginRegistry | None:
    """Install ``registry`` as the default and return the one it replaces (for testing)."""
    global _default  # the one process-wide registry (see default_registry)
    with _default_lock:
        previous, _default = _default, registry
        return previous
