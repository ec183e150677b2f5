"""What every ``llmbackend`` command shares: loading the configuration, the checks the CLI
makes before it calls anything, error reporting and showing a stream.

The library lets a backend without an API key reach its provider (a proxy or a local server
may not need one); the CLI knows the hosted APIs do, and says which variable to set before
any request is made, instead of surfacing the provider's 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import attrs
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from llmbackend._config_sources import env_token
from llmbackend._discovery import find_config
from llmbackend.config import load_settings
from llmbackend.errors import ConfigProblem, ConfigurationError
from llmbackend.models import FinishEvent, StreamEvent, StreamRestarted, TextDelta
from llmbackend.settings import LlmBackendConfig, LlmSettings, SecretsProvider

__all__ = [
    "KEY_VARIABLES",
    "CliError",
    "check_backend_name",
    "for_service",
    "format_error",
    "key_problem",
    "load_cli_settings",
    "require_keys",
    "stream_to_console",
]

#: The hosted APIs that refuse a call without a key, and the variable people usually keep
#: that key in (what we suggest when a config names none).
KEY_VARIABLES = {
    "openai": "OPENAI_API_KEY",
    "azure_openai": "AZURE_OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "cohere": "COHERE_API_KEY",
}

_UNSET_VARIABLE = re.compile(r"environment variable (\w+) is not set")


class CliError(Exception):
    """A failure a command reports itself: the message, and the exit code (1 for the
    caller's mistakes, 2 when something it talks to failed)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _load(explicit: str | None) -> tuple[Path, LlmSettings]:
    path = find_config(explicit)
    return path, load_settings(path)


async def load_cli_settings(explicit: str | None) -> tuple[Path, LlmSettings]:
    """The configuration file (``--config`` or discovered) and its validated settings, with
    API keys resolved. Reading files is blocking work: it runs in a thread."""
    return await asyncio.to_thread(_load, explicit)


def for_service(settings: LlmSettings) -> LlmSettings:
    """``settings`` to hand to ``open_service``: the keys were resolved when the file was
    loaded, relative to it; resolving them again would look for a relative secrets file in
    the working directory instead."""
    return attrs.evolve(
        settings, secrets=attrs.evolve(settings.secrets, provider=SecretsProvider.CONFIGURATION)
    )


def _needs_key(config: LlmBackendConfig) -> bool:
    kind = config.resolved_type
    if kind == "azure_openai":
        return True  # every Azure resource checks its key (the CLI has no token provider)
    if kind == "gemini" and config.project_id:
        return False  # Vertex AI: credentials come from a token provider, not a key
    # Pointed somewhere else (a proxy, a gateway), a key may well be optional.
    return kind in KEY_VARIABLES and config.base_url is None


def key_problem(settings: LlmSettings, index: int) -> ConfigProblem | None:
    """Why backend number ``index`` cannot be called for lack of a key (``None``: it can),
    naming what to set. Never shows a key: it only looks at whether there is one."""
    config = settings.backends[index]
    if config.api_key or not _needs_key(config):
        return None
    secrets = settings.secrets
    if secrets.provider is SecretsProvider.ENVIRONMENT_VARIABLES:
        variable = f"{secrets.environment_variable_prefix}{env_token(config.name)}_API_KEY"
        fix = f"set {variable} (secrets.provider is 'environment_variables')"
    elif secrets.provider is SecretsProvider.FILE:
        fix = f"add an entry {config.name!r} to the secrets file {secrets.file_path}"
    else:
        variable = KEY_VARIABLES[config.resolved_type]
        fix = f'set {variable} and write api_key = "${{{variable}}}" in this backend'
    return ConfigProblem(
        f"backends[{index}].api_key",
        f"backend {config.name!r} ({config.resolved_type}) has no API key; {fix}",
    )


def require_keys(settings: LlmSettings) -> None:
    """Refuse, naming the variables to set, when an enabled backend lacks its key: the
    provider would answer 401, which stops a request at once instead of failing over."""
    problems = [
        problem
        for index, config in enumerate(settings.backends)
        if config.enabled and (problem := key_problem(settings, index)) is not None
    ]
    if problems:
        raise ConfigurationError(problems)


def check_backend_name(settings: LlmSettings, name: str | None, option: str = "--backend") -> None:
    """A ``ConfigurationError`` listing the configured names when ``name`` is not one."""
    names = [config.name for config in settings.backends]
    if name is not None and name not in names:
        known = ", ".join(names) or "none"
        raise ConfigurationError(
            [ConfigProblem(option, f"unknown backend {name!r}; configured: {known}")]
        )


def format_error(error: ConfigurationError) -> str:
    """The configuration error, then the environment variables to set, if that is the fix."""
    text = str(error)
    unset = _variables(problem.message for problem in error.problems)
    if unset:
        text += "\nset " + " and ".join(unset) + ", for example: export " + f"{unset[0]}=..."
    return text


def _variables(messages: Iterable[str]) -> list[str]:
    found: list[str] = []
    for message in messages:
        for name in _UNSET_VARIABLE.findall(message):
            if name not in found:
                found.append(name)
    return found


async def stream_to_console(
    events: AsyncIterator[StreamEvent], console: Console
) -> FinishEvent | None:
    """Show a streamed answer live; returns its finish event. On ``StreamRestarted`` the
    discarded text disappears from the screen, so a recovered stream never shows
    duplicated or stitched text. A stream that fails before its first event shows nothing
    (not even an empty line); one cut later leaves its partial text on screen."""
    answer = Text()
    footer = Text(style="dim")
    finish: FinishEvent | None = None
    live: Live | None = None
    with contextlib.ExitStack() as stack:
        async for event in events:
            if isinstance(event, TextDelta):
                answer.append(event.text)
            elif isinstance(event, StreamRestarted) and event.discard_chars:
                answer.right_crop(event.discard_chars)
            elif isinstance(event, FinishEvent):
                finish = event
                footer.append(f"{event.backend} · {event.model}")
            if live is None:
                live = Live(Group(answer, footer), console=console, auto_refresh=False)
                stack.enter_context(live)
            live.refresh()
    if live is not None and not console.is_terminal:
        console.line()  # a pipe gets no final newline from Live
    return finish
