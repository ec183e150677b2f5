"""PluginRegistry: registration rules, type lookup, building backends, config checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import pytest
from structlog.testing import capture_logs

from llmbackend._logging import LoggerFactory
from llmbackend._registry import (
    PluginRegistry,
    default_registry,
    get_plugin_info,
    register_plugin,
    unregister_plugin,
)
from llmbackend.backends._builtin import IMPLEMENTED_BACKENDS, BuiltinPlugin
from llmbackend.backends.base import BaseLlmBackend
from llmbackend.errors import ConfigProblem, PluginError
from llmbackend.models import ChatMessage, ChatRequest, LlmResponse, PluginInfo
from llmbackend.settings import LlmBackendConfig

pytest_plugins = ["llmbackend.testing.pytest_plugin"]

BUILTIN_TYPES = tuple(IMPLEMENTED_BACKENDS)


class StubBackend(BaseLlmBackend):
    async def _chat(self, request: ChatRequest) -> LlmResponse:
        return LlmResponse(content=f"from {self.backend_type}", backend=self.name, model="m")


@attrs.define
class StubPlugin:
    """A configurable plugin: ``valid`` may be an exception to raise from ``validate()``;
    ``result`` replaces the backend ``create_backend`` returns (an exception is raised)."""

    plugin_id: str = "stub"
    supported_backend_types: Sequence[str] = ("stub",)
    plugin_name: str = "Stub"
    version: str = "1.2.3"
    author: str = "tests"
    description: str = "a stub plugin"
    valid: bool | Exception = True
    result: Any = None
    calls: list[str] = attrs.Factory(list)

    def create_backend(
        self, backend_type: str, config: LlmBackendConfig, logger_factory: Any, session_factory: Any
    ) -> Any:
        self.calls.append(backend_type)
        if isinstance(self.result, Exception):
            raise self.result
        if self.result is not None:
            return self.result
        return StubBackend(config, logger_factory=logger_factory, session_factory=session_factory)

    def validate(self) -> bool:
        if isinstance(self.valid, Exception):
            raise self.valid
        return self.valid


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def _no_session() -> Any:
    raise AssertionError("no HTTP session in these tests")


# --- register ---------------------------------------------------------------------------------


def test_register_makes_the_plugin_serve_its_types(plugin_registry: PluginRegistry) -> None:
    """A registered plugin is returned for each of its types and listed as runtime."""
    plugin = StubPlugin(supported_backend_types=("stub", "other"))
    assert plugin_registry.register(plugin) is True
    assert plugin_registry.plugin_for("stub") is plugin
    assert plugin_registry.plugin_for("other") is plugin
    assert "stub" in plugin_registry
    assert plugin_registry.backend_types() == sorted([*BUILTIN_TYPES, "stub", "other"])
    assert plugin_registry.get_plugin_info()[-1].source == "runtime"


def test_object_missing_protocol_members_is_a_plugin_error(
    plugin_registry: PluginRegistry,
) -> None:
    """An object that is not a plugin raises PluginError naming every missing member."""

    class Half:
        plugin_id = "half"
        plugin_name = "Half"

    with pytest.raises(PluginError) as caught:
        plugin_registry.register(Half())  # type: ignore[arg-type]
    message = str(caught.value)
    assert "is not an llmbackend plugin" in message
    assert (
        "missing version, author, description, supported_backend_types, create_backend, validate"
        in message
    )
    assert "half" not in plugin_registry


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"supported_backend_types": ()}, "supported_backend_types is empty"),
        ({"supported_backend_types": "stub"}, "must be a sequence of strings"),
        ({"supported_backend_types": ("ok", "")}, "holds invalid names: ['']"),
        ({"plugin_id": ""}, "plugin_id must be a non-empty string"),
        ({"version": 2}, "version must be a non-empty string, not 2"),
    ],
)
def test_malformed_plugin_members_are_a_plugin_error(
    plugin_registry: PluginRegistry, changes: dict[str, Any], expected: str
) -> None:
    """Members of the wrong shape (empty or string types, blank id...) raise PluginError."""
    plugin = attrs.evolve(StubPlugin(), **changes)
    with pytest.raises(PluginError, match="is not an llmbackend plugin") as caught:
        plugin_registry.register(plugin)
    assert expected in str(caught.value)


def test_duplicate_id_is_rejected_with_a_warning(plugin_registry: PluginRegistry) -> None:
    """A second plugin with a registered id returns False, logs plugin_rejected, changes nothing."""
    first = StubPlugin()
    second = StubPlugin(supported_backend_types=("stub", "extra"))
    plugin_registry.register(first, source="file:/a.py")
    with capture_logs() as logs:
        assert plugin_registry.register(second) is False
    [event] = events(logs, "plugin_rejected")
    assert event["log_level"] == "warning"
    assert event["plugin_id"] == "stub"
    assert event["reason"] == "duplicate_id"
    assert event["source"] == "runtime"
    assert event["existing_source"] == "file:/a.py"
    assert plugin_registry.plugin_for("stub") is first
    assert plugin_registry.plugin_for("extra") is None


def test_type_claimed_twice_goes_to_the_later_plugin_with_a_warning(
    plugin_registry: PluginRegistry,
) -> None:
    """When two plugins claim a type, the later one wins and plugin_type_overridden names both."""
    early = StubPlugin(plugin_id="early", supported_backend_types=("shared", "mine"))
    late = StubPlugin(plugin_id="late", supported_backend_types=("SHARED",))
    plugin_registry.register(early)
    with capture_logs() as logs:
        assert plugin_registry.register(late) is True
    [event] = events(logs, "plugin_type_overridden")
    assert event["log_level"] == "warning"
    assert event["backend_type"] == "shared"
    assert event["previous_plugin"] == "early"
    assert event["plugin_id"] == "late"
    assert plugin_registry.plugin_for("shared") is late
    assert plugin_registry.plugin_for("mine") is early


def test_a_later_plugin_can_take_over_a_builtin_type(plugin_registry: PluginRegistry) -> None:
    """Built-in types follow the same rule: a plugin claiming `openai` takes it over."""
    replacement = StubPlugin(plugin_id="my-openai", supported_backend_types=("openai",))
    with capture_logs() as logs:
        plugin_registry.register(replacement)
    [event] = events(logs, "plugin_type_overridden")
    assert (event["previous_plugin"], event["plugin_id"]) == ("builtin", "my-openai")
    assert plugin_registry.plugin_for("openai") is replacement


def test_unregister_gives_an_overridden_type_back(plugin_registry: PluginRegistry) -> None:
    """Removing the plugin that overrode a type returns the type to the earlier provider."""
    early = StubPlugin(plugin_id="early", supported_backend_types=("shared",))
    late = StubPlugin(plugin_id="late", supported_backend_types=("shared", "only-late"))
    plugin_registry.register(early)
    plugin_registry.register(late)
    assert plugin_registry.unregister("late") is True
    assert plugin_registry.plugin_for("shared") is early
    assert plugin_registry.plugin_for("only-late") is None
    assert plugin_registry.unregister("late") is False


def test_backend_types_match_case_insensitively(plugin_registry: PluginRegistry) -> None:
    """Types are matched ignoring case, both as declared and as configured."""
    plugin = StubPlugin(supported_backend_types=("MyType",))
    plugin_registry.register(plugin)
    assert plugin_registry.plugin_for("mytype") is plugin
    assert plugin_registry.plugin_for("MYTYPE") is plugin
    assert plugin_registry.backend_types().count("mytype") == 1
    config = LlmBackendConfig(name="b", custom_backend_type="myTYPE")
    assert plugin_registry.check_backends([config]) == []
    backend = plugin_registry.create_backend(config, LoggerFactory(), _no_session)
    assert plugin.calls == ["mytype"]
    assert backend.backend_type == "mytype"


def test_validate_returning_false_skips_the_plugin(plugin_registry: PluginRegistry) -> None:
    """validate() == False: register returns False, logs plugin_skipped with the reason."""
    with capture_logs() as logs:
        assert plugin_registry.register(StubPlugin(valid=False)) is False
    [event] = events(logs, "plugin_skipped")
    assert event["log_level"] == "warning"
    assert event["plugin_id"] == "stub"
    assert event["reason"] == "validate_returned_false"
    assert "stub" not in plugin_registry
    assert plugin_registry.plugin_for("stub") is None


def test_validate_raising_skips_the_plugin(plugin_registry: PluginRegistry) -> None:
    """validate() raising: register returns False, logs plugin_skipped with the error."""
    with capture_logs() as logs:
        assert plugin_registry.register(StubPlugin(valid=RuntimeError("no GPU"))) is False
    [event] = events(logs, "plugin_skipped")
    assert event["reason"] == "validate_raised"
    assert event["error"] == "RuntimeError: no GPU"
    assert "stub" not in plugin_registry


def test_get_plugin_info_describes_each_plugin(plugin_registry: PluginRegistry) -> None:
    """get_plugin_info lists every plugin in order with its metadata, types and source."""
    plugin_registry.register(
        StubPlugin(supported_backend_types=("Stub", "stub2")), source="entry_point:stub"
    )
    builtin, stub = plugin_registry.get_plugin_info()
    assert builtin.plugin_id == "builtin"
    assert builtin.backend_types == BUILTIN_TYPES
    assert builtin.source == "builtin"
    assert stub == PluginInfo(
        plugin_id="stub",
        name="Stub",
        version="1.2.3",
        author="tests",
        description="a stub plugin",
        backend_types=("stub", "stub2"),
        source="entry_point:stub",
    )


def test_builtin_plugin_goes_through_register(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in plugin is added by the same register() as any plugin, source builtin."""
    seen: list[tuple[str, str]] = []
    original = PluginRegistry.register

    def spy(self: PluginRegistry, plugin: Any, *, source: str = "runtime") -> bool:
        seen.append((plugin.plugin_id, source))
        return original(self, plugin, source=source)

    monkeypatch.setattr(PluginRegistry, "register", spy)
    with capture_logs() as logs:
        registry = PluginRegistry.with_builtin()
    assert seen == [("builtin", "builtin")]
    [event] = events(logs, "plugin_registered")
    assert event["plugin_id"] == "builtin"
    assert event["source"] == "builtin"
    assert isinstance(registry.plugin_for("openai"), BuiltinPlugin)


def test_copy_is_independent(plugin_registry: PluginRegistry) -> None:
    """A copy starts with the same plugins; changes to either do not reach the other."""
    copy = plugin_registry.copy()
    copy.register(StubPlugin())
    copy.unregister("builtin")
    assert "stub" not in plugin_registry
    assert plugin_registry.plugin_for("openai") is not None
    assert copy.plugin_for("openai") is None


# --- create_backend -----------------------------------------------------------------------------


async def test_create_backend_builds_with_the_owning_plugin(
    plugin_registry: PluginRegistry,
) -> None:
    """create_backend asks the plugin for the config's (lower-cased) type; the backend works."""
    plugin = StubPlugin()
    plugin_registry.register(plugin)
    config = LlmBackendConfig(name="mine", custom_backend_type="Stub")
    backend = plugin_registry.create_backend(config, LoggerFactory(), _no_session)
    assert isinstance(backend, StubBackend)
    assert backend.name == "mine"
    answer = await backend.chat(ChatRequest(messages=[ChatMessage.user("hi")]))
    assert answer.content == "from stub"


def test_create_backend_wraps_a_plugin_failure(plugin_registry: PluginRegistry) -> None:
    """A plugin raising in create_backend becomes a PluginError naming plugin, backend, cause."""
    failure = ValueError("base_url is required")
    plugin_registry.register(StubPlugin(result=failure))
    config = LlmBackendConfig(name="mine", custom_backend_type="stub")
    with pytest.raises(PluginError) as caught:
        plugin_registry.create_backend(config, LoggerFactory(), _no_session)
    assert str(caught.value) == (
        "plugin 'stub' could not create backend 'mine' of type 'stub': "
        "ValueError: base_url is required"
    )
    assert caught.value.__cause__ is failure


def test_create_backend_rejects_a_non_backend(plugin_registry: PluginRegistry) -> None:
    """A plugin returning something other than a BaseLlmBackend is a PluginError."""
    plugin_registry.register(StubPlugin(result=object()))
    config = LlmBackendConfig(name="mine", custom_backend_type="stub")
    with pytest.raises(PluginError, match="returned object for backend 'mine'"):
        plugin_registry.create_backend(config, LoggerFactory(), _no_session)


def test_create_backend_for_an_unknown_type_never_falls_back(
    plugin_registry: PluginRegistry,
) -> None:
    """An unknown type raises PluginError; no other plugin (builtin included) is asked."""
    plugin = StubPlugin()
    plugin_registry.register(plugin)
    config = LlmBackendConfig(name="mine", type="openai", custom_backend_type="missing")
    with pytest.raises(PluginError) as caught:
        plugin_registry.create_backend(config, LoggerFactory(), _no_session)
    assert str(caught.value).startswith(
        "backend 'mine': no loaded plugin provides backend type 'missing'"
    )
    assert plugin.calls == []


# --- check_backends -----------------------------------------------------------------------------


def test_unknown_types_become_problems_naming_loaded_plugins(
    plugin_registry: PluginRegistry,
) -> None:
    """Each config with an unprovided type yields a problem at its path listing the plugins."""
    plugin_registry.register(StubPlugin(plugin_id="echo", supported_backend_types=("echo",)))
    configs = [
        LlmBackendConfig(name="ok", type="openai"),
        LlmBackendConfig(name="typo", type="custom", custom_backend_type="Ecko"),
        LlmBackendConfig(name="ok2", custom_backend_type="ECHO"),
        LlmBackendConfig(name="future", custom_backend_type="warp_drive"),
    ]
    loaded = f"loaded plugins: builtin ({', '.join(BUILTIN_TYPES)}), echo (echo)"
    assert plugin_registry.check_backends(configs) == [
        ConfigProblem(
            "backends[1].custom_backend_type",
            f"no loaded plugin provides backend type 'ecko'; {loaded}",
        ),
        ConfigProblem(
            "backends[3].custom_backend_type",
            f"no loaded plugin provides backend type 'warp_drive'; {loaded}",
        ),
    ]


def test_a_config_without_any_type_is_a_problem(plugin_registry: PluginRegistry) -> None:
    """A config naming no type at all is reported, not given a default type."""
    problems = plugin_registry.check_backends([LlmBackendConfig(name="bare")])
    assert problems == [
        ConfigProblem("backends[0].type", "no backend type: set type or custom_backend_type")
    ]


def test_type_custom_without_a_custom_type_is_a_problem(plugin_registry: PluginRegistry) -> None:
    """type = "custom" alone points at the missing custom_backend_type."""
    [problem] = plugin_registry.check_backends([LlmBackendConfig(name="c", type="custom")])
    assert problem.path == "backends[0].custom_backend_type"
    assert problem.message.startswith(
        "type 'custom' needs custom_backend_type naming a plugin type; loaded plugins: builtin ("
    )


def test_missing_type_message_with_no_plugins() -> None:
    """An empty registry says so instead of listing nothing."""
    problems = PluginRegistry().check_backends([LlmBackendConfig(name="a", type="openai")])
    assert str(problems[0]) == (
        "backends[0].type: no loaded plugin provides backend type 'openai'; loaded plugins: none"
    )


# --- the default registry and the runtime functions ------------------------------------------


def test_default_registry_holds_the_builtin_plugin(
    default_plugin_registry: PluginRegistry,
) -> None:
    """The process-wide registry contains the built-in plugin with source builtin."""
    assert default_registry() is default_plugin_registry
    [info] = get_plugin_info()
    assert (info.plugin_id, info.source, info.backend_types) == (
        "builtin",
        "builtin",
        BUILTIN_TYPES,
    )


def test_runtime_register_and_unregister(default_plugin_registry: PluginRegistry) -> None:
    """register_plugin/unregister_plugin act on the default registry with source runtime."""
    assert register_plugin(StubPlugin()) is True
    assert [(i.plugin_id, i.source) for i in get_plugin_info()] == [
        ("builtin", "builtin"),
        ("stub", "runtime"),
    ]
    assert unregister_plugin("stub") is True
    assert unregister_plugin("stub") is False
    assert [i.plugin_id for i in get_plugin_info()] == ["builtin"]
