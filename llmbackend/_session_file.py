"""Chat sessions as JSON: what ``save()`` writes and ``load()`` reads back.

Imported only when a session is saved or loaded, so ``import llmbackend`` stays light.
The file (``version`` 1)::

    {"version": 1, "system": "Be brief.", "model": null, "backend": null,
     "params": {"temperature": 0.2},
     "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
     "totals": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4,
                "cost_usd": null, "turns": 1}}

Reading is strict (the SDK's converter: unknown keys, wrong types and bad roles are errors)
and every problem is reported at once with its path, like a config file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import attrs
import cattrs
from attrs import field, frozen

from llmbackend._config_problems import find_suggestion, format_path
from llmbackend._conversation import PARAMETERS
from llmbackend._converter import (
    CONVERTER,
    ConfigValueError,
    StructureIssue,
    field_types,
    iter_structure_issues,
)
from llmbackend.models import ChatMessage, ChatRequest

__all__ = ["VERSION", "SessionData", "from_json_data", "read", "to_json_data", "write"]

#: The file format version this module writes and reads.
VERSION = 1


@frozen(kw_only=True)
class Totals:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = None
    turns: int = 0


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value)


@frozen(kw_only=True)
class SessionData:
    """Everything a session file holds, structured and checked."""

    version: int
    system: str | None = None
    model: str | None = None
    backend: str | None = None
    #: ``ChatRequest`` field name → value, already structured to the field's type.
    params: Mapping[str, Any] = field(factory=dict)
    messages: tuple[ChatMessage, ...] = field(default=(), converter=_tuple)
    totals: Totals = field(factory=Totals)


def _holds_mapping(type_: Any) -> bool:
    """``Mapping[str, Any]`` itself, or a union with it (``str | Mapping[str, Any] | None``)."""
    if get_origin(type_) is Mapping:
        return True
    return any(get_origin(arg) is Mapping for arg in get_args(type_)) and str in get_args(type_)


def _structure_json(value: object, type_: Any) -> Any:
    """JSON objects stay as they are (tool schemas, metadata, response formats)."""
    if get_origin(type_) is Mapping:
        if isinstance(value, dict):
            return value
        raise ConfigValueError("a JSON object", value)
    if value is None or isinstance(value, str | dict):
        return value
    raise ConfigValueError("text or a JSON object", value)


def _is_literal(type_: Any) -> bool:
    origin: object = get_origin(type_)
    return origin is Literal


def _structure_literal(value: object, type_: Any) -> Any:
    if value in get_args(type_):
        return value
    raise ConfigValueError("one of " + ", ".join(map(str, get_args(type_))), value)


def _build_converter() -> cattrs.Converter:
    # The settings converter's strict leaves (no "12" for a name, no 1 for true), and
    # messages written without their default fields so files stay readable.
    converter = CONVERTER.copy(omit_if_default=True)
    converter.register_structure_hook_factory(_holds_mapping, lambda _: _structure_json)
    converter.register_structure_hook_factory(_is_literal, lambda _: _structure_literal)
    return converter


_CONVERTER = _build_converter()


def to_json_data(data: SessionData) -> dict[str, Any]:
    """``data`` as JSON-ready values."""
    types = field_types(ChatRequest)
    return {
        "version": data.version,
        "system": data.system,
        "model": data.model,
        "backend": data.backend,
        "params": {
            name: _CONVERTER.unstructure(value, types[name]) for name, value in data.params.items()
        },
        "messages": _CONVERTER.unstructure(data.messages, tuple[ChatMessage, ...]),
        "totals": attrs.asdict(data.totals),
    }


def from_json_data(raw: object, source: str) -> SessionData:
    """Check and structure what a session file holds; ``ValueError`` naming ``source`` and
    every problem otherwise."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: not a chat session: expected a JSON object")  # noqa: TRY004  # bad file content, like the other problems
    version = raw.get("version")
    if version != VERSION:
        found = "no version" if version is None else f"version {version!r}"
        raise ValueError(
            f"{source}: not a chat session this llmbackend can read: {found} "
            f"(it reads version {VERSION})"
        )
    problems: list[str] = []
    try:
        data = _CONVERTER.structure(raw, SessionData)
    except Exception as exc:  # noqa: BLE001  # every issue is reported below
        problems.extend(_describe(issue) for issue in iter_structure_issues(exc))
        data = None
    params: dict[str, Any] = {}
    raw_params = raw.get("params") or {}
    if isinstance(raw_params, dict):
        params = _structure_params(raw_params, problems)
    if problems or data is None:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ValueError(f"{source}: not a valid chat session:\n{listed}")
    return attrs.evolve(data, params=params)


def _structure_params(raw: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    types = field_types(ChatRequest)
    params: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in PARAMETERS:
            suggestion = find_suggestion(name, PARAMETERS)
            hint = f"; did you mean {suggestion!r}?" if suggestion else ""
            problems.append(f"params.{name}: not a chat parameter{hint}")
            continue
        try:
            params[name] = _CONVERTER.structure(value, types[name])
        except Exception as exc:  # noqa: BLE001  # every issue is reported
            problems.extend(
                _describe(attrs.evolve(issue, path=("params", name, *issue.path)))
                for issue in iter_structure_issues(exc)
            )
    return params


def _describe(issue: StructureIssue) -> str:
    where = format_path(issue.path) or "(top level)"
    if issue.kind == "unknown":
        suggestion = find_suggestion(str(issue.path[-1]), issue.known_keys)
        return f"{where}: unknown key" + (f"; did you mean {suggestion!r}?" if suggestion else "")
    if issue.kind == "missing":
        return f"{where}: missing"
    if isinstance(issue.error, ConfigValueError):
        return f"{where}: {issue.error}, got {type(issue.error.value).__name__}"
    return f"{where}: {issue.error}"


def write(path: str | os.PathLike[str], data: SessionData) -> None:
    """Write ``data`` as JSON; a crash mid-write leaves the previous file intact."""
    target = Path(path)
    text = json.dumps(to_json_data(data), indent=2, ensure_ascii=False) + "\n"
    scratch = target.with_name(target.name + ".tmp")
    scratch.write_text(text, encoding="utf-8")
    scratch.replace(target)


def read(path: str | os.PathLike[str]) -> SessionData:
    """Read a session file; ``ValueError`` naming the file and the problem when it is not one."""
    source = str(path)
    text = Path(path).read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{source}: not valid JSON: {exc}") from None
    return from_json_data(raw, source)
