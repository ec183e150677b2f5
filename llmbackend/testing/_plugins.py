"""Helpers for plugin authors: check a plugin, register it for one test, isolate the registry."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import aiohttp

from llmbackend._logging import LoggerFactory
from llmbackend._plugin_import import protocol_problems
from llmbackend._registry import PluginRegistry, _swap_default, default_registry
from llmbackend.backends.base import BaseLlmBackend
from llmbackend.settings import LlmBackendConfig

if TYPE_CHECKING:
    from llmbackend.plugins import ILlmBackendPlugin

__all__ = ["assert_valid_plugin", "isolated_default_registry", "registered_plugin"]

_P = TypeVar("_P", bound="ILlmBackendPlugin")


def _config_for(backend_type: str) -> LlmBackendConfig:
    return LlmBackendConfig(name=f"check-{backend_type}", custom_backend_type=backend_type)


def _no_session() -> aiohttp.ClientSession:
    raise AssertionError("create_backend must not open HTTP connections; backends borrow lazily")


def assert_valid_plugin(
    plugin: object,
    *,
    config_for: Callable[[str], LlmBackendConfig] = _config_for,
) -> None:
    """Assert that ``plugin`` is a working plugin.

    Checks the protocol members, that it names at least one backend type, that ``validate()``
    returns True, and that ``create_backend`` builds a ``BaseLlmBackend`` of the right type for
    each of its types (from ``config_for(backend_type)``, by default a config with only a name
    and ``custom_backend_type``). Raises ``AssertionError`` saying what is wrong.
    """
    problems = protocol_problems(plugin)
    assert not problems, f"{plugin!r} is not a valid plugin: {'; '.join(problems)}"
    checked: ILlmBackendPlugin = plugin  # type: ignore[assignment]
    assert checked.validate() is True, f"{checked.plugin_id}: validate() did not return True"
    for backend_type in checked.supported_backend_types:
        config = config_for(backend_type)
        backend = checked.create_backend(backend_type.lower(), config, LoggerFactory(), _no_session)
        assert isinstance(backend, BaseLlmBackend), (
            f"{checked.plugin_id}: create_backend({backend_type!r}) returned "
            f"{type(backend).__name__}, not a BaseLlmBackend"
        )
        assert backend.name == config.name, (
            f"{checked.plugin_id}: the backend for {backend_type!r} is named {backend.name!r}, "
            f"not {config.name!r}: pass the config to BaseLlmBackend.__init__"
        )


@contextlib.contextmanager
def registered_plugin(plugin: _P, *, registry: PluginRegistry | None = None) -> Iterator[_P]:
    """Register ``plugin`` (in the default registry unless ``registry`` is given) for the
    duration of the block; it is always unregistered afterwards, even when the block fails.

    Raises ``AssertionError`` when the registry refuses the plugin (duplicate id, failed
    validation), so a test never runs against a plugin that is not there.
    """
    target = default_registry() if registry is None else registry
    assert target.register(plugin), (
        f"plugin {plugin.plugin_id!r} was not registered (duplicate id or failed validation)"
    )
    try:
        yield plugin
    finally:
        target.unregister(plugin.plugin_id)


@contextlib.contextmanager
def isolated_default_registry() -> Iterator[PluginRegistry]:
    """Replace the process-wide default registry with a fresh one (built-in plugin only) for
    the duration of the block, then put the original back untouched."""
    fresh = PluginRegistry.with_builtin()
    saved = _swap_default(fresh)
    try:
        yield fresh
    finally:
        _swap_default(saved)
