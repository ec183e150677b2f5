"""Structuring raw settings field by field, so that one bad value hides nothing else.

Structuring the whole tree with ``CONVERTER.structure`` would report every type error, but
would leave nothing to run the semantic checks on whenever any single value is wrong. Walking
the attrs classes here, and handing each leaf to the converter, gives both: every type problem
with its exact path, and a best-effort settings object (failed values left at their defaults,
unbuildable backends left out) on which duplicate names, ranges and the like are still checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, get_args, get_origin

import attrs

from llmbackend._config_problems import KeyPath, ProblemLog, find_suggestion
from llmbackend._config_sources import UNRESOLVED, contains_unresolved
from llmbackend._converter import (
    CONVERTER,
    ConfigValueError,
    field_types,
    iter_structure_issues,
)
from llmbackend.settings import LlmBackendConfig, LlmSettings

__all__ = ["Structured", "report_structure_error", "structure_settings"]


class _Skip:
    """A field left out of the result: failed (and reported), or absent."""


_SKIP: Final = _Skip()


@attrs.frozen
class Structured:
    """The best-effort settings plus, for each list of sections, where each survivor stood."""

    settings: LlmSettings
    #: ``positions[("backends",)][i]`` is the index in the source of ``settings.backends[i]``.
    positions: Mapping[KeyPath, tuple[int, ...]]

    def backends(self) -> list[tuple[int, LlmBackendConfig]]:
        """``(source index, backend config)`` pairs, for problems that name a backend."""
        indices = self.positions.get(("backends",), ())
        return list(zip(indices, self.settings.backends, strict=True))


def structure_settings(data: Mapping[Any, Any], log: ProblemLog) -> Structured:
    """Structure ``data`` as :class:`LlmSettings`, reporting every problem into ``log``."""
    positions: dict[KeyPath, tuple[int, ...]] = {}
    settings = _structure_class(LlmSettings, data, (), log, positions)
    assert isinstance(settings, LlmSettings)  # no required fields: it can always be built
    return Structured(settings=settings, positions=positions)


def report_structure_error(exc: Exception, path: KeyPath, log: ProblemLog) -> None:
    """Report each failure inside a cattrs exception (group) at its own path."""
    for issue in iter_structure_issues(exc, path):
        if issue.kind == "unknown":
            _report_unknown(issue.path, issue.known_keys, log)
        elif issue.kind == "missing":
            log.add(issue.path, "required key is missing")
        elif isinstance(issue.error, ConfigValueError):
            got = log.show(issue.path, issue.error.value)
            log.add(issue.path, f"expected {issue.error.expected}, got {got}")
        else:
            log.add(issue.path, f"invalid value ({type(issue.error).__name__})")


def _report_unknown(path: KeyPath, known: tuple[str, ...], log: ProblemLog) -> None:
    suggestion = find_suggestion(str(path[-1]), known)
    log.add(path, "unknown key" + (f"; did you mean {suggestion!r}?" if suggestion else ""))


def _structure_class(
    cls: type,
    data: object,
    path: KeyPath,
    log: ProblemLog,
    positions: dict[KeyPath, tuple[int, ...]],
) -> object | None:
    """An instance of ``cls`` from ``data``, or ``None`` when a required value is unusable."""
    if not isinstance(data, Mapping):
        log.add(path, f"expected a table of settings, got {log.show(path, data)}")
        return None
    fields = attrs.fields_dict(cls)
    types = field_types(cls)
    values: dict[str, object] = {}
    buildable = True
    for key, raw in data.items():
        if key not in fields:
            _report_unknown((*path, str(key)), tuple(fields), log)
            continue
        value = _structure_field(types[key], raw, (*path, key), log, positions)
        if not isinstance(value, _Skip):
            values[key] = value
        elif fields[key].default is attrs.NOTHING:
            buildable = False
    for name, field in fields.items():
        if field.default is attrs.NOTHING and name not in data:
            log.add((*path, name), "required key is missing")
            buildable = False
    return cls(**values) if buildable else None


def _structure_field(
    type_: Any,
    raw: object,
    path: KeyPath,
    log: ProblemLog,
    positions: dict[KeyPath, tuple[int, ...]],
) -> object:
    if raw is UNRESOLVED:  # already reported where the ${VAR} failed
        return _SKIP
    if attrs.has(type_):
        # An empty YAML section (`caching:`) parses as null; it means "all defaults".
        if raw is None:
            return _SKIP
        section = _structure_class(type_, raw, path, log, positions)
        return _SKIP if section is None else section
    item_type = _section_list_item(type_)
    if item_type is not None:
        if raw is None:
            return _SKIP
        if not isinstance(raw, list | tuple):
            got = log.show(path, raw)
            log.add(path, f"expected a list of tables (in TOML, [[{path[-1]}]]), got {got}")
            return _SKIP
        kept: list[tuple[int, object]] = []
        for index, item in enumerate(raw):
            if item is UNRESOLVED:
                continue
            built = _structure_class(item_type, item, (*path, index), log, positions)
            if built is not None:
                kept.append((index, built))
        positions[path] = tuple(index for index, _ in kept)
        return tuple(built for _, built in kept)
    if contains_unresolved(raw):  # a list or table holding a failed ${VAR}: reported already
        return _SKIP
    try:
        return CONVERTER.structure(raw, type_)
    except Exception as exc:  # noqa: BLE001 - any failure is a problem to report, not a crash
        report_structure_error(exc, path, log)
        return _SKIP


def _section_list_item(type_: Any) -> type | None:
    """``X`` for ``tuple[X, ...]`` where ``X`` is an attrs class (e.g. the backends list)."""
    args = get_args(type_)
    if get_origin(type_) is tuple and len(args) == 2 and attrs.has(args[0]):
        return args[0]
    return None
