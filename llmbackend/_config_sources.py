"""Where raw settings come from: files, ``${VAR}`` substitution and ``LLMBACKEND_*`` overrides.

Everything here works on plain data (dicts, lists, strings) before anything is structured, so
that each later stage sees one merged document and can report problems by settings path.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from llmbackend._config_problems import KeyPath, ProblemLog, describe_type, find_suggestion
from llmbackend._converter import field_types, optional_inner
from llmbackend.settings import LlmBackendConfig, LlmSettings

__all__ = [
    "ENV_PREFIX",
    "RESERVED_ENV",
    "UNRESOLVED",
    "DocumentError",
    "apply_env_overrides",
    "contains_unresolved",
    "env_token",
    "load_document",
    "substitute",
    "unwrap_root",
]

ENV_PREFIX: Final = "LLMBACKEND_"
#: ``LLMBACKEND_*`` names that are not setting overrides.
RESERVED_ENV: Final = frozenset({"LLMBACKEND_CONFIG"})
#: The top-level key a file may put all settings under (to share a file with other tools).
ROOT_KEY: Final = "llmbackend"

_SUFFIXES: Final = {".json": "JSON", ".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}
# `$${` first so that an escaped reference is never read as a real one.
_REFERENCE = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|\$\{")
_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")


class DocumentError(Exception):
    """A settings or secrets file could not be read or parsed; the message names the position.

    It never quotes the file's content: a line of a broken file may hold an API key.
    """


def load_document(file: pathlib.Path, *, allowed: tuple[str, ...] = tuple(_SUFFIXES)) -> Any:
    """Parse a JSON, TOML or YAML file chosen by suffix; YAML needs the ``yaml`` extra."""
    suffix = file.suffix.lower()
    if suffix not in allowed:
        kinds = ", ".join(allowed[:-1]) + " or " + allowed[-1]
        raise DocumentError(f"has an unsupported type {suffix or '(none)'!r}; use {kinds}")
    kind = _SUFFIXES[suffix]
    if kind == "YAML":
        try:
            import yaml
        except ImportError:
            raise DocumentError(
                "is YAML, which needs PyYAML: pip install 'llmbackend[yaml]'"
            ) from None
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DocumentError("was not found") from None
    except UnicodeDecodeError as exc:
        raise DocumentError(f"is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DocumentError(f"cannot be read: {exc.strerror}") from None
    # The parsers' own messages (and chained tracebacks) can quote the offending line, so only
    # the error kind and its position are kept.
    if kind == "JSON":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DocumentError(
                f"is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from None
    if kind == "TOML":
        import tomllib  # only TOML files need it

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise DocumentError(f"is not valid TOML: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise DocumentError(f"is not valid YAML: {exc.problem}{where}") from None
    except yaml.YAMLError:
        raise DocumentError("is not valid YAML") from None


def unwrap_root(data: Mapping[Any, Any], log: ProblemLog) -> Mapping[Any, Any]:
    """The settings themselves: ``data``, or ``data["llmbackend"]`` when that is its one key."""
    if ROOT_KEY not in data:
        return data
    others = sorted(str(key) for key in data if key != ROOT_KEY)
    if others:
        log.add(
            ROOT_KEY,
            "must be the only top-level key when the settings sit under it"
            f" (also found: {', '.join(others)})",
        )
    inner = data[ROOT_KEY]
    if not isinstance(inner, Mapping):
        log.add(ROOT_KEY, f"expected a table of settings, got {describe_type(inner)}")
        return {}
    return inner


class _Unresolved:
    """Stands in for a value whose ``${VAR}`` could not be resolved (already reported)."""

    def __repr__(self) -> str:
        return "<unresolved>"


UNRESOLVED: Final = _Unresolved()


def contains_unresolved(value: Any) -> bool:
    """Whether ``value`` is, or holds, a value that failed substitution."""
    if value is UNRESOLVED:
        return True
    if isinstance(value, Mapping):
        return any(contains_unresolved(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(contains_unresolved(item) for item in value)
    return False


def substitute(value: Any, environ: Mapping[str, str], log: ProblemLog, path: KeyPath = ()) -> Any:
    """A copy of ``value`` with ``${VAR}``/``${VAR:-default}`` replaced in every string.

    As in the shell, the default applies when the variable is unset or empty; ``$${`` is a
    literal ``${``. Keys are left alone. Containers are always copied, so later stages may
    mutate the result without touching the caller's data.
    """
    if isinstance(value, Mapping):
        return {key: substitute(item, environ, log, (*path, key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [substitute(item, environ, log, (*path, i)) for i, item in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        return _substitute_string(value, environ, log, path)
    return value


def _substitute_string(
    text: str, environ: Mapping[str, str], log: ProblemLog, path: KeyPath
) -> str | _Unresolved:
    pieces: list[str] = []
    names: list[str] = []
    failed = False
    position = 0
    for match in _REFERENCE.finditer(text):
        pieces.append(text[position : match.start()])
        position = match.end()
        if match.group() == "$${":
            pieces.append("${")
            continue
        body = match.group("body")
        parsed = _BODY.fullmatch(body) if body is not None else None
        if parsed is None:
            failed = True
            log.add(
                path,
                "malformed variable reference; write ${NAME} or ${NAME:-default}"
                " (and $${ for a literal ${)",
            )
            continue
        name, default = parsed.group("name"), parsed.group("default")
        found = environ.get(name)
        if found is None or (found == "" and default is not None):
            if default is None:
                failed = True
                log.add(
                    path,
                    f"environment variable {name} is not set"
                    f" (use ${{{name}:-default}} for a fallback)",
                )
                continue
            found = default
        names.append(name)
        pieces.append(found)
    pieces.append(text[position:])
    if failed:
        return UNRESOLVED
    if names:
        log.substituted[path] = tuple(dict.fromkeys(names))
    return "".join(pieces)


def env_token(name: str) -> str:
    """A backend name as it appears in environment variable names: ``openai-main`` → OPENAI_MAIN."""
    return _NOT_ALNUM.sub("_", name).upper()


def apply_env_overrides(data: dict[Any, Any], environ: Mapping[str, str], log: ProblemLog) -> None:
    """Apply ``LLMBACKEND_*`` variables on top of ``data`` (a private copy), in place.

    ``LLMBACKEND_TIMEOUT_SECONDS=30``; sections with a double underscore
    (``LLMBACKEND_CIRCUIT_BREAKER__FAILURE_THRESHOLD=3``); a backend by name
    (``LLMBACKEND_BACKENDS__OPENAI_MAIN__MODEL_NAME=gpt-4o``). List values are
    comma-separated; header tables are JSON objects.
    """
    for var in sorted(environ):
        if var.startswith(ENV_PREFIX) and var not in RESERVED_ENV:
            _apply_override(var, environ[var], data, log)


def _apply_override(var: str, value: str, data: dict[Any, Any], log: ProblemLog) -> None:
    where = f"env {var}"
    parts = var[len(ENV_PREFIX) :].split("__")
    cls: type = LlmSettings
    target = data
    path: KeyPath = ()
    index = 0
    while True:
        if index >= len(parts):
            log.add(where, "names a backend but no setting; e.g. " + "__".join([var, "MODEL_NAME"]))
            return
        key = parts[index].lower()
        if cls is LlmSettings and key == "backends":
            if index + 1 >= len(parts):
                log.add(where, f"name a backend and a setting: {var}__<NAME>__MODEL_NAME")
                return
            position = _find_backend(target.get("backends"), parts[index + 1], where, log)
            if position is None:
                return
            target = target["backends"][position]
            path, cls, index = ("backends", position), LlmBackendConfig, index + 2
            continue
        types = field_types(cls)
        if key not in types:
            message = f"unknown setting {key!r}"
            if suggestion := find_suggestion(key, types):
                fixed = ENV_PREFIX + "__".join([*parts[:index], suggestion.upper()])
                message += f"; did you mean {fixed}?"
            log.add(where, message)
            return
        type_ = types[key]
        if attrs.has(type_):
            if index == len(parts) - 1:
                first = attrs.fields(type_)[0].name.upper()
                log.add(where, f"{key!r} is a section; set one of its keys, e.g. {var}__{first}")
                return
            section = target.get(key)
            if section is None:
                section = target[key] = {}
            if not isinstance(section, dict):
                return  # the file's own value is reported as the wrong type later
            target, cls, path, index = section, type_, (*path, key), index + 1
            continue
        if index != len(parts) - 1:
            log.add(where, f"{key!r} is a single value and has no settings below it")
            return
        target[key] = _env_value(value, type_)
        log.overridden[(*path, key)] = var
        log.substituted.pop((*path, key), None)
        return


def _find_backend(backends: Any, token: str, where: str, log: ProblemLog) -> int | None:
    names: list[tuple[int, str]] = []
    if isinstance(backends, list):
        names = [
            (i, entry["name"])
            for i, entry in enumerate(backends)
            if isinstance(entry, dict) and isinstance(entry.get("name"), str)
        ]
    matches = [(i, name) for i, name in names if env_token(name) == token.upper()]
    if len(matches) == 1:
        return matches[0][0]
    if matches:
        clash = ", ".join(repr(name) for _, name in matches)
        log.add(where, f"matches several backends ({clash}); give them more distinct names")
    else:
        known = ", ".join(repr(name) for _, name in names) or "none"
        log.add(where, f"no backend is named {token!r} (configured backends: {known})")
    return None


def _env_value(value: str, type_: Any) -> Any:
    """Turn an environment string into what the field's structure hook expects."""
    inner = optional_inner(type_)
    if getattr(inner, "__origin__", None) is tuple:
        return [item.strip() for item in value.split(",") if item.strip()]
    if getattr(inner, "__origin__", None) is Mapping:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # reported by the structure hook as "expected a table of strings"
    return value
