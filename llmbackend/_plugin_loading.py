"""Where plugins come from: entry points, plugin files, packages, folders and settings.

A mixin of :class:`~llmbackend._registry.PluginRegistry`: loading decides what to import and
how failures are reported; the registry decides what registering means.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import attrs

from llmbackend._plugin_import import (
    directory_targets,
    import_target,
    plugin_candidates,
    protocol_problems,
)
from llmbackend.errors import PluginError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from llmbackend.plugins import ILlmBackendPlugin
    from llmbackend.settings import PluginSettings

__all__ = ["ENTRY_POINT_GROUP", "PluginLoadingMixin"]

#: The entry-point group installed plugin distributions declare.
ENTRY_POINT_GROUP = "llmbackend.plugins"
#: ``validate()`` outcomes that make an explicitly requested plugin an error.
_VALIDATION_FAILURES = frozenset({"validate_returned_false", "validate_raised"})


@attrs.frozen(kw_only=True)
class _Outcome:
    plugin_id: str
    registered: bool
    reason: str | None = None
    detail: str = ""


@attrs.define
class _LoadContext:
    source: str
    outcomes: list[_Outcome] = attrs.Factory(list)


class PluginLoadingMixin:
    """The ``load_*`` methods of the plugin registry."""

    _loading: _LoadContext | None

    if TYPE_CHECKING:

        def register(self, plugin: ILlmBackendPlugin, *, source: str = "runtime") -> bool: ...

        def _log(self) -> Any: ...

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Load installed plugins from the entry-point ``group``; returns the registered ids.

        An entry point may name a plugin class, a plugin instance, a module or a
        ``register_plugin(registry)`` function. Failures are logged and skipped.
        """
        loaded: list[str] = []
        import importlib.metadata  # ~20 ms: only when entry points are read

        for entry_point in sorted(importlib.metadata.entry_points(group=group), key=_ep_key):
            source = f"entry_point:{entry_point.name}"
            try:
                loaded += self._load_object(entry_point.load(), source, entry_point.value)
            except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, never fatal
                self._load_failed(source, exc)
        return loaded

    def load_path(
        self,
        path_or_module: str | os.PathLike[str],
        *,
        strict: bool = True,
        base_dir: Path | None = None,
    ) -> list[str]:
        """Load the plugins of a ``.py`` file, a package directory or a dotted module name.

        The module's top-level plugin classes (instantiated without arguments) and instances
        are registered, and its ``register_plugin(registry)`` function is called. With
        ``strict``, an import or validation failure raises :class:`PluginError` naming the path
        and the cause; otherwise it is logged (``plugin_load_failed``) and skipped.
        """
        target = os.fspath(path_or_module)
        try:
            module, source = import_target(path_or_module, base_dir or Path.cwd())
            return self._load_module(module, source, strict=strict)
        except Exception as exc:
            if strict:
                cause = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
                raise PluginError(f"cannot load plugin {target!r}: {cause}") from exc
            self._load_failed(target, exc)
            return []

    def load_directory(self, directory: str | os.PathLike[str], *, recursive: bool) -> list[str]:
        """Load every ``*.py`` file in ``directory`` not starting with ``_``; with ``recursive``
        also its packages and the files of its subdirectories. A missing directory loads
        nothing; a file that fails is logged and skipped, the others still load."""
        root = Path(directory).expanduser()
        if not root.is_dir():
            self._log().debug("plugin_directory_missing", directory=str(root))
            return []
        loaded: list[str] = []
        for target in directory_targets(root, recursive=recursive):
            loaded += self.load_path(target, strict=False)
        return loaded

    def load_from_settings(
        self, settings: PluginSettings, *, base_dir: Path | None = None
    ) -> list[str]:
        """Load what the plugin settings ask for; returns the registered plugin ids.

        In order: installed entry points, ``plugin_directory`` (relative to ``base_dir``,
        default the working directory), ``~/.config/llmbackend/plugins``,
        ``<base_dir>/llmbackend_plugins``, then each of ``specific_plugins``, strictly.
        """
        if not (settings.enabled and settings.load_on_startup):
            return []
        base = base_dir or Path.cwd()
        loaded = self.load_entry_points()
        for directory in _unique_dirs(
            base / Path(settings.plugin_directory).expanduser(),
            *_user_plugin_dirs(),
            base / "llmbackend_plugins",
        ):
            loaded += self.load_directory(directory, recursive=settings.search_subdirectories)
        for target in settings.specific_plugins:
            loaded += self.load_path(target, strict=True, base_dir=base)
        return loaded

    def _load_object(self, obj: object, source: str, target: str) -> list[str]:
        if inspect.ismodule(obj):
            return self._load_module(obj, source, strict=False)
        with self._loading_as(source) as context:
            if inspect.isclass(obj):
                self.register(cast("ILlmBackendPlugin", obj()), source=source)
            elif not protocol_problems(obj):
                self.register(cast("ILlmBackendPlugin", obj), source=source)
            elif callable(obj):
                obj(self)
            else:
                raise PluginError(
                    f"{target} is not a plugin class, plugin instance, module or "
                    "register_plugin(registry) function"
                )
        return [outcome.plugin_id for outcome in context.outcomes if outcome.registered]

    def _load_module(self, module: ModuleType, source: str, *, strict: bool) -> list[str]:
        with self._loading_as(source) as context:
            hook = getattr(module, "register_plugin", None)
            if callable(hook) and not inspect.isclass(hook):
                hook(self)
            attempted = {outcome.plugin_id for outcome in context.outcomes}
            for candidate in plugin_candidates(module, skip_ids=attempted):
                plugin = candidate() if inspect.isclass(candidate) else candidate
                if getattr(plugin, "plugin_id", None) not in attempted:
                    self.register(cast("ILlmBackendPlugin", plugin), source=source)
            if hook is None and not context.outcomes:
                raise PluginError(
                    "it defines no plugin class or instance and no register_plugin(registry)"
                )
        if strict:
            for outcome in context.outcomes:
                if outcome.reason in _VALIDATION_FAILURES:
                    raise PluginError(f"plugin {outcome.plugin_id!r} {outcome.detail}")
        return [outcome.plugin_id for outcome in context.outcomes if outcome.registered]

    @contextlib.contextmanager
    def _loading_as(self, source: str) -> Iterator[_LoadContext]:
        previous, self._loading = self._loading, _LoadContext(source)
        try:
            yield self._loading
        finally:
            self._loading = previous

    def _load_failed(self, source: str, exc: BaseException) -> None:
        self._log().warning(
            "plugin_load_failed", source=source, error=f"{type(exc).__name__}: {exc}"
        )


def _ep_key(entry_point: EntryPoint) -> tuple[str, str]:
    return entry_point.name, entry_point.value


def _user_plugin_dirs() -> list[Path]:
    try:
        return [Path.home() / ".config" / "llmbackend" / "plugins"]
    except RuntimeError:  # no home directory (some service accounts): nothing to search
        return []


def _unique_dirs(*directories: Path) -> Iterable[Path]:
    seen: set[Path] = set()
    for directory in directories:
        resolved = directory.resolve()
        if resolved not in seen:
            seen.add(resolved)
            yield resolved
