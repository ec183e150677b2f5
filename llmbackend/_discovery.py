"""Where the CLI and the quick API (``ask``, ``chat``...) find their configuration file.

``LLMBACKEND_CONFIG`` names the file outright (it must exist); otherwise the first of
``./llmbackend.toml`` and ``~/.config/llmbackend/config.toml`` that exists is used.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmbackend.errors import ConfigurationError

__all__ = ["CONFIG_ENV_VAR", "MINIMAL_CONFIG", "config_search_path", "find_config"]

#: Names the configuration file outright.
CONFIG_ENV_VAR = "LLMBACKEND_CONFIG"

#: Shown when no configuration file is found.
MINIMAL_CONFIG = """\
# llmbackend.toml
[[backends]]
name = "openai"
type = "openai"
model_name = "gpt-4o-mini"
api_key = "${OPENAI_API_KEY}"
"""


def config_search_path() -> list[Path]:
    """The files looked for when no path is given and ``LLMBACKEND_CONFIG`` is unset, in order."""
    return [Path("llmbackend.toml"), Path.home() / ".config" / "llmbackend" / "config.toml"]


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The configuration file to use, or a ConfigurationError saying where we looked."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigurationError(f"configuration file {path} does not exist")
        return path
    if named := os.environ.get(CONFIG_ENV_VAR):
        path = Path(named)
        if not path.is_file():
            raise ConfigurationError(
                f"{CONFIG_ENV_VAR} names {path}, which does not exist; "
                f"fix the variable or unset it to use the default locations"
            )
        return path
    searched = config_search_path()
    for path in searched:
        if path.is_file():
            return path
    places = "\n".join(f"    {path}" for path in searched)
    raise ConfigurationError(
        f"no configuration file found; {CONFIG_ENV_VAR} is unset and none of these exists:\n"
        f"{places}\n"
        f"  create one (or pass --config PATH / set {CONFIG_ENV_VAR}), for example:\n"
        f"{MINIMAL_CONFIG}"
    )
