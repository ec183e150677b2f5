"""Filling in each backend's API key from the configured secrets provider.

Keys are looked up by backend name and written to ``LlmBackendConfig.api_key``, which attrs
leaves out of ``repr``. No message built here ever contains a key: problems name the backend,
the variable or the file, and at most the *kind* of a wrong value.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping, Sequence

import attrs

from llmbackend._config_problems import ProblemLog, describe_type
from llmbackend._config_sources import DocumentError, env_token, load_document
from llmbackend.settings import LlmBackendConfig, LlmSettings, SecretsProvider

__all__ = ["SecretResolver", "resolve_secrets"]

#: ``secret_resolver(backend_name)`` → the API key, or ``None`` to keep the configured one.
SecretResolver = Callable[[str], str | None]

_FILE_PATH = ("secrets", "file_path")


def resolve_secrets(
    settings: LlmSettings,
    backends: Sequence[tuple[int, LlmBackendConfig]],
    *,
    environ: Mapping[str, str],
    secret_resolver: SecretResolver | None,
    base_dir: pathlib.Path | None,
    log: ProblemLog,
) -> LlmSettings:
    """``settings`` with API keys from the provider; the same object when nothing changed.

    Every provider falls back to the ``api_key`` written in the configuration when it has
    no key for a backend, so a config can mix provided and inline keys.
    """
    provider = settings.secrets.provider
    keys: dict[int, str] = {}
    if provider is SecretsProvider.ENVIRONMENT_VARIABLES:
        prefix = settings.secrets.environment_variable_prefix
        for index, backend in backends:
            if value := environ.get(f"{prefix}{env_token(backend.name)}_API_KEY"):
                keys[index] = value
    elif provider is SecretsProvider.FILE:
        table = _read_secrets_file(settings.secrets.file_path, base_dir, log)
        for index, backend in backends:
            entry = table.get(backend.name)
            if isinstance(entry, str):
                keys[index] = entry
            elif entry is not None:
                log.add(
                    _FILE_PATH,
                    f"the entry for backend {backend.name!r} must be a string,"
                    f" got {describe_type(entry)}",
                )
    elif provider is SecretsProvider.CUSTOM:
        if secret_resolver is None:
            log.add(
                ("secrets", "provider"),
                "'custom' needs a secret_resolver passed to load_settings()",
            )
        else:
            keys = _call_resolver(secret_resolver, backends, log)
    if not keys:
        return settings
    updated = tuple(
        attrs.evolve(backend, api_key=keys[index]) if index in keys else backend
        for index, backend in backends
    )
    return attrs.evolve(settings, backends=updated)


def _read_secrets_file(
    file_path: str | None, base_dir: pathlib.Path | None, log: ProblemLog
) -> Mapping[object, object]:
    if not file_path:
        log.add(_FILE_PATH, "required when secrets.provider is 'file'")
        return {}
    file = pathlib.Path(file_path).expanduser()
    if base_dir is not None and not file.is_absolute():
        file = base_dir / file
    try:
        table = load_document(file, allowed=(".json", ".toml"))
    except DocumentError as exc:
        log.add(_FILE_PATH, f"secrets file '{file}' {exc}")
        return {}
    if not isinstance(table, Mapping):
        log.add(
            _FILE_PATH,
            f"secrets file '{file}' must map backend names to keys, got {describe_type(table)}",
        )
        return {}
    return table


def _call_resolver(
    resolver: SecretResolver,
    backends: Sequence[tuple[int, LlmBackendConfig]],
    log: ProblemLog,
) -> dict[int, str]:
    keys: dict[int, str] = {}
    for index, backend in backends:
        path = ("backends", index, "api_key")
        try:
            # Typed loosely on purpose: a user's resolver may return anything.
            value: object = resolver(backend.name)
        except Exception as exc:  # noqa: BLE001 - reported with the backend, never re-raised
            # Only the type: a resolver's message may quote what it fetched.
            log.add(path, f"the secret resolver failed ({type(exc).__name__})")
            continue
        if isinstance(value, str):
            keys[index] = value
        elif value is not None:
            log.add(
                path,
                f"the secret resolver returned {describe_type(value)}; expected a string or None",
            )
    return keys
