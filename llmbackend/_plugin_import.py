"""How plugin code is found and imported: files, package directories and dotted modules.

Kept apart from the registry so that the registry reads as policy (who wins, what is logged)
and this module as mechanism (importing without polluting the interpreter).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from llmbackend.errors import PluginError

__all__ = [
    "directory_targets",
    "import_target",
    "plugin_candidates",
    "protocol_problems",
]

#: Members every plugin has (see ``ILlmBackendPlugin``).
_TEXT_MEMBERS = ("plugin_id", "plugin_name", "version", "author", "description")
_METHOD_MEMBERS = ("create_backend", "validate")
_MODULE_PREFIX = "_llmbackend_plugin_"


def protocol_problems(obj: object) -> list[str]:
    """What keeps ``obj`` from being a plugin; empty when it satisfies the protocol."""
    missing = [
        name
        for name in (*_TEXT_MEMBERS, "supported_backend_types", *_METHOD_MEMBERS)
        if not hasattr(obj, name)
    ]
    if missing:
        return [f"missing {', '.join(missing)}"]
    problems: list[str] = []
    for name in _TEXT_MEMBERS:
        value = getattr(obj, name)
        if not isinstance(value, str) or (name == "plugin_id" and not value.strip()):
            problems.append(f"{name} must be a non-empty string, not {value!r}")
    problems += [f"{name} is not callable" for name in _METHOD_MEMBERS if not _callable(obj, name)]
    types: Any = getattr(obj, "supported_backend_types")  # noqa: B009 - typed as Any on purpose
    if isinstance(types, str | bytes) or not _is_iterable(types):
        problems.append(f"supported_backend_types must be a sequence of strings, not {types!r}")
    elif not list(types):
        problems.append("supported_backend_types is empty")
    elif bad := [value for value in types if not isinstance(value, str) or not value.strip()]:
        problems.append(f"supported_backend_types holds invalid names: {bad!r}")
    return problems


def _callable(obj: object, name: str) -> bool:
    return callable(getattr(obj, name, None))


def _is_iterable(value: object) -> bool:
    try:
        iter(value)  # type: ignore[call-overload]
    except TypeError:
        return False
    return True


def plugin_candidates(module: ModuleType, *, skip_ids: set[str]) -> list[object]:
    """Top-level plugin classes and instances defined by ``module`` (or its submodules).

    Objects merely imported from elsewhere are ignored so that a plugin file importing another
    plugin does not register it twice. A class is skipped when the module also holds an
    instance of it, or when its ``plugin_id`` was already attempted (by ``register_plugin``).
    """
    instances: list[object] = []
    classes: list[type] = []
    for name, value in vars(module).items():
        if name.startswith("_") or inspect.ismodule(value) or inspect.isroutine(value):
            continue
        if inspect.isclass(value):
            if _is_plugin_class(value, module):
                classes.append(value)
        elif not protocol_problems(value):
            # An instance made at the top level is the module's own plugin, whatever its class.
            instances.append(value)
    found: list[object] = [
        obj for obj in instances if getattr(obj, "plugin_id", None) not in skip_ids
    ]
    for cls in classes:
        if any(isinstance(obj, cls) for obj in instances):
            continue
        if getattr(cls, "plugin_id", None) in skip_ids:
            continue
        found.append(cls)
    return found


def _is_plugin_class(cls: type, module: ModuleType) -> bool:
    if not _defined_in(cls, module) or inspect.isabstract(cls):
        return False
    if getattr(cls, "_is_protocol", False):
        return False
    return all(callable(getattr(cls, name, None)) for name in _METHOD_MEMBERS)


def _defined_in(cls: type, module: ModuleType) -> bool:
    """Whether ``cls`` comes from ``module`` or one of its submodules (a package plugin)."""
    owner = cls.__module__
    return owner == module.__name__ or owner.startswith(module.__name__ + ".")


def directory_targets(root: Path, *, recursive: bool) -> Iterator[Path]:
    """Plugin files (and, if ``recursive``, packages and files of subdirectories) in ``root``.

    Names starting with ``_`` or ``.`` are skipped; a subdirectory that is a package is
    imported as one, any other subdirectory is searched in turn.
    """
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(("_", ".")):
            continue
        if entry.is_file() and entry.suffix == ".py":
            yield entry
        elif recursive and entry.is_dir():
            if (entry / "__init__.py").is_file():
                yield entry
            else:
                yield from directory_targets(entry, recursive=True)


def import_target(target: str | os.PathLike[str], base_dir: Path) -> tuple[ModuleType, str]:
    """Import a ``.py`` file, a package directory or a dotted module name.

    Returns the module and its source label (``file:<path>`` or ``module:<name>``). Relative
    paths are taken from ``base_dir``. A bare name is a module unless such a path exists.
    """
    text = os.fspath(target)
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if isinstance(target, os.PathLike) or _looks_like_path(text) or path.exists():
        return _import_path(path.resolve()), f"file:{path.resolve()}"
    return importlib.import_module(text), f"module:{text}"


_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _looks_like_path(text: str) -> bool:
    if text.endswith(".py") or text.startswith(("~", ".")):
        return True
    separators = {os.sep, os.altsep or os.sep, "/"}
    return any(sep in text for sep in separators) or not _DOTTED_NAME.fullmatch(text)


def _import_path(path: Path) -> ModuleType:
    if not path.exists():
        raise PluginError(f"no such file or directory: {path}")
    if path.is_dir():
        init = path / "__init__.py"
        if not init.is_file():
            raise PluginError(
                f"{path} is a directory but not a package (no __init__.py); "
                "load a folder of plugins with load_directory()"
            )
        return _import_file(path, init, package=True)
    if path.suffix != ".py":
        raise PluginError(f"{path} is not a Python file (.py)")
    return _import_file(path, path, package=False)


def _import_file(path: Path, file: Path, *, package: bool) -> ModuleType:
    """Import ``file`` under a name unique to ``path``, so two ``plugin.py`` never collide.

    Importing the same path again returns the module already imported. The file's directory
    is on ``sys.path`` only while the module runs, so ``import sibling`` works without a
    lasting change; it is appended, never prepended, so it cannot shadow installed modules.
    """
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"{_MODULE_PREFIX}{stem}_{digest}"
    if (existing := sys.modules.get(name)) is not None:
        return existing
    locations = [str(path)] if package else None
    spec = importlib.util.spec_from_file_location(name, file, submodule_search_locations=locations)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered before running, as the import system does: dataclasses, attrs and relative
    # imports of a package look the module up by name while it executes.
    sys.modules[name] = module
    importlib.invalidate_caches()
    try:
        with _on_sys_path(str(path.parent)):
            spec.loader.exec_module(module)
    except BaseException:
        for loaded in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
            del sys.modules[loaded]
        raise
    return module


@contextlib.contextmanager
def _on_sys_path(directory: str) -> Iterator[None]:
    added = directory not in sys.path
    if added:
        sys.path.append(directory)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(directory)
