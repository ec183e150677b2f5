"""Loading and validating settings: :func:`load_settings`.

Sources, in order of precedence (later wins):

1. the ``source``: a dict, an :class:`~llmbackend.settings.LlmSettings`, or a ``.json``,
   ``.toml``, ``.yaml``/``.yml`` file (YAML needs ``pip install 'llmbackend[yaml]'``). A file
   (or dict) holds the settings at its root, or under one top-level key ``llmbackend`` so it
   can share a file with other tools::

       [llmbackend]
       selection_strategy = "failover"

       [[llmbackend.backends]]
       name = "openai-main"
       type = "openai"
       api_key = "${OPENAI_API_KEY}"

2. ``${VAR}`` / ``${VAR:-default}`` references in any string value, from ``environ``
   (``$${`` is a literal ``${``);
3. ``LLMBACKEND_*`` environment overrides: ``LLMBACKEND_TIMEOUT_SECONDS=30``,
   ``LLMBACKEND_CIRCUIT_BREAKER__FAILURE_THRESHOLD=3`` and, per backend by name,
   ``LLMBACKEND_BACKENDS__OPENAI_MAIN__MODEL_NAME=gpt-4o`` (names match case-insensitively,
   with every non-alphanumeric character written as ``_``). ``LLMBACKEND_CONFIG`` is not an
   override: it names a config file for the CLI and :func:`open_service`;
4. API keys from ``secrets.provider``: ``configuration`` (as written), ``environment_variables``
   (``<environment_variable_prefix><BACKEND_NAME>_API_KEY``, e.g. ``LLM_OPENAI_MAIN_API_KEY``),
   ``file`` (a JSON/TOML table of backend name → key at ``secrets.file_path``, relative to the
   config file) or ``custom`` (the ``secret_resolver`` callable). Each falls back to the
   configured ``api_key`` when it has none for a backend.

Every problem (unknown or misspelt keys, wrong types, bad enum values, unresolved variables,
duplicate or unknown backend types, out-of-range numbers, missing URLs) is collected and
raised in one :class:`~llmbackend.errors.ConfigurationError`, each with its path
(``backends[1].temprature: unknown key; did you mean 'temperature'?``). Secret values never
appear in those messages, nor in ``repr(settings)``: API keys, connection strings, header
values and anything substituted from ``${VAR}`` are described by kind only.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

from llmbackend._config_checks import check_settings, normalise_backend_types
from llmbackend._config_problems import ProblemLog, describe_type
from llmbackend._config_secrets import SecretResolver, resolve_secrets
from llmbackend._config_sources import (
    DocumentError,
    apply_env_overrides,
    load_document,
    substitute,
    unwrap_root,
)
from llmbackend._config_structure import structure_settings
from llmbackend._converter import unstructure_settings
from llmbackend.errors import ConfigurationError
from llmbackend.settings import LlmSettings

__all__ = ["ConfigSource", "SecretResolver", "load_settings", "unstructure_settings"]

ConfigSource = LlmSettings | Mapping[str, object] | str | os.PathLike[str] | None


def load_settings(
    source: ConfigSource = None,
    *,
    environ: Mapping[str, str] | None = None,
    secret_resolver: SecretResolver | None = None,
) -> LlmSettings:
    """Load, merge and validate settings; raise one ConfigurationError listing every problem.

    ``source=None`` means "defaults plus environment". An ``LlmSettings`` is validated and
    gets its secrets resolved, but is not merged with ``LLMBACKEND_*`` overrides: it was
    built by code, which can read the environment itself. ``environ`` defaults to
    ``os.environ``; tests pass a dict instead of mutating the process environment.
    ``secret_resolver`` is only consulted when ``secrets.provider`` is ``custom``, so an
    application can always pass one and let the configuration decide.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    log = ProblemLog()
    base_dir: pathlib.Path | None = None
    if isinstance(source, LlmSettings):
        settings = source
        indices: tuple[int, ...] = tuple(range(len(source.backends)))
    else:
        if source is None or isinstance(source, Mapping):
            raw: Mapping[Any, Any] = {} if source is None else source
        elif isinstance(source, str | os.PathLike):
            file = pathlib.Path(source)
            raw, base_dir = _read_file(file), file.parent
        else:
            raise TypeError(
                f"source must be LlmSettings, a mapping or a file path, not {type(source).__name__}"
            )
        data = substitute(unwrap_root(raw, log), env, log)
        apply_env_overrides(data, env, log)
        structured = structure_settings(data, log)
        settings = structured.settings
        indices = structured.positions.get(("backends",), ())
    settings = normalise_backend_types(settings)
    backends = list(zip(indices, settings.backends, strict=True))
    check_settings(settings, backends, log)
    settings = resolve_secrets(
        settings,
        backends,
        environ=env,
        secret_resolver=secret_resolver,
        base_dir=base_dir,
        log=log,
    )
    log.raise_if_any()
    return settings


def _read_file(file: pathlib.Path) -> Mapping[Any, Any]:
    try:
        data = load_document(file)
    except DocumentError as exc:
        raise ConfigurationError(f"config file '{file}' {exc}") from None
    if data is None:  # an empty YAML document
        return {}
    if not isinstance(data, Mapping):
        raise ConfigurationError(
            f"config file '{file}' must hold a table of settings, got {describe_type(data)}"
        )
    return data
