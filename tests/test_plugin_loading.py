"""Plugin loading: files, packages, modules, folders, entry points and plugin settings."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from llmbackend._logging import LoggerFactory
from llmbackend._registry import PluginRegistry, load_plugin
from llmbackend.errors import PluginError
from llmbackend.settings import LlmBackendConfig, PluginSettings

pytest_plugins = ["llmbackend.testing.pytest_plugin"]

_BACKEND = """
from llmbackend.backends.base import BaseLlmBackend
from llmbackend.models import LlmResponse


class _Backend(BaseLlmBackend):
    async def _chat(self, request):
        return LlmResponse(content=self.backend_type, backend=self.name, model="m")
"""


def plugin_class(plugin_id: str, *, name: str = "Plugin", valid: str = "True") -> str:
    """Source of a plugin class providing the backend type ``plugin_id``."""
    return textwrap.dedent(f"""
        class {name}:
            plugin_id = {plugin_id!r}
            plugin_name = "{plugin_id} plugin"
            version = "1.0"
            author = "tests"
            description = "written by a test"
            supported_backend_types = ({plugin_id!r},)

            def create_backend(self, backend_type, config, logger_factory, session_factory):
                return _Backend(
                    config, logger_factory=logger_factory, session_factory=session_factory
                )

            def validate(self):
                return {valid}
    """)


def write(path: Path, *parts: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def write_plugin(path: Path, plugin_id: str, *, valid: str = "True") -> Path:
    return write(path, _BACKEND, plugin_class(plugin_id, valid=valid))


def ids(registry: PluginRegistry) -> list[str]:
    return [info.plugin_id for info in registry.get_plugin_info()]


def sources(registry: PluginRegistry) -> dict[str, str]:
    return {info.plugin_id: info.source for info in registry.get_plugin_info()}


def _no_session() -> Any:
    raise AssertionError("no HTTP session in these tests")


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME so ~/.config/llmbackend/plugins of the machine is never read."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    return path


@pytest.fixture
def forget_modules() -> Iterator[list[str]]:
    """Names of importable test modules to drop from sys.modules after the test."""
    names: list[str] = []
    yield names
    for key in [k for k in sys.modules if any(k == n or k.startswith(n + ".") for n in names)]:
        del sys.modules[key]


# --- load_path ---------------------------------------------------------------------------------


async def test_file_exposing_a_class_is_loaded(
    plugin_registry: PluginRegistry, tmp_path: Path
) -> None:
    """A .py file's plugin class is instantiated and registered with source file:<path>."""
    path = write_plugin(tmp_path / "alpha.py", "alpha")
    assert plugin_registry.load_path(path) == ["alpha"]
    assert sources(plugin_registry)["alpha"] == f"file:{path.resolve()}"
    config = LlmBackendConfig(name="a", custom_backend_type="alpha")
    backend = plugin_registry.create_backend(config, LoggerFactory(), _no_session)
    assert backend.backend_type == "alpha"


def test_file_exposing_an_instance_is_loaded(
    plugin_registry: PluginRegistry, tmp_path: Path
) -> None:
    """A top-level plugin instance is registered once (its class is not instantiated again)."""
    path = write(
        tmp_path / "inst.py", _BACKEND, plugin_class("inst", name="_Hidden"), "plugin = _Hidden()"
    )
    with capture_logs() as logs:
        assert plugin_registry.load_path(path) == ["inst"]
    assert events(logs, "plugin_rejected") == []


def test_module_exposing_register_plugin(plugin_registry: PluginRegistry, tmp_path: Path) -> None:
    """register_plugin(registry) is called; its plugins keep the file source, and a plugin
    class in the same module is not registered a second time."""
    path = write(
        tmp_path / "hooked.py",
        _BACKEND,
        plugin_class("hooked", name="HookedPlugin"),
        plugin_class("hooked-extra", name="_Extra"),
        "def register_plugin(registry):",
        "    registry.register(HookedPlugin())",
        "    registry.register(_Extra())",
    )
    with capture_logs() as logs:
        assert plugin_registry.load_path(path) == ["hooked", "hooked-extra"]
    assert events(logs, "plugin_rejected") == []
    assert sources(plugin_registry)["hooked"] == f"file:{path.resolve()}"
    assert sources(plugin_registry)["hooked-extra"] == f"file:{path.resolve()}"


def test_module_exposing_several_classes(plugin_registry: PluginRegistry, tmp_path: Path) -> None:
    """Every plugin class defined in the module is registered; imported ones are not."""
    path = write(
        tmp_path / "many.py",
        "from llmbackend.backends._builtin import BuiltinPlugin  # imported: not this module's",
        _BACKEND,
        plugin_class("one", name="One"),
        plugin_class("two", name="Two"),
    )
    assert sorted(plugin_registry.load_path(path)) == ["one", "two"]
    assert ids(plugin_registry).count("builtin") == 1


def test_package_directory_with_relative_imports(
    plugin_registry: PluginRegistry, tmp_path: Path
) -> None:
    """A package directory is imported as a package; its submodule's plugin class counts."""
    package = tmp_path / "mypkg"
    write(package / "backend.py", _BACKEND)
    write(package / "plugin.py", "from .backend import _Backend", plugin_class("pkg"))
    write(package / "__init__.py", "from .plugin import Plugin")
    assert plugin_registry.load_path(package) == ["pkg"]
    assert sources(plugin_registry)["pkg"] == f"file:{package.resolve()}"


def test_dotted_module_name(
    plugin_registry: PluginRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    forget_modules: list[str],
) -> None:
    """A dotted module name is imported normally and recorded as module:<name>."""
    write(tmp_path / "site" / "llmb_test_dotted" / "__init__.py")
    write_plugin(tmp_path / "site" / "llmb_test_dotted" / "plugins.py", "dotted")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    forget_modules.append("llmb_test_dotted")
    assert plugin_registry.load_path("llmb_test_dotted.plugins") == ["dotted"]
    assert sources(plugin_registry)["dotted"] == "module:llmb_test_dotted.plugins"


def test_file_imports_siblings_without_changing_sys_path(
    plugin_registry: PluginRegistry, tmp_path: Path, forget_modules: list[str]
) -> None:
    """A plugin file may import a sibling module; sys.path is the same afterwards."""
    write(tmp_path / "llmb_test_helper.py", _BACKEND)
    write(tmp_path / "uses_helper.py", "from llmb_test_helper import _Backend", plugin_class("sib"))
    forget_modules.append("llmb_test_helper")
    before = list(sys.path)
    assert plugin_registry.load_path(tmp_path / "uses_helper.py") == ["sib"]
    assert sys.path == before


def test_same_file_name_in_two_folders(plugin_registry: PluginRegistry, tmp_path: Path) -> None:
    """Two files called plugin.py get distinct module names; both load."""
    first = write_plugin(tmp_path / "a" / "plugin.py", "first")
    second = write_plugin(tmp_path / "b" / "plugin.py", "second")
    assert plugin_registry.load_path(first) + plugin_registry.load_path(second) == [
        "first",
        "second",
    ]
    modules = {type(plugin_registry.get(i)).__module__ for i in ("first", "second")}
    assert len(modules) == 2


def test_strict_import_error_names_path_and_cause(
    plugin_registry: PluginRegistry, tmp_path: Path
) -> None:
    """strict: a plugin that fails to import raises PluginError with the path and the cause."""
    path = write(tmp_path / "broken.py", "import llmb_no_such_dependency")
    with pytest.raises(PluginError) as caught:
        plugin_registry.load_path(path, strict=True)
    assert str(caught.value) == (
        f"cannot load plugin {str(path)!r}: "
        "ModuleNotFoundError: No module named 'llmb_no_such_dependency'"
    )
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    assert not [m for m in sys.modules if m.startswith("_llmbackend_plugin_broken")]


def test_strict_validation_failure_is_an_error(
    plugin_registry: PluginRegistry, tmp_path: Path
) -> None:
    """strict: a plugin whose validate() returns False raises PluginError naming it."""
    path = write_plugin(tmp_path / "invalid.py", "invalid", valid="False")
    with pytest.raises(PluginError) as caught:
        plugin_registry.load_path(path, strict=True)
    assert str(caught.value) == (
        f"cannot load plugin {str(path)!r}: plugin 'invalid' validate() returned False"
    )


def test_strict_module_without_plugins_is_an_error(
    plugin_registry: PluginRegistry, tmp_path: Path
) -> None:
    """strict: a module that defines no plugin at all is reported as such."""
    path = write(tmp_path / "empty.py", "VALUE = 1")
    with pytest.raises(PluginError, match="defines no plugin class or instance"):
        plugin_registry.load_path(path, strict=True)


def test_strict_missing_path_is_an_error(plugin_registry: PluginRegistry, tmp_path: Path) -> None:
    """strict: a path that does not exist raises PluginError naming it."""
    with pytest.raises(PluginError, match="no such file or directory"):
        plugin_registry.load_path(tmp_path / "nowhere.py", strict=True)


def test_non_strict_failure_is_logged_and_skipped(
    plugin_registry: PluginRegistry, tmp_path: Path
) -> None:
    """Not strict: an import failure is logged as plugin_load_failed and nothing registers."""
    path = write(tmp_path / "boom.py", "raise RuntimeError('boom at import')")
    with capture_logs() as logs:
        assert plugin_registry.load_path(path, strict=False) == []
    [event] = events(logs, "plugin_load_failed")
    assert event["log_level"] == "warning"
    assert event["source"] == str(path)
    assert event["error"] == "RuntimeError: boom at import"


def test_load_plugin_uses_the_default_registry_strictly(
    default_plugin_registry: PluginRegistry, tmp_path: Path
) -> None:
    """load_plugin(path) registers into the default registry and raises on failure."""
    assert load_plugin(write_plugin(tmp_path / "rt.py", "rt")) == ["rt"]
    assert "rt" in default_plugin_registry
    with pytest.raises(PluginError, match="cannot load plugin"):
        load_plugin(write(tmp_path / "bad.py", "raise ImportError('nope')"))


# --- load_directory ----------------------------------------------------------------------------


@pytest.fixture
def plugin_folder(tmp_path: Path) -> Path:
    """top.py, broken.py, _private.py, sub/nested.py, pkg/ (a package), .hidden/x.py."""
    root = tmp_path / "plugins"
    write_plugin(root / "top.py", "top")
    write(root / "broken.py", "import llmb_missing_module")
    write_plugin(root / "_private.py", "private")
    write_plugin(root / "sub" / "nested.py", "nested")
    write_plugin(root / "sub" / "deeper" / "deep.py", "deep")
    write(root / "pkg" / "__init__.py", _BACKEND, plugin_class("pkg"))
    write_plugin(root / "pkg" / "not_scanned.py", "not-scanned")
    write_plugin(root / ".hidden" / "x.py", "hidden")
    return root


def test_directory_non_recursive(plugin_registry: PluginRegistry, plugin_folder: Path) -> None:
    """Non-recursive: only the folder's own *.py files; _private.py is skipped; a broken
    file is logged and the others still load."""
    with capture_logs() as logs:
        assert plugin_registry.load_directory(plugin_folder, recursive=False) == ["top"]
    [event] = events(logs, "plugin_load_failed")
    assert event["source"] == str(plugin_folder / "broken.py")
    assert event["error"] == "ModuleNotFoundError: No module named 'llmb_missing_module'"


def test_directory_recursive(plugin_registry: PluginRegistry, plugin_folder: Path) -> None:
    """Recursive: also packages and the files of plain subdirectories, at any depth."""
    loaded = plugin_registry.load_directory(plugin_folder, recursive=True)
    assert loaded == ["pkg", "deep", "nested", "top"]


def test_missing_directory_loads_nothing(plugin_registry: PluginRegistry, tmp_path: Path) -> None:
    """A folder that does not exist is fine: nothing loads, nothing is raised."""
    assert plugin_registry.load_directory(tmp_path / "absent", recursive=True) == []


# --- entry points ------------------------------------------------------------------------------


def test_installed_contrib_plugins_load_from_entry_points(
    plugin_registry: PluginRegistry,
) -> None:
    """The installed echo and mock distributions register via their entry points."""
    loaded = plugin_registry.load_entry_points()
    assert {"echo", "mock"} <= set(loaded)
    assert sources(plugin_registry)["echo"] == "entry_point:echo"
    assert sources(plugin_registry)["mock"] == "entry_point:mock"
    assert plugin_registry.plugin_for("ECHO") is not None


@pytest.fixture
def fake_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forget_modules: list[str]
) -> Path:
    """A real (unpacked) distribution on sys.path declaring five entry points in a test group."""
    site = tmp_path / "site"
    write(site / "llmb_ep_class.py", _BACKEND, plugin_class("ep-class", name="EpPlugin"))
    write(site / "llmb_ep_instance.py", _BACKEND, plugin_class("ep-inst"), "plugin = Plugin()")
    write(site / "llmb_ep_module.py", _BACKEND, plugin_class("ep-module"))
    write(
        site / "llmb_ep_hook.py",
        _BACKEND,
        plugin_class("ep-hook", name="_Hook"),
        "def hook(registry):\n    registry.register(_Hook())",
    )
    dist = site / "llmb_ep_test-1.0.dist-info"
    write(dist / "METADATA", "Metadata-Version: 2.1\nName: llmb-ep-test\nVersion: 1.0\n")
    write(
        dist / "entry_points.txt",
        "[llmbackend.tests]\n"
        "a_class = llmb_ep_class:EpPlugin\n"
        "b_instance = llmb_ep_instance:plugin\n"
        "c_module = llmb_ep_module\n"
        "d_hook = llmb_ep_hook:hook\n"
        "e_broken = llmb_ep_missing:Plugin\n",
    )
    monkeypatch.syspath_prepend(str(site))
    forget_modules.extend(["llmb_ep_class", "llmb_ep_instance", "llmb_ep_module", "llmb_ep_hook"])
    return site


def test_entry_point_kinds(plugin_registry: PluginRegistry, fake_distribution: Path) -> None:
    """An entry point may be a class, an instance, a module or a register function; a broken
    one is logged as plugin_load_failed and skipped."""
    with capture_logs() as logs:
        loaded = plugin_registry.load_entry_points("llmbackend.tests")
    assert loaded == ["ep-class", "ep-inst", "ep-module", "ep-hook"]
    assert {i: s for i, s in sources(plugin_registry).items() if i != "builtin"} == {
        "ep-class": "entry_point:a_class",
        "ep-inst": "entry_point:b_instance",
        "ep-module": "entry_point:c_module",
        "ep-hook": "entry_point:d_hook",
    }
    [event] = events(logs, "plugin_load_failed")
    assert event["source"] == "entry_point:e_broken"
    assert event["error"] == "ModuleNotFoundError: No module named 'llmb_ep_missing'"


# --- load_from_settings ------------------------------------------------------------------------


def test_settings_load_all_sources_in_order(
    plugin_registry: PluginRegistry, tmp_path: Path, home: Path
) -> None:
    """Entry points, plugin_directory (relative to base_dir), ~/.config/llmbackend/plugins,
    ./llmbackend_plugins, then specific_plugins: all are loaded, in that order."""
    base = tmp_path / "app"
    write_plugin(base / "my_plugins" / "from_dir.py", "from-dir")
    write_plugin(home / ".config" / "llmbackend" / "plugins" / "from_home.py", "from-home")
    write_plugin(base / "llmbackend_plugins" / "from_cwd.py", "from-cwd")
    write_plugin(base / "extra" / "explicit.py", "explicit")
    settings = PluginSettings(plugin_directory="my_plugins", specific_plugins=["extra/explicit.py"])
    loaded = plugin_registry.load_from_settings(settings, base_dir=base)
    assert [i for i in loaded if i not in installed_entry_points()] == [
        "from-dir",
        "from-home",
        "from-cwd",
        "explicit",
    ]
    assert loaded.index("echo") < loaded.index("from-dir")
    assert sources(plugin_registry)["explicit"] == f"file:{(base / 'extra' / 'explicit.py')}"


def test_settings_missing_directories_are_fine(
    plugin_registry: PluginRegistry, tmp_path: Path, home: Path
) -> None:
    """Absent plugin folders are not an error; only entry points load."""
    loaded = plugin_registry.load_from_settings(PluginSettings(), base_dir=tmp_path)
    assert set(loaded) == installed_entry_points()


def test_settings_search_subdirectories(
    plugin_registry: PluginRegistry, tmp_path: Path, home: Path
) -> None:
    """search_subdirectories=False keeps the plugin folder search flat."""
    write_plugin(tmp_path / "plugins" / "flat.py", "flat")
    write_plugin(tmp_path / "plugins" / "sub" / "nested.py", "nested")
    settings = PluginSettings(search_subdirectories=False)
    loaded = plugin_registry.load_from_settings(settings, base_dir=tmp_path)
    assert "flat" in loaded
    assert "nested" not in loaded


@pytest.mark.parametrize(
    "settings", [PluginSettings(enabled=False), PluginSettings(load_on_startup=False)]
)
def test_settings_disabled_load_nothing(
    plugin_registry: PluginRegistry, tmp_path: Path, home: Path, settings: PluginSettings
) -> None:
    """enabled=False or load_on_startup=False: nothing is loaded, not even entry points."""
    write_plugin(tmp_path / "plugins" / "p.py", "p")
    assert plugin_registry.load_from_settings(settings, base_dir=tmp_path) == []
    assert ids(plugin_registry) == ["builtin"]


def test_settings_specific_plugin_failure_raises(
    plugin_registry: PluginRegistry, tmp_path: Path, home: Path
) -> None:
    """A broken plugin in specific_plugins raises PluginError naming the path and the cause,
    while the same failure in the plugin folder is only logged."""
    write(tmp_path / "plugins" / "broken_in_folder.py", "import llmb_missing_a")
    write(tmp_path / "named.py", "import llmb_missing_b")
    settings = PluginSettings(specific_plugins=["named.py"])
    with capture_logs() as logs, pytest.raises(PluginError) as caught:
        plugin_registry.load_from_settings(settings, base_dir=tmp_path)
    assert str(caught.value) == (
        "cannot load plugin 'named.py': ModuleNotFoundError: No module named 'llmb_missing_b'"
    )
    [event] = events(logs, "plugin_load_failed")
    assert event["source"] == str((tmp_path / "plugins" / "broken_in_folder.py").resolve())


def test_settings_specific_plugin_by_module_name(
    plugin_registry: PluginRegistry, tmp_path: Path, home: Path
) -> None:
    """specific_plugins may name an installed module; a missing one raises PluginError."""
    loaded = plugin_registry.load_from_settings(
        PluginSettings(specific_plugins=["llmbackend_echo"]), base_dir=tmp_path
    )
    assert loaded.count("echo") == 1  # the entry point registered it; the module adds nothing
    with pytest.raises(PluginError, match="No module named 'llmb_not_installed'"):
        plugin_registry.load_from_settings(
            PluginSettings(specific_plugins=["llmb_not_installed"]), base_dir=tmp_path
        )


def installed_entry_points() -> set[str]:
    """The plugin ids of the contributed plugins installed in this environment."""
    return {ep.name for ep in importlib.metadata.entry_points(group="llmbackend.plugins")}
