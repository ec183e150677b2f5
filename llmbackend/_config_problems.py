"""Collecting configuration problems with paths, and deciding which values may be shown.

Every loader stage reports into one :class:`ProblemLog`, so that a user fixing a config sees
every problem in one run instead of one per run. The log also knows which values must never be
printed: credentials, header values, and anything that came from a ``${VAR}`` substitution
(the variable may well hold a secret even when the key it lands in does not look like one).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeAlias, TypeVar

import attrs

from llmbackend._converter import SECRET_FIELDS, normalise_token
from llmbackend.errors import ConfigProblem, ConfigurationError

__all__ = ["KeyPath", "ProblemLog", "describe_type", "find_suggestion", "format_path"]

#: A location in the settings tree: keys and list indices, e.g. ``("backends", 1, "name")``.
KeyPath: TypeAlias = tuple[str | int, ...]

#: Keys whose values may hold credentials (``Authorization`` headers, for example).
_SECRET_CONTAINERS = frozenset({"additional_headers"})
_MAX_SHOWN = 60
_T = TypeVar("_T")


def format_path(path: KeyPath) -> str:
    """``("backends", 1, "temprature")`` → ``backends[1].temprature``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def find_suggestion(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` was probably meant to be, or ``None`` when nothing is close.

    A candidate equal to ``word`` up to case and separators (``maxRetries``/``max_retries``)
    wins outright; otherwise difflib's closest match above its default cutoff.
    """
    options = list(candidates)
    wanted = normalise_token(word)
    for option in options:
        if normalise_token(option) == wanted:
            return option
    matches = difflib.get_close_matches(word.lower(), options, n=1)
    return matches[0] if matches else None


def describe_type(value: object) -> str:
    """A value's kind in config words, for messages that must not show the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


@attrs.define
class ProblemLog:
    """Every problem found so far, plus what is known about where values came from."""

    problems: list[ConfigProblem] = attrs.field(factory=list)
    #: Values substituted from ``${VAR}`` references: path → the variable names used.
    substituted: dict[KeyPath, tuple[str, ...]] = attrs.field(factory=dict)
    #: Values set by ``LLMBACKEND_*`` overrides: path → the environment variable's name.
    overridden: dict[KeyPath, str] = attrs.field(factory=dict)

    def add(self, path: KeyPath | str, message: str) -> None:
        """Record a problem; a value set by an env override says which variable set it."""
        if isinstance(path, str):
            self.problems.append(ConfigProblem(path, message))
            return
        origin = self._lookup(self.overridden, path)
        if origin is not None:
            message = f"{message} (set by {origin})"
        self.problems.append(ConfigProblem(format_path(path), message))

    def show(self, path: KeyPath, value: object) -> str:
        """``value`` as it may appear in a message about ``path``: quoted, or only its kind."""
        names = self._lookup(self.substituted, path)
        if names is not None:
            refs = ", ".join(f"${{{name}}}" for name in names)
            return f"{describe_type(value)} from {refs} (value not shown)"
        if any(part in SECRET_FIELDS or part in _SECRET_CONTAINERS for part in path):
            return f"{describe_type(value)} (value not shown)"
        if isinstance(value, Mapping | list | tuple):
            return describe_type(value)
        shown = repr(value)
        return shown if len(shown) <= _MAX_SHOWN else shown[: _MAX_SHOWN - 4] + "...'"

    def raise_if_any(self) -> None:
        """Raise one :class:`ConfigurationError` listing everything, if anything was found."""
        if self.problems:
            raise ConfigurationError(self.problems)

    @staticmethod
    def _lookup(table: Mapping[KeyPath, _T], path: KeyPath) -> _T | None:
        # A value set at ``a.b`` also covers ``a.b[0]``: the problem may be inside it.
        for end in range(len(path), 0, -1):
            if (found := table.get(path[:end])) is not None:
                return found
        return None
