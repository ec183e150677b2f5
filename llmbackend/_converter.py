"""The SDK's own cattrs converter for settings, and the walk from its errors to paths.

The global cattrs converter is shared with every other library in the process; hooks
registered there would leak into (or be clobbered by) someone else's code, so llmbackend
builds its own. Its leaf hooks are strict on purpose: a config that says ``timeout: true`` or
``enabled: "maybe"`` is a mistake, and coercing it silently would hide the mistake until a
request misbehaves. Strings that parse cleanly as numbers or booleans are accepted because
environment variables (and ``${VAR}`` substitutions) can only ever be strings.
"""

from __future__ import annotations

import enum
import functools
import math
import re
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from llmbackend.settings import LlmSettings

__all__ = [
    "CONVERTER",
    "SECRET_FIELDS",
    "ConfigValueError",
    "StructureIssue",
    "field_types",
    "iter_structure_issues",
    "normalise_token",
    "optional_inner",
    "unstructure_settings",
]

_E = TypeVar("_E", bound=enum.Enum)

#: Fields whose values are credentials: never shown in errors, left out of
#: :func:`unstructure_settings` unless asked for.
SECRET_FIELDS = frozenset({"api_key", "connection_string"})

_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off"})
_SEPARATORS = re.compile(r"[\s_\-.]+")


class ConfigValueError(ValueError):
    """A value of the wrong type or form; ``expected`` says what would have been accepted.

    The offending value is kept on the exception, not in its message, so the caller decides
    whether it may be shown (a secret or a substituted environment variable may not).
    """

    def __init__(self, expected: str, value: object) -> None:
        super().__init__(f"expected {expected}")
        self.expected = expected
        self.value = value


def normalise_token(text: str) -> str:
    """Lower-case ``text`` and drop separators, so ``RoundRobin`` matches ``round_robin``."""
    return _SEPARATORS.sub("", text).lower()


def _structure_str(value: object, _: type) -> str:
    if isinstance(value, str):
        return value
    raise ConfigValueError("a string", value)


def _structure_int(value: object, _: type) -> int:
    if isinstance(value, bool):
        raise ConfigValueError("an integer", value)
    if isinstance(value, int):
        return value
    number: float | None = None
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = None
    if number is not None and math.isfinite(number) and number.is_integer():
        return int(number)
    raise ConfigValueError("an integer", value)


def _structure_float(value: object, _: type) -> float:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is not None and math.isfinite(number):
        return number
    raise ConfigValueError("a number", value)


def _structure_bool(value: object, _: type) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigValueError("a boolean (true/false, yes/no, on/off, 1/0)", value)


@functools.cache
def _enum_members(enum_type: type[enum.Enum]) -> tuple[dict[str, enum.Enum], str]:
    members = {normalise_token(str(member.value)): member for member in enum_type}
    return members, "one of " + ", ".join(str(member.value) for member in enum_type)


def _structure_enum(value: object, enum_type: type[_E]) -> _E:
    """Match members by value ignoring case and separators: ``Round-Robin`` → round_robin."""
    members, expected = _enum_members(enum_type)
    if isinstance(value, str) and (member := members.get(normalise_token(value))):
        return member  # type: ignore[return-value]  # the table is built from enum_type
    raise ConfigValueError(expected, value)


def _is_homogeneous_tuple(type_: Any) -> bool:
    args = get_args(type_)
    return get_origin(type_) is tuple and len(args) == 2 and args[1] is Ellipsis


def _tuple_hook(
    type_: Any, converter: cattrs.Converter
) -> Callable[[object, type], tuple[Any, ...]]:
    """Tuples come from lists only; cattrs would happily turn ``"abc"`` into three items."""
    item_type = get_args(type_)[0]
    handler = converter.get_structure_hook(item_type)

    def structure(value: object, _: type) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise ConfigValueError("a list", value)
        items: list[Any] = []
        errors: list[Exception] = []
        for index, item in enumerate(value):
            try:
                items.append(handler(item, item_type))
            except Exception as exc:  # noqa: BLE001 - every item's failure is reported together
                note = IterableValidationNote(f"Structuring {type_} @ index {index}", index, type_)
                exc.__notes__ = [*getattr(exc, "__notes__", []), note]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {type_}", errors, tuple)
        return tuple(items)

    return structure


def _is_mapping(type_: Any) -> bool:
    origin: object = get_origin(type_)
    return origin is Mapping


def _structure_headers(value: object, _: type) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigValueError("a table of strings", value)
    result: dict[str, str] = {}
    errors: list[Exception] = []
    for key, item in value.items():
        try:
            result[_structure_str(key, str)] = _structure_str(item, str)
        except ConfigValueError as exc:
            note = IterableValidationNote(f"Structuring mapping value @ key {key!r}", str(key), str)
            exc.__notes__ = [note]
            errors.append(exc)
    if errors:
        raise IterableValidationError("While structuring a mapping", errors, dict)
    return result


def _build_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(bool, _structure_bool)
    # Registered on StrEnum itself: cattrs dispatches by MRO first, and a StrEnum is a str, so
    # a hook on Enum alone would lose to the plain-string hook above.
    converter.register_structure_hook(enum.StrEnum, _structure_enum)
    converter.register_structure_hook(enum.Enum, _structure_enum)
    converter.register_structure_hook_factory(_is_homogeneous_tuple, _tuple_hook)
    converter.register_structure_hook_factory(_is_mapping, lambda _: _structure_headers)
    # Lists, not tuples, so that the output can be written back as JSON, TOML or YAML.
    converter.register_unstructure_hook(tuple, list)
    # Plain values: YAML and TOML writers do not know StrEnum members.
    converter.register_unstructure_hook(enum.StrEnum, lambda member: member.value)
    converter.register_unstructure_hook(enum.Enum, lambda member: member.value)
    return converter


#: The settings converter. ``CONVERTER.structure(mapping, LlmSettings)`` is strict and raises
#: cattrs exception groups; :func:`llmbackend.load_settings` turns them into a
#: :class:`~llmbackend.errors.ConfigurationError` with paths.
CONVERTER = _build_converter()


@attrs.frozen
class StructureIssue:
    """One failure found in a cattrs exception group, relative to where structuring began."""

    path: tuple[str | int, ...]
    #: ``"unknown"``, ``"missing"``, ``"value"`` (see ``error``) or ``"other"``.
    kind: str
    error: Exception
    #: For ``"unknown"``: the keys the class does accept, to suggest from.
    known_keys: tuple[str, ...] = ()


def iter_structure_issues(
    exc: Exception, path: tuple[str | int, ...] = ()
) -> Iterator[StructureIssue]:
    """Flatten cattrs' nested exception groups into issues with exact paths.

    The notes cattrs attaches (``AttributeValidationNote.name`` and
    ``IterableValidationNote.index``) carry the path; this walks them instead of parsing
    message text, which is what ``cattrs.v.transform_error`` does for its own formatting.
    """
    if isinstance(exc, ClassValidationError):
        with_names, without = exc.group_exceptions()
        for sub, attribute in with_names:
            yield from iter_structure_issues(sub, (*path, attribute.name))
        for sub in without:
            yield from iter_structure_issues(sub, path)
    elif isinstance(exc, IterableValidationError):
        with_indices, without = exc.group_exceptions()
        for sub, item in with_indices:
            yield from iter_structure_issues(sub, (*path, item.index))
        for sub in without:
            yield from iter_structure_issues(sub, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        known = tuple(field.name for field in attrs.fields(exc.cl))
        for key in sorted(exc.extra_fields, key=str):
            yield StructureIssue((*path, key), "unknown", exc, known)
    elif isinstance(exc, KeyError):
        yield StructureIssue(path, "missing", exc)
    elif isinstance(exc, ConfigValueError):
        yield StructureIssue(path, "value", exc)
    else:
        yield StructureIssue(path, "other", exc)


def unstructure_settings(settings: LlmSettings, *, include_secrets: bool = False) -> dict[str, Any]:
    """``settings`` as plain data that :func:`llmbackend.load_settings` accepts back.

    API keys and the connection strings are left out unless ``include_secrets`` is
    true, so the result can be logged, printed by the CLI or attached to a bug report.
    """
    data: dict[str, Any] = CONVERTER.unstructure(settings)
    if not include_secrets:
        for backend in data["backends"]:
            backend.pop("api_key", None)
        data["caching"].pop("connection_string", None)
        data["memory"].pop("connection_string", None)
    return data


@functools.cache
def field_types(cls: type) -> Mapping[str, Any]:
    """The resolved type of each attrs field of ``cls`` (settings use string annotations)."""
    return typing.get_type_hints(cls)


def optional_inner(type_: Any) -> Any:
    """``X`` for ``X | None``; ``type_`` itself otherwise."""
    args = get_args(type_)
    if type(None) in args and len(args) == 2:
        return next(arg for arg in args if arg is not type(None))
    return type_
