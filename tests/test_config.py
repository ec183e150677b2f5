"""Tests for llmbackend.config: sources, substitution, overrides, validation and secrets."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import attrs
import pytest
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError

from llmbackend._config_checks import RANGES
from llmbackend._converter import CONVERTER, field_types
from llmbackend.config import load_settings, unstructure_settings
from llmbackend.errors import ConfigProblem, ConfigurationError
from llmbackend.settings import (
    CacheProvider,
    LlmBackendConfig,
    LlmSettings,
    SecretsProvider,
    SelectionStrategy,
    SpendResetPeriod,
    Weekday,
)

SECRET = "sk-live-0123456789abcdef"
OPENAI: dict[str, Any] = {"name": "a", "type": "openai"}


def problems(source: Any, environ: dict[str, str] | None = None, **kwargs: Any) -> list[str]:
    """The problems ``load_settings`` reports, as the strings a user reads."""
    with pytest.raises(ConfigurationError) as info:
        load_settings(source, environ=environ or {}, **kwargs)
    return [str(problem) for problem in info.value.problems]


def error_text(source: Any, environ: dict[str, str] | None = None, **kwargs: Any) -> str:
    """``str()`` of the ConfigurationError ``load_settings`` raises."""
    with pytest.raises(ConfigurationError) as info:
        load_settings(source, environ=environ or {}, **kwargs)
    return str(info.value)


def backend(**fields: Any) -> dict[str, Any]:
    """A valid openai backend config with ``fields`` changed."""
    return {**OPENAI, **fields}


# --- sources ---------------------------------------------------------------------------


def test_dict_source_is_structured() -> None:
    """A plain dict becomes the frozen settings tree, nested sections and backends included."""
    settings = load_settings(
        {
            "selection_strategy": "round_robin",
            "timeout_seconds": 30,
            "circuit_breaker": {"failure_threshold": 2},
            "backends": [backend(model_name="gpt-4o", stop_sequences=["END"], priority=1)],
        },
        environ={},
    )
    assert settings.selection_strategy is SelectionStrategy.ROUND_ROBIN
    assert settings.timeout_seconds == 30.0
    assert settings.circuit_breaker.failure_threshold == 2
    assert settings.backends == (
        LlmBackendConfig(
            name="a", type="openai", model_name="gpt-4o", stop_sequences=("END",), priority=1
        ),
    )


def test_no_source_gives_documented_defaults_in_every_section() -> None:
    """With no source and no environment, every section has the defaults settings.py documents."""
    settings = load_settings(environ={})
    assert settings == LlmSettings()
    assert (settings.backends, settings.selection_strategy) == ((), SelectionStrategy.FAILOVER)
    assert (settings.timeout_seconds, settings.max_retries, settings.retry_delay_ms) == (
        120.0,
        3,
        1000.0,
    )
    assert (settings.default_temperature, settings.default_max_tokens) == (0.7, 2000)
    breaker = settings.circuit_breaker
    assert (breaker.failure_threshold, breaker.duration_of_break_seconds) == (5, 30.0)
    assert (breaker.sampling_duration_seconds, breaker.minimum_throughput) == (60.0, 10)
    limit = settings.rate_limit
    assert (limit.enabled, limit.max_requests, limit.window_seconds) == (False, 100, 60.0)
    assert (limit.max_concurrent_requests, limit.queue_limit) == (10, 100)
    cache = settings.caching
    assert (cache.enabled, cache.provider, cache.key_prefix) == (
        False,
        CacheProvider.MEMORY,
        "llm:",
    )
    assert (cache.expiration_minutes, cache.max_cache_size_mb) == (60.0, 100.0)
    health = settings.health_check
    assert (health.interval_seconds, health.timeout_seconds) == (60.0, 10.0)
    assert (health.unhealthy_threshold, health.healthy_threshold) == (3, 2)
    secrets = settings.secrets
    assert (secrets.provider, secrets.environment_variable_prefix, secrets.file_path) == (
        SecretsProvider.CONFIGURATION,
        "LLM_",
        None,
    )
    telemetry = settings.telemetry
    assert (telemetry.enable_metrics, telemetry.enable_tracing, telemetry.log_prompts) == (
        True,
        False,
        False,
    )
    assert telemetry.service_name == "llmbackend"
    memory = settings.memory
    assert (memory.provider, memory.default_token_limit, memory.ttl_minutes) == (
        CacheProvider.MEMORY,
        4096,
        60.0,
    )
    plugins = settings.plugins
    assert (plugins.enabled, plugins.plugin_directory, plugins.specific_plugins) == (
        True,
        "plugins",
        (),
    )


def test_backend_defaults() -> None:
    """A backend that names only name and type gets the documented per-backend defaults."""
    (config,) = load_settings({"backends": [OPENAI]}, environ={}).backends
    assert (config.priority, config.weight, config.enabled) == (100, 1.0, True)
    assert (config.enable_streaming, config.enable_function_calling) == (True, True)
    assert (config.spend_reset_period, config.spend_reset_day_of_week) == (
        SpendResetPeriod.NEVER,
        Weekday.MONDAY,
    )
    assert (config.spend_reset_day_of_month, config.temperature, config.api_key) == (1, None, None)
    assert config.effective_base_url == "https://api.openai.com/v1"


FILE_BODIES = {
    "json": json.dumps({"timeout_seconds": 30, "backends": [{"name": "a", "type": "openai"}]}),
    "toml": 'timeout_seconds = 30\n[[backends]]\nname = "a"\ntype = "openai"\n',
    "yaml": "timeout_seconds: 30\nbackends:\n  - name: a\n    type: openai\n",
}
WRAPPED_BODIES = {
    "json": json.dumps({"llmbackend": json.loads(FILE_BODIES["json"])}),
    "toml": '[llmbackend]\ntimeout_seconds = 30\n[[llmbackend.backends]]\nname = "a"\n'
    'type = "openai"\n',
    "yaml": "llmbackend:\n  timeout_seconds: 30\n  backends:\n    - name: a\n      type: openai\n",
}


@pytest.mark.parametrize("suffix", ["json", "toml", "yaml"])
@pytest.mark.parametrize("wrapped", [False, True], ids=["root", "llmbackend-key"])
def test_files_at_root_or_under_llmbackend_key(
    tmp_path: pathlib.Path, suffix: str, wrapped: bool
) -> None:
    """JSON, TOML and YAML files load the same settings, at the root or under `llmbackend`."""
    file = tmp_path / f"settings.{suffix}"
    file.write_text((WRAPPED_BODIES if wrapped else FILE_BODIES)[suffix], encoding="utf-8")
    for source in (file, str(file)):
        settings = load_settings(source, environ={})
        assert settings.timeout_seconds == 30.0
        assert settings.backends == (LlmBackendConfig(name="a", type="openai"),)


def test_yml_suffix_and_empty_yaml_file(tmp_path: pathlib.Path) -> None:
    """`.yml` is YAML too, and an empty YAML document means all defaults."""
    file = tmp_path / "settings.yml"
    file.write_text("", encoding="utf-8")
    assert load_settings(file, environ={}) == LlmSettings()


def test_llmbackend_key_must_be_alone() -> None:
    """Settings under `llmbackend` beside other top-level keys are ambiguous and rejected."""
    assert problems({"llmbackend": {"timeout_seconds": 5}, "app": {}, "other": 1}) == [
        "llmbackend: must be the only top-level key when the settings sit under it"
        " (also found: app, other)"
    ]


def test_yaml_without_pyyaml_says_which_extra_to_install(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without PyYAML a YAML file fails with the install hint, not an ImportError."""
    monkeypatch.setitem(sys.modules, "yaml", None)
    file = tmp_path / "settings.yaml"
    file.write_text("timeout_seconds: 3\n", encoding="utf-8")
    assert problems(file) == [
        f"config file '{file}' is YAML, which needs PyYAML: pip install 'llmbackend[yaml]'"
    ]


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("missing.json", None, "was not found"),
        (
            "bad.json",
            '{"a": 1,\n  "api_key" "' + SECRET + '"}',
            "is not valid JSON: Expecting ':' delimiter (line 2, column 13)",
        ),
        (
            "bad.toml",
            f"timeout_seconds = 3\napi_key = {SECRET}\n",
            "is not valid TOML: Invalid value (at line 2, column 11)",
        ),
        (
            "bad.yaml",
            f"backends: [1, 2\napi_key: {SECRET}: x\n",
            "is not valid YAML: expected ',' or ']', but got ':' (line 2, column 8)",
        ),
        ("list.json", "[1, 2]", "must hold a table of settings, got a list"),
        ("settings.ini", "x=1", "has an unsupported type '.ini'; use .json, .toml, .yaml or .yml"),
    ],
)
def test_unreadable_files_name_the_file_and_position(
    tmp_path: pathlib.Path, name: str, body: str | None, message: str
) -> None:
    """A missing, unparsable or wrongly shaped file is one problem naming the file and
    position, and never quotes the broken line (it may hold a key)."""
    file = tmp_path / name
    if body is not None:
        file.write_text(body, encoding="utf-8")
    text = error_text(file)
    assert text == f"invalid llmbackend configuration:\n  - config file '{file}' {message}"
    assert SECRET not in text


def test_unsupported_source_type_is_a_type_error() -> None:
    """Passing something that is no source at all is a programming error, not a config one."""
    with pytest.raises(TypeError, match="source must be LlmSettings, a mapping or a file path"):
        load_settings(42, environ={})  # type: ignore[arg-type]


def test_llmsettings_source_is_returned_as_is_but_still_validated() -> None:
    """An LlmSettings passes through untouched when valid, and is checked like any source."""
    settings = LlmSettings(backends=(LlmBackendConfig(name="a", type="openai"),))
    assert load_settings(settings, environ={"LLMBACKEND_TIMEOUT_SECONDS": "1"}) is settings
    invalid = LlmSettings(backends=(LlmBackendConfig(name="a", type="openai", top_p=3.0),))
    assert problems(invalid) == ["backends[0].top_p: must be between 0 and 1, got 3.0"]


# --- ${VAR} substitution ---------------------------------------------------------------


def test_variable_substitution_in_nested_strings() -> None:
    """`${VAR}` is replaced in every string, including inside lists and header tables."""
    settings = load_settings(
        {
            "backends": [
                backend(
                    model_name="${MODEL}",
                    stop_sequences=["x${SEP}y"],
                    additional_headers={"X-Team": "${TEAM}"},
                )
            ]
        },
        environ={"MODEL": "gpt-4o", "SEP": "-", "TEAM": "search"},
    )
    (config,) = settings.backends
    assert (config.model_name, config.stop_sequences) == ("gpt-4o", ("x-y",))
    assert config.additional_headers == {"X-Team": "search"}


def test_variable_substitution_feeds_typed_fields() -> None:
    """A substituted string still goes through the strict hooks: "30" becomes 30.0."""
    settings = load_settings({"timeout_seconds": "${TIMEOUT}"}, environ={"TIMEOUT": "30"})
    assert settings.timeout_seconds == 30.0


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, "fallback"), ({"MODEL": ""}, "fallback"), ({"MODEL": "set"}, "set")],
    ids=["unset", "empty", "set"],
)
def test_default_applies_when_unset_or_empty(environ: dict[str, str], expected: str) -> None:
    """`${VAR:-default}` uses the default when VAR is unset or empty, as the shell does."""
    settings = load_settings(
        {"backends": [backend(model_name="${MODEL:-fallback}")]}, environ=environ
    )
    assert settings.backends[0].model_name == expected


def test_double_dollar_escapes_a_literal_reference() -> None:
    """`$${X}` yields the literal text `${X}` and is not looked up."""
    settings = load_settings(
        {"backends": [backend(model_name="$${NOT_A_VAR}/${REAL}")]}, environ={"REAL": "r"}
    )
    assert settings.backends[0].model_name == "${NOT_A_VAR}/r"


def test_unresolved_variable_names_the_key_and_the_fix() -> None:
    """An unset `${VAR}` without default is reported at the key that uses it, once."""
    assert problems({"backends": [backend(api_key="${OPENAI_KEY}")]}) == [
        "backends[0].api_key: environment variable OPENAI_KEY is not set"
        " (use ${OPENAI_KEY:-default} for a fallback)"
    ]


def test_malformed_reference_is_a_problem() -> None:
    """`${1X}` and an unclosed `${` are errors, not silently kept text."""
    assert problems({"backends": [backend(model_name="${1X}", base_url="http://h/${A")]}) == [
        "backends[0].model_name: malformed variable reference; write ${NAME} or"
        " ${NAME:-default} (and $${ for a literal ${)",
        "backends[0].base_url: malformed variable reference; write ${NAME} or"
        " ${NAME:-default} (and $${ for a literal ${)",
    ]


def test_substituted_value_is_never_shown_in_errors() -> None:
    """A wrong value that came from `${VAR}` is described by kind, never printed."""
    text = error_text(
        {"timeout_seconds": "${TIMEOUT}", "default_temperature": "${TEMP}"},
        environ={"TIMEOUT": SECRET, "TEMP": "3.5"},
    )
    assert text == (
        "invalid llmbackend configuration (2 problems):\n"
        "  - timeout_seconds: expected a number, got a string from ${TIMEOUT} (value not shown)\n"
        "  - default_temperature: must be between 0 and 2, got a number from ${TEMP}"
        " (value not shown)"
    )


# --- LLMBACKEND_* overrides ------------------------------------------------------------


def test_env_overrides_scalar_nested_and_per_backend() -> None:
    """Overrides win over the source at the top level, in sections and per backend by name."""
    settings = load_settings(
        {
            "timeout_seconds": 10,
            "backends": [{"name": "openai-main", "type": "openai", "model_name": "old"}],
        },
        environ={
            "LLMBACKEND_TIMEOUT_SECONDS": "30",
            "LLMBACKEND_CIRCUIT_BREAKER__FAILURE_THRESHOLD": "3",
            "LLMBACKEND_BACKENDS__OPENAI_MAIN__MODEL_NAME": "gpt-4o",
            "LLMBACKEND_BACKENDS__openai_main__TEMPERATURE": "0.2",
            "LLMBACKEND_CACHING__ENABLED": "yes",
            "LLMBACKEND_PLUGINS__SPECIFIC_PLUGINS": "one.py, two",
            "LLMBACKEND_CONFIG": "/ignored/here.toml",
        },
    )
    assert settings.timeout_seconds == 30.0
    assert settings.circuit_breaker.failure_threshold == 3
    assert (settings.backends[0].model_name, settings.backends[0].temperature) == ("gpt-4o", 0.2)
    assert settings.caching.enabled is True
    assert settings.plugins.specific_plugins == ("one.py", "two")


def test_env_override_headers_take_a_json_object() -> None:
    """A header table is set from the environment as a JSON object."""
    settings = load_settings(
        {"backends": [OPENAI]},
        environ={"LLMBACKEND_BACKENDS__A__ADDITIONAL_HEADERS": '{"X-Team": "search"}'},
    )
    assert settings.backends[0].additional_headers == {"X-Team": "search"}


def test_env_override_mistakes_are_reported_with_suggestions() -> None:
    """Unknown override names get the corrected variable; bad targets say what to do."""
    assert problems(
        {"backends": [{"name": "openai-main", "type": "openai"}]},
        environ={
            "LLMBACKEND_TIMEOUT_SECOND": "30",
            "LLMBACKEND_CIRCUIT_BREAKER__FAILURE_TRESHOLD": "3",
            "LLMBACKEND_BACKENDS__OPENAI_MAIN__MODEL": "x",
            "LLMBACKEND_BACKENDS__OTHER__MODEL_NAME": "x",
            "LLMBACKEND_CIRCUIT_BREAKER": "on",
            "LLMBACKEND_MAX_RETRIES__X": "1",
            "LLMBACKEND_NONSENSE": "1",
        },
    ) == [
        "env LLMBACKEND_BACKENDS__OPENAI_MAIN__MODEL: unknown setting 'model';"
        " did you mean LLMBACKEND_BACKENDS__OPENAI_MAIN__MODEL_NAME?",
        "env LLMBACKEND_BACKENDS__OTHER__MODEL_NAME: no backend is named 'OTHER'"
        " (configured backends: 'openai-main')",
        "env LLMBACKEND_CIRCUIT_BREAKER: 'circuit_breaker' is a section; set one of its keys,"
        " e.g. LLMBACKEND_CIRCUIT_BREAKER__ENABLED",
        "env LLMBACKEND_CIRCUIT_BREAKER__FAILURE_TRESHOLD: unknown setting 'failure_treshold';"
        " did you mean LLMBACKEND_CIRCUIT_BREAKER__FAILURE_THRESHOLD?",
        "env LLMBACKEND_MAX_RETRIES__X: 'max_retries' is a single value and has no settings"
        " below it",
        "env LLMBACKEND_NONSENSE: unknown setting 'nonsense'",
        "env LLMBACKEND_TIMEOUT_SECOND: unknown setting 'timeout_second';"
        " did you mean LLMBACKEND_TIMEOUT_SECONDS?",
    ]


def test_env_override_with_a_bad_value_names_the_variable() -> None:
    """A wrong override value is reported at its settings path, saying which variable set it."""
    assert problems({}, environ={"LLMBACKEND_MAX_RETRIES": "many"}) == [
        "max_retries: expected an integer, got 'many' (set by LLMBACKEND_MAX_RETRIES)"
    ]


def test_env_override_on_ambiguous_backend_names() -> None:
    """Two backends whose names map to the same variable token cannot be told apart."""
    assert problems(
        {"backends": [backend(name="a-b"), backend(name="a_b")]},
        environ={"LLMBACKEND_BACKENDS__A_B__MODEL_NAME": "x"},
    ) == [
        "env LLMBACKEND_BACKENDS__A_B__MODEL_NAME: matches several backends ('a-b', 'a_b');"
        " give them more distinct names"
    ]


# --- types, keys and enums -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"timeout_seconds": "abc"}, "timeout_seconds: expected a number, got 'abc'"),
        ({"timeout_seconds": True}, "timeout_seconds: expected a number, got True"),
        ({"max_retries": 2.5}, "max_retries: expected an integer, got 2.5"),
        ({"max_retries": False}, "max_retries: expected an integer, got False"),
        (
            {"use_exponential_backoff": "maybe"},
            "use_exponential_backoff: expected a boolean (true/false, yes/no, on/off, 1/0),"
            " got 'maybe'",
        ),
        (
            {"use_exponential_backoff": 1},
            "use_exponential_backoff: expected a boolean (true/false, yes/no, on/off, 1/0), got 1",
        ),
        ({"telemetry": {"service_name": 5}}, "telemetry.service_name: expected a string, got 5"),
        ({"circuit_breaker": 5}, "circuit_breaker: expected a table of settings, got 5"),
        (
            {"backends": {"a": OPENAI}},
            "backends: expected a list of tables (in TOML, [[backends]]), got a table",
        ),
        ({"backends": ["a"]}, "backends[0]: expected a table of settings, got 'a'"),
        (
            {"backends": [backend(stop_sequences="END")]},
            "backends[0].stop_sequences: expected a list, got 'END'",
        ),
        (
            {"backends": [backend(stop_sequences=["ok", 7])]},
            "backends[0].stop_sequences[1]: expected a string, got 7",
        ),
        (
            {"backends": [backend(additional_headers={"Authorization": 7})]},
            "backends[0].additional_headers.Authorization: expected a string,"
            " got an integer (value not shown)",
        ),
        (
            {"selection_strategy": "fastest"},
            "selection_strategy: expected one of failover, round_robin, lowest_latency,"
            " specific, random, simultaneous, got 'fastest'",
        ),
        (
            {"backends": [backend(spend_reset_day_of_week="someday")]},
            "backends[0].spend_reset_day_of_week: expected one of monday, tuesday, wednesday,"
            " thursday, friday, saturday, sunday, got 'someday'",
        ),
        ({"backends": [{"type": "openai"}]}, "backends[0].name: required key is missing"),
    ],
)
def test_wrong_types_are_reported_with_path_and_value(data: dict[str, Any], message: str) -> None:
    """Strict hooks reject wrong types (no bool-as-int, no int-as-bool, no str-as-list)."""
    assert problems(data) == [message]


def test_numeric_and_boolean_strings_are_accepted() -> None:
    """Strings that parse cleanly as numbers or booleans are accepted (they come from env)."""
    settings = load_settings(
        {
            "timeout_seconds": "30",
            "max_retries": "2",
            "default_max_tokens": 100.0,
            "use_exponential_backoff": "OFF",
            "rate_limit": {"enabled": "Yes"},
            "caching": {"enabled": "1"},
        },
        environ={},
    )
    assert (settings.timeout_seconds, settings.max_retries) == (30.0, 2)
    assert settings.default_max_tokens == 100
    assert settings.use_exponential_backoff is False
    assert (settings.rate_limit.enabled, settings.caching.enabled) == (True, True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Failover", SelectionStrategy.FAILOVER),
        ("RoundRobin", SelectionStrategy.ROUND_ROBIN),
        ("roundRobin", SelectionStrategy.ROUND_ROBIN),
        ("round-robin", SelectionStrategy.ROUND_ROBIN),
        ("LOWEST_LATENCY", SelectionStrategy.LOWEST_LATENCY),
    ],
)
def test_enums_match_case_insensitively(value: str, expected: SelectionStrategy) -> None:
    """Enum values tolerate case, PascalCase, camelCase and hyphens."""
    assert load_settings({"selection_strategy": value}, environ={}).selection_strategy is expected


def test_enums_in_sections_match_case_insensitively() -> None:
    """Enum tolerance applies in every section, not only at the top level."""
    settings = load_settings(
        {
            "secrets": {"provider": "EnvironmentVariables"},
            "caching": {"provider": "Redis", "connection_string": "redis://x"},
            "backends": [backend(spend_reset_period="Monthly", spend_reset_day_of_week="FRIDAY")],
        },
        environ={},
    )
    assert settings.secrets.provider is SecretsProvider.ENVIRONMENT_VARIABLES
    assert settings.caching.provider is CacheProvider.REDIS
    assert settings.backends[0].spend_reset_period is SpendResetPeriod.MONTHLY
    assert settings.backends[0].spend_reset_day_of_week is Weekday.FRIDAY


def test_unknown_keys_get_suggestions() -> None:
    """Misspelt keys at any depth are reported with the closest real key, when there is one."""
    assert problems(
        {
            "timout_seconds": 1,
            "circuitBreaker": {},
            "caching": {"expiration_minuts": 1},
            "backends": [OPENAI, backend(name="b", temprature=0.5, zzz=1)],
        }
    ) == [
        "timout_seconds: unknown key; did you mean 'timeout_seconds'?",
        "circuitBreaker: unknown key; did you mean 'circuit_breaker'?",
        "caching.expiration_minuts: unknown key; did you mean 'expiration_minutes'?",
        "backends[1].temprature: unknown key; did you mean 'temperature'?",
        "backends[1].zzz: unknown key",
    ]


def test_converter_is_private_and_forbids_extra_keys() -> None:
    """The SDK's converter (not cattrs' global one) rejects unknown keys when used directly."""
    with pytest.raises(ClassValidationError) as info:
        CONVERTER.structure({"nme": "a"}, LlmBackendConfig)
    assert any(isinstance(exc, ForbiddenExtraKeysError) for exc in info.value.exceptions)
    with pytest.raises(ClassValidationError):
        CONVERTER.structure({"selection_strategy": "RoundRobin", "x": 1}, LlmSettings)


# --- semantic rules --------------------------------------------------------------------


def test_duplicate_and_empty_backend_names() -> None:
    """Each repeat of a name points at the first use; an empty name is its own problem."""
    assert problems({"backends": [OPENAI, backend(name="b"), OPENAI, backend(name="  ")]}) == [
        "backends[2].name: duplicate backend name 'a' (also backends[0])",
        "backends[3].name: must not be empty",
    ]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"name": "a"},
            "backends[0].type: missing; set type to a built-in type or custom_backend_type"
            " to a plugin's type",
        ),
        (
            {"name": "a", "type": "opnai"},
            "backends[0].type: unknown backend type 'opnai'; did you mean 'openai'?"
            " (built-in types: openai, azure_openai, anthropic, gemini, cohere, ollama,"
            " lmstudio, llamacpp, easynmt, openai_compatible; a plugin's type goes in"
            " custom_backend_type)",
        ),
        (
            {"name": "a", "type": "mistral"},
            "backends[0].type: unknown backend type 'mistral' (built-in types: openai,"
            " azure_openai, anthropic, gemini, cohere, ollama, lmstudio, llamacpp, easynmt,"
            " openai_compatible; a plugin's type goes in custom_backend_type)",
        ),
        (
            {"name": "a", "type": "openai", "custom_backend_type": "mine"},
            "backends[0].custom_backend_type: conflicts with type 'openai'; set type to"
            " 'custom' (or leave it out) to use a plugin's type",
        ),
        (
            {"name": "a", "type": "custom"},
            "backends[0].custom_backend_type: required when type is 'custom'",
        ),
        (
            {"name": "a", "type": "openai_compatible"},
            "backends[0].base_url: required for type 'openai_compatible', which has no default URL",
        ),
    ],
)
def test_backend_type_rules(config: dict[str, Any], message: str) -> None:
    """A backend needs a known type or a plugin type, never both, and the URL it lacks."""
    assert problems({"backends": [config]}) == [message]


def test_azure_openai_needs_deployment_and_base_url() -> None:
    """azure_openai has no default URL and needs a deployment (or model) name."""
    assert problems({"backends": [{"name": "az", "type": "azure_openai"}]}) == [
        "backends[0].deployment_name: required for type 'azure_openai' (or set model_name)",
        "backends[0].base_url: required for type 'azure_openai', which has no default URL",
    ]
    ok = load_settings(
        {"backends": [{"name": "az", "type": "AzureOpenAI", "model_name": "m", "base_url": "u"}]},
        environ={},
    )
    assert ok.backends[0].type == "azure_openai"


def test_plugin_types_are_accepted_and_left_to_the_registry() -> None:
    """custom_backend_type alone or with type 'custom' passes; known types are folded."""
    settings = load_settings(
        {
            "backends": [
                {"name": "p1", "custom_backend_type": "EchoPlugin"},
                {"name": "p2", "type": "Custom", "custom_backend_type": "echo"},
                {"name": "p3", "type": "OpenAI"},
            ]
        },
        environ={},
    )
    assert [config.resolved_type for config in settings.backends] == [
        "echoplugin",
        "echo",
        "openai",
    ]
    assert settings.backends[1].type == "custom"


@pytest.mark.parametrize("provider", ["redis", "sqlite"])
def test_persistent_cache_needs_a_connection_string(provider: str) -> None:
    """redis and sqlite caches cannot work without somewhere to connect."""
    assert problems({"caching": {"provider": provider}}) == [
        f"caching.connection_string: required when caching.provider is '{provider}'"
    ]


RANGE_CASES = [
    ({"timeout_seconds": 0}, "timeout_seconds: must be greater than 0, got 0.0"),
    ({"max_retries": -1}, "max_retries: must be at least 0, got -1"),
    ({"retry_delay_ms": -5}, "retry_delay_ms: must be at least 0, got -5.0"),
    ({"default_temperature": 2.5}, "default_temperature: must be between 0 and 2, got 2.5"),
    ({"default_max_tokens": 0}, "default_max_tokens: must be at least 1, got 0"),
    ({"max_connections": -1}, "max_connections: must be at least 0, got -1"),
    ({"connect_timeout_seconds": 0}, "connect_timeout_seconds: must be greater than 0, got 0.0"),
    (
        {"circuit_breaker": {"failure_threshold": 0}},
        "circuit_breaker.failure_threshold: must be at least 1, got 0",
    ),
    (
        {"circuit_breaker": {"duration_of_break_seconds": -1}},
        "circuit_breaker.duration_of_break_seconds: must be greater than 0, got -1.0",
    ),
    (
        {"circuit_breaker": {"minimum_throughput": 0}},
        "circuit_breaker.minimum_throughput: must be at least 1, got 0",
    ),
    ({"rate_limit": {"max_requests": 0}}, "rate_limit.max_requests: must be at least 1, got 0"),
    ({"rate_limit": {"queue_limit": 0}}, "rate_limit.queue_limit: must be at least 1, got 0"),
    (
        {"rate_limit": {"window_seconds": 0}},
        "rate_limit.window_seconds: must be greater than 0, got 0.0",
    ),
    (
        {"health_check": {"unhealthy_threshold": 0}},
        "health_check.unhealthy_threshold: must be at least 1, got 0",
    ),
    (
        {"health_check": {"timeout_seconds": 0}},
        "health_check.timeout_seconds: must be greater than 0, got 0.0",
    ),
    (
        {"caching": {"expiration_minutes": 0}},
        "caching.expiration_minutes: must be greater than 0, got 0.0",
    ),
    (
        {"memory": {"default_token_limit": 0}},
        "memory.default_token_limit: must be at least 1, got 0",
    ),
]
BACKEND_RANGE_CASES = [
    ("temperature", 2.1, "must be between 0 and 2, got 2.1"),
    ("temperature", -0.1, "must be between 0 and 2, got -0.1"),
    ("top_p", 1.5, "must be between 0 and 1, got 1.5"),
    ("frequency_penalty", -2.5, "must be between -2 and 2, got -2.5"),
    ("presence_penalty", 3, "must be between -2 and 2, got 3.0"),
    ("weight", 0, "must be greater than 0, got 0.0"),
    ("timeout_seconds", -1, "must be greater than 0, got -1.0"),
    ("max_retries", -1, "must be at least 0, got -1"),
    ("max_output_tokens", 0, "must be at least 1, got 0"),
    ("max_spend_usd", -1, "must be at least 0, got -1.0"),
    ("cost_per_million_input_tokens", -0.5, "must be at least 0, got -0.5"),
    ("cost_per_million_output_tokens", -1, "must be at least 0, got -1.0"),
    ("spend_reset_day_of_month", 32, "must be between 1 and 31, got 32"),
    ("spend_reset_day_of_month", 0, "must be between 1 and 31, got 0"),
]


@pytest.mark.parametrize(("data", "message"), RANGE_CASES)
def test_out_of_range_settings(data: dict[str, Any], message: str) -> None:
    """Numbers outside their meaningful range are rejected with the range and the value."""
    assert problems(data) == [message]


@pytest.mark.parametrize(("key", "value", "message"), BACKEND_RANGE_CASES)
def test_out_of_range_backend_values(key: str, value: float, message: str) -> None:
    """Per-backend numbers are range-checked at their own path."""
    assert problems({"backends": [backend(**{key: value})]}) == [f"backends[0].{key}: {message}"]


def test_range_boundaries_are_allowed() -> None:
    """The documented limits themselves are valid values."""
    settings = load_settings(
        {
            "max_retries": 0,
            "max_connections": 0,
            "retry_delay_ms": 0,
            "default_temperature": 0,
            "backends": [
                backend(
                    temperature=2,
                    top_p=1,
                    frequency_penalty=-2,
                    presence_penalty=2,
                    max_spend_usd=0,
                    cost_per_million_input_tokens=0,
                    spend_reset_day_of_month=31,
                    priority=-7,
                )
            ],
        },
        environ={},
    )
    assert settings.backends[0].priority == -7


def test_range_table_names_real_fields() -> None:
    """Every range rule names an existing numeric field, so a renamed setting cannot slip by."""
    for cls, rules in RANGES.items():
        assert set(rules) <= set(field_types(cls)), cls


def test_every_problem_is_reported_at_once() -> None:
    """Source, structure, semantic and secrets problems all arrive in one error."""
    text = error_text(
        {
            "timeout_seconds": "abc",
            "selection_strategy": "fastest",
            "secrets": {"provider": "custom"},
            "backends": [
                backend(temprature=0.5, api_key="${MISSING}"),
                backend(type="opnai", top_p=2),
            ],
        },
        environ={"LLMBACKEND_MAX_RETRIE": "1"},
    )
    assert text == (
        "invalid llmbackend configuration (9 problems):\n"
        "  - backends[0].api_key: environment variable MISSING is not set"
        " (use ${MISSING:-default} for a fallback)\n"
        "  - env LLMBACKEND_MAX_RETRIE: unknown setting 'max_retrie';"
        " did you mean LLMBACKEND_MAX_RETRIES?\n"
        "  - timeout_seconds: expected a number, got 'abc'\n"
        "  - selection_strategy: expected one of failover, round_robin, lowest_latency,"
        " specific, random, simultaneous, got 'fastest'\n"
        "  - backends[0].temprature: unknown key; did you mean 'temperature'?\n"
        "  - backends[1].name: duplicate backend name 'a' (also backends[0])\n"
        "  - backends[1].type: unknown backend type 'opnai'; did you mean 'openai'?"
        " (built-in types: openai, azure_openai, anthropic, gemini, cohere, ollama, lmstudio,"
        " llamacpp, easynmt, openai_compatible; a plugin's type goes in custom_backend_type)\n"
        "  - backends[1].top_p: must be between 0 and 1, got 2.0\n"
        "  - secrets.provider: 'custom' needs a secret_resolver passed to load_settings()"
    )


def test_problems_are_config_problem_values() -> None:
    """`problems` holds ConfigProblem(path, message) pairs that callers can inspect."""
    with pytest.raises(ConfigurationError) as info:
        load_settings({"backends": [backend(weight=0)]}, environ={})
    assert info.value.problems == (
        ConfigProblem("backends[0].weight", "must be greater than 0, got 0.0"),
    )


# --- secrets ---------------------------------------------------------------------------


def test_configuration_provider_keeps_the_configured_key() -> None:
    """The default provider uses api_key exactly as configured."""
    settings = load_settings({"backends": [backend(api_key=SECRET)]}, environ={})
    assert settings.backends[0].api_key == SECRET


def test_environment_provider_reads_named_variables_and_falls_back() -> None:
    """`LLM_<NAME>_API_KEY` supplies a key; a backend without one keeps its configured key."""
    settings = load_settings(
        {
            "secrets": {"provider": "environment_variables"},
            "backends": [
                backend(name="openai-main"),
                backend(name="other", api_key="configured"),
            ],
        },
        environ={"LLM_OPENAI_MAIN_API_KEY": SECRET, "LLM_OTHER_API_KEY": ""},
    )
    assert [config.api_key for config in settings.backends] == [SECRET, "configured"]


def test_environment_provider_honours_the_prefix() -> None:
    """environment_variable_prefix replaces the default `LLM_`."""
    settings = load_settings(
        {
            "secrets": {"provider": "environment_variables", "environment_variable_prefix": "X_"},
            "backends": [OPENAI],
        },
        environ={"X_A_API_KEY": SECRET, "LLM_A_API_KEY": "wrong"},
    )
    assert settings.backends[0].api_key == SECRET


@pytest.mark.parametrize("suffix", ["json", "toml"])
def test_file_provider_reads_keys_relative_to_the_config_file(
    tmp_path: pathlib.Path, suffix: str
) -> None:
    """A JSON or TOML secrets file maps backend names to keys; relative paths follow the
    config file, and backends missing from it keep their configured key."""
    body = json.dumps({"a": SECRET}) if suffix == "json" else f'a = "{SECRET}"\n'
    (tmp_path / f"keys.{suffix}").write_text(body, encoding="utf-8")
    config = tmp_path / "settings.json"
    config.write_text(
        json.dumps(
            {
                "secrets": {"provider": "file", "file_path": f"keys.{suffix}"},
                "backends": [OPENAI, backend(name="b", api_key="inline")],
            }
        ),
        encoding="utf-8",
    )
    settings = load_settings(config, environ={})
    assert [backend.api_key for backend in settings.backends] == [SECRET, "inline"]


def test_file_provider_problems(tmp_path: pathlib.Path) -> None:
    """A missing path, missing file or non-string entry is a problem naming secrets.file_path."""
    assert problems({"secrets": {"provider": "file"}}) == [
        "secrets.file_path: required when secrets.provider is 'file'"
    ]
    missing = tmp_path / "nope.json"
    assert problems({"secrets": {"provider": "file", "file_path": str(missing)}}) == [
        f"secrets.file_path: secrets file '{missing}' was not found"
    ]
    broken = tmp_path / "keys.json"
    broken.write_text(json.dumps({"a": {"key": SECRET}}), encoding="utf-8")
    text = error_text(
        {"secrets": {"provider": "file", "file_path": str(broken)}, "backends": [OPENAI]}
    )
    assert text == (
        "invalid llmbackend configuration:\n"
        "  - secrets.file_path: the entry for backend 'a' must be a string, got a table"
    )


def test_custom_provider_calls_the_resolver() -> None:
    """`custom` asks secret_resolver per backend; None keeps the configured key."""
    asked: list[str] = []

    def resolver(name: str) -> str | None:
        asked.append(name)
        return SECRET if name == "a" else None

    settings = load_settings(
        {"secrets": {"provider": "custom"}, "backends": [OPENAI, backend(name="b", api_key="k")]},
        environ={},
        secret_resolver=resolver,
    )
    assert asked == ["a", "b"]
    assert [config.api_key for config in settings.backends] == [SECRET, "k"]


def test_custom_provider_problems() -> None:
    """A missing, failing or misbehaving resolver is reported without its message or value."""

    def failing(name: str) -> str | None:
        if name == "a":
            raise RuntimeError(f"vault said {SECRET}")
        return 42  # type: ignore[return-value]

    text = error_text(
        {"secrets": {"provider": "custom"}, "backends": [OPENAI, backend(name="b")]},
        secret_resolver=failing,
    )
    assert text == (
        "invalid llmbackend configuration (2 problems):\n"
        "  - backends[0].api_key: the secret resolver failed (RuntimeError)\n"
        "  - backends[1].api_key: the secret resolver returned an integer;"
        " expected a string or None"
    )
    assert problems({"secrets": {"provider": "custom"}}) == [
        "secrets.provider: 'custom' needs a secret_resolver passed to load_settings()"
    ]


def test_api_key_never_in_repr_or_errors(tmp_path: pathlib.Path) -> None:
    """Keys stay out of repr(settings) and out of every error, even in an invalid config."""
    settings = load_settings({"backends": [backend(api_key=SECRET)]}, environ={})
    assert SECRET not in repr(settings)
    assert SECRET not in repr(settings.backends[0])
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"a": SECRET}), encoding="utf-8")
    invalid_sources: list[tuple[dict[str, Any], dict[str, str]]] = [
        ({"backends": [backend(api_key=SECRET, temprature=1, top_p=9)]}, {}),
        ({"backends": [backend(api_key="${KEY}", weight="heavy")]}, {"KEY": SECRET}),
        ({"backends": [backend(api_key=[SECRET])]}, {}),
        ({"backends": [backend(additional_headers={"Authorization": [SECRET]})]}, {}),
        ({"caching": {"connection_string": 5, "provider": "redis"}}, {}),
        ({"timeout_seconds": "${KEY}"}, {"KEY": SECRET}),
        (
            {"secrets": {"provider": "file", "file_path": str(keys)}, "backends": [backend(x=1)]},
            {},
        ),
        (
            {"backends": [backend()]},
            {"LLMBACKEND_BACKENDS__A__API_KEY": SECRET, "LLMBACKEND_Q": ""},
        ),
    ]
    for source, environ in invalid_sources:
        with pytest.raises(ConfigurationError) as info:
            load_settings(source, environ=environ)
        assert SECRET not in str(info.value), source
        assert SECRET not in repr(info.value.problems), source


# --- unstructuring ---------------------------------------------------------------------


def test_unstructure_leaves_secrets_out_unless_asked() -> None:
    """unstructure_settings omits api_key and connection_string by default, and round-trips."""
    settings = load_settings(
        {
            "caching": {"provider": "redis", "connection_string": "redis://:pw@h"},
            "backends": [backend(api_key=SECRET, stop_sequences=["x"])],
        },
        environ={},
    )
    safe = unstructure_settings(settings)
    assert "api_key" not in safe["backends"][0]
    assert "connection_string" not in safe["caching"]
    assert SECRET not in json.dumps(safe)
    assert safe["backends"][0]["stop_sequences"] == ["x"]
    assert type(safe["selection_strategy"]) is str
    assert type(safe["backends"][0]["spend_reset_period"]) is str
    full = unstructure_settings(settings, include_secrets=True)
    assert full["backends"][0]["api_key"] == SECRET
    assert full["caching"]["connection_string"] == "redis://:pw@h"
    assert load_settings(json.loads(json.dumps(full)), environ={}) == settings
    reloaded = load_settings({**safe, "caching": {}}, environ={})
    assert reloaded.backends == (attrs.evolve(settings.backends[0], api_key=None),)


def test_telemetry_buckets_and_redact_patterns_are_checked() -> None:
    """Histogram buckets must increase and extra redaction patterns must compile; valid
    values are kept as tuples."""
    assert problems(
        {"telemetry": {"latency_buckets_seconds": [1, 0.5], "redact_patterns": ["ok", "(x"]}}
    ) == [
        "telemetry.latency_buckets_seconds: must be one or more positive numbers in increasing"
        " order",
        "telemetry.redact_patterns[1]: not a regular expression: missing ), unterminated"
        " subpattern at position 0",
    ]
    settings = load_settings(
        {"telemetry": {"latency_buckets_seconds": [0.1, 1, 10], "redact_patterns": [r"int-\d+"]}},
        environ={},
    )
    assert settings.telemetry.latency_buckets_seconds == (0.1, 1.0, 10.0)
    assert settings.telemetry.redact_patterns == (r"int-\d+",)


def test_a_budget_without_prices_is_refused() -> None:
    """max_spend_usd without prices cannot be enforced, so it is an error at its path."""
    assert problems({"backends": [backend(max_spend_usd=5)]}) == [
        "backends[0].max_spend_usd: a budget needs prices: set cost_per_million_input_tokens"
        " and cost_per_million_output_tokens"
    ]
    priced = backend(max_spend_usd=5, cost_per_million_output_tokens=1.0)
    assert load_settings({"backends": [priced]}, environ={}).backends[0].max_spend_usd == 5
