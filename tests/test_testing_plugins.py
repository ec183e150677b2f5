"""llmbackend.testing plugin helpers: assert_valid_plugin, registered_plugin, fixtures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import pytest

from llmbackend._registry import PluginRegistry, default_registry
from llmbackend.testing._fake_backend import FakeBackend, FakeBackendPlugin
from llmbackend.testing._plugins import (
    assert_valid_plugin,
    isolated_default_registry,
    registered_plugin,
)

pytest_plugins = ["llmbackend.testing.pytest_plugin"]


@attrs.define
class Configurable:
    """A plugin whose members and behaviour each test bends."""

    plugin_id: str = "conf"
    supported_backend_types: Sequence[str] = ("conf",)
    plugin_name: str = "Conf"
    version: str = "1"
    author: str = "tests"
    description: str = "configurable"
    valid: bool = True
    returns: Any = "backend"
    rename: bool = False

    def create_backend(
        self, backend_type: str, config: Any, logger_factory: Any, session_factory: Any
    ) -> Any:
        if self.returns != "backend":
            return self.returns
        if self.rename:
            config = attrs.evolve(config, name="other")
        return FakeBackend(config)

    def validate(self) -> bool:
        return self.valid


def test_assert_valid_plugin_accepts_a_good_plugin() -> None:
    """A complete plugin passes silently."""
    assert_valid_plugin(Configurable())
    assert_valid_plugin(FakeBackendPlugin())


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (object(), "missing plugin_id"),
        (Configurable(supported_backend_types=()), "supported_backend_types is empty"),
        (Configurable(valid=False), "conf: validate() did not return True"),
        (
            Configurable(returns=None),
            "create_backend('conf') returned NoneType, not a BaseLlmBackend",
        ),
        (Configurable(rename=True), "is named 'other', not 'check-conf'"),
    ],
)
def test_assert_valid_plugin_says_what_is_wrong(plugin: object, message: str) -> None:
    """Each defect fails with an AssertionError that names it."""
    with pytest.raises(AssertionError) as caught:
        assert_valid_plugin(plugin)
    assert message in str(caught.value)


def test_registered_plugin_always_unregisters(default_plugin_registry: PluginRegistry) -> None:
    """registered_plugin registers into the default registry and removes it even on error."""
    plugin = Configurable()

    def body() -> None:
        with registered_plugin(plugin) as same:
            assert same is plugin
            assert default_registry().plugin_for("conf") is plugin
            raise RuntimeError("test body failed")

    with pytest.raises(RuntimeError, match="test body failed"):
        body()
    assert "conf" not in default_plugin_registry


def test_registered_plugin_refuses_a_rejected_plugin(plugin_registry: PluginRegistry) -> None:
    """A plugin the registry rejects fails the block up front and leaves the original alone."""
    original = Configurable()
    plugin_registry.register(original)
    with (
        pytest.raises(AssertionError, match="'conf' was not registered"),
        registered_plugin(Configurable(), registry=plugin_registry),
    ):
        pytest.fail("the body must not run")
    assert plugin_registry.get("conf") is original


def test_isolated_default_registry_restores_the_original() -> None:
    """Inside, the default registry is fresh (builtin only); afterwards the original is back."""
    original = default_registry()
    with isolated_default_registry() as fresh:
        assert default_registry() is fresh
        assert fresh is not original
        assert [i.plugin_id for i in fresh.get_plugin_info()] == ["builtin"]
        fresh.register(Configurable())
    assert default_registry() is original
    assert "conf" not in original


def test_plugin_registry_fixture_is_fresh(plugin_registry: PluginRegistry) -> None:
    """The plugin_registry fixture holds only the builtin plugin and is not the default."""
    assert plugin_registry is not default_registry()
    assert [i.source for i in plugin_registry.get_plugin_info()] == ["builtin"]
