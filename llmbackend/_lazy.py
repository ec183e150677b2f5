"""Names a package resolves on first use (PEP 562), so importing it stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    namespace: dict[str, Any], targets: Mapping[str, str], exported: Sequence[str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__``: ``targets`` maps each lazy name to the
    module defining it; a resolved name is stored in ``namespace`` (the module's globals),
    so it is imported once."""
    package = namespace["__name__"]

    def resolve(name: str) -> object:
        module = targets.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def names() -> list[str]:
        return sorted(set(namespace) | set(exported))

    return resolve, names
