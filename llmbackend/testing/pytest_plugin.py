"""pytest fixtures for code that uses llmbackend plugins.

Enable them with ``pytest_plugins = ["llmbackend.testing.pytest_plugin"]`` in a test module
or the root ``conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmbackend._registry import PluginRegistry
from llmbackend.testing._plugins import isolated_default_registry

__all__ = ["default_plugin_registry", "plugin_registry"]


@pytest.fixture
def plugin_registry() -> PluginRegistry:
    """A fresh registry holding only the built-in plugin; nothing leaks between tests."""
    return PluginRegistry.with_builtin()


@pytest.fixture
def default_plugin_registry() -> Iterator[PluginRegistry]:
    """The process-wide default registry, replaced by a fresh one for this test only, so
    ``register_plugin()`` / ``load_plugin()`` calls under test leave no trace."""
    with isolated_default_registry() as registry:
        yield registry
