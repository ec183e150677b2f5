"""BuiltinPlugin: the implemented built-in types, built lazily from "module:Class" targets."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from llmbackend._logging import LoggerFactory
from llmbackend.backends._builtin import IMPLEMENTED_BACKENDS, BuiltinPlugin
from llmbackend.backends.openai import OpenAIBackend
from llmbackend.errors import PluginError
from llmbackend.settings import BUILTIN_BACKEND_TYPES, LlmBackendConfig
from llmbackend.testing._fake_backend import FakeBackend
from llmbackend.testing._plugins import assert_valid_plugin


def _no_session() -> Any:
    raise AssertionError("building a backend must not open a session")


def test_supported_types_are_the_implemented_ones() -> None:
    """The plugin offers exactly the implemented built-in types, lower-cased, in table order."""
    plugin = BuiltinPlugin()
    # Every built-in type the settings accept is implemented.
    assert set(plugin.supported_backend_types) == set(BUILTIN_BACKEND_TYPES)
    assert tuple(plugin.supported_backend_types) == tuple(IMPLEMENTED_BACKENDS)
    assert plugin.plugin_id == "builtin"
    assert plugin.validate() is True


@pytest.mark.parametrize("backend_type", ["openai", "openai_compatible", "lmstudio", "llamacpp"])
def test_openai_family_builds_openai_backends(backend_type: str) -> None:
    """Each OpenAI-family type builds an OpenAIBackend carrying the config's name and type."""
    config = LlmBackendConfig(name="b", type=backend_type, api_key="sk-test", model_name="m")
    backend = BuiltinPlugin().create_backend(backend_type, config, LoggerFactory(), _no_session)
    assert isinstance(backend, OpenAIBackend)
    assert (backend.name, backend.backend_type) == ("b", backend_type)


def test_the_plugin_passes_the_plugin_author_checks() -> None:
    """The built-in plugin satisfies the same checks third-party plugins are held to."""
    assert_valid_plugin(BuiltinPlugin())


def test_adding_a_type_is_one_table_entry() -> None:
    """A custom table maps a new type to any BaseLlmBackend class by "module:Class"."""
    plugin = BuiltinPlugin({"Fake": "llmbackend.testing._fake_backend:FakeBackend"})
    assert tuple(plugin.supported_backend_types) == ("fake",)
    config = LlmBackendConfig(name="f", custom_backend_type="fake")
    backend = plugin.create_backend("FAKE", config, LoggerFactory(), _no_session)
    assert isinstance(backend, FakeBackend)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("llmb_missing_provider:Backend", "cannot load built-in backend"),
        ("llmbackend.backends.base:NoSuchClass", "cannot load built-in backend"),
        ("llmbackend.settings:LlmSettings", "is not a BaseLlmBackend subclass"),
    ],
)
def test_a_bad_target_is_a_plugin_error(target: str, message: str) -> None:
    """A table entry that cannot be imported, or is not a backend class, raises PluginError."""
    plugin = BuiltinPlugin({"x": target})
    config = LlmBackendConfig(name="x", custom_backend_type="x")
    with pytest.raises(PluginError, match=message):
        plugin.create_backend("x", config, LoggerFactory(), _no_session)


def test_an_unknown_type_is_a_plugin_error() -> None:
    """Asking the built-in plugin for a type it lacks raises instead of guessing."""
    config = LlmBackendConfig(name="a", custom_backend_type="warp_drive")
    with pytest.raises(PluginError, match="has no backend type 'warp_drive'"):
        BuiltinPlugin().create_backend("warp_drive", config, LoggerFactory(), _no_session)


def test_provider_modules_load_only_when_used() -> None:
    """Creating the default registry imports no provider module (checked in a fresh process)."""
    code = (
        "import sys\n"
        "from llmbackend._registry import default_registry\n"
        "assert default_registry().plugin_for('openai') is not None\n"
        "print('llmbackend.backends.openai' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(("backend_type", "target"), sorted(IMPLEMENTED_BACKENDS.items()))
def test_every_implemented_type_builds_its_backend_class(backend_type: str, target: str) -> None:
    """Each table entry imports lazily and builds an instance of the named class."""
    config = LlmBackendConfig(
        name="b",
        type=backend_type,
        api_key="sk-test",
        model_name="m",
        base_url="http://127.0.0.1:9",
        deployment_name="d",
    )
    backend = BuiltinPlugin().create_backend(backend_type, config, LoggerFactory(), _no_session)
    module, _, cls = target.partition(":")
    assert type(backend).__module__ == module
    assert type(backend).__name__ == cls
    assert backend.backend_type == backend_type
