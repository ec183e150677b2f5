"""Finding real providers for ``llmbackend demo`` to add to its run.

A provider key in the environment (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``,
``GEMINI_API_KEY``, ``COHERE_API_KEY``) or a local server answering within
:data:`PROBE_SECONDS` (Ollama's ``/api/tags``, llama.cpp's ``/health``) becomes one more
backend, tried after the fake ones, with a tiny budget where it costs money.

Where to look is injectable: ``OLLAMA_BASE_URL`` and ``LLAMACPP_BASE_URL`` replace the
default local addresses (empty: do not look), so tests can play a local server with a fake
one. (Not ``LLMBACKEND_*``: those are configuration overrides.) When nothing answers, the
search costs next to nothing: a closed port refuses at once, and every probe is bounded
and runs concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import aiohttp
from attrs import frozen

__all__ = ["LLAMACPP_URL_VAR", "OLLAMA_URL_VAR", "PROBE_SECONDS", "Found", "detect_providers"]

OLLAMA_URL_VAR = "OLLAMA_BASE_URL"
LLAMACPP_URL_VAR = "LLAMACPP_BASE_URL"
#: The longest a local server may take to answer a probe.
PROBE_SECONDS = 0.3
#: The most a real paid provider may cost the demo, per provider.
BUDGET_USD = 0.01

#: variable → (backend name, type, model, input and output price per million tokens).
_KEYED: tuple[tuple[str, str, str, str, float, float], ...] = (
    ("OPENAI_API_KEY", "real-openai", "openai", "gpt-4o-mini", 0.15, 0.60),
    ("ANTHROPIC_API_KEY", "real-anthropic", "anthropic", "claude-3-5-haiku-latest", 0.80, 4.0),
    ("GEMINI_API_KEY", "real-gemini", "gemini", "gemini-2.0-flash", 0.10, 0.40),
    ("COHERE_API_KEY", "real-cohere", "cohere", "command-r", 0.15, 0.60),
)


@frozen(kw_only=True)
class Found:
    """A real provider to add: its backend config and why it was added."""

    config: Mapping[str, Any]
    reason: str
    #: The environment variable holding its key (``None``: it needs none).
    key_variable: str | None = None

    @property
    def name(self) -> str:
        return str(self.config["name"])


def _keyed(environ: Mapping[str, str]) -> list[Found]:
    found = []
    for variable, name, kind, model, price_in, price_out in _KEYED:
        if not environ.get(variable):
            continue
        config = {
            "name": name,
            "type": kind,
            "model_name": model,
            # A reference, resolved by the settings loader: the key itself never passes here.
            "api_key": f"${{{variable}}}",
            "cost_per_million_input_tokens": price_in,
            "cost_per_million_output_tokens": price_out,
            "max_spend_usd": BUDGET_USD,
        }
        reason = f"{variable} is set; budget ${BUDGET_USD}"
        found.append(Found(config=config, reason=reason, key_variable=variable))
    return found


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        if response.status != 200:
            return None
        with contextlib.suppress(ValueError, aiohttp.ContentTypeError):
            return await response.json(content_type=None)
        return {}


async def _ollama(session: aiohttp.ClientSession, root: str) -> Found | None:
    tags = await _get_json(session, f"{root}/api/tags")
    models = tags.get("models") if isinstance(tags, dict) else None
    if not isinstance(models, list) or not models or not isinstance(models[0], dict):
        return None  # no server, or nothing pulled to chat with
    model = str(models[0].get("name") or models[0].get("model") or "")
    if not model:
        return None
    config = {"name": "local-ollama", "type": "ollama", "base_url": root, "model_name": model}
    return Found(config=config, reason=f"Ollama answers at {root} (model {model})")


async def _llamacpp(session: aiohttp.ClientSession, root: str) -> Found | None:
    if await _get_json(session, f"{root}/health") is None:
        return None
    listed = await _get_json(session, f"{root}/v1/models")
    data = listed.get("data") if isinstance(listed, dict) else None
    model = "local"
    if isinstance(data, list) and data and isinstance(data[0], dict) and data[0].get("id"):
        model = str(data[0]["id"])
    config = {"name": "local-llamacpp", "type": "llamacpp", "base_url": root, "model_name": model}
    return Found(config=config, reason=f"a llama.cpp server answers at {root} (model {model})")


async def _probe(
    session: aiohttp.ClientSession, root: str, kind: str, limit: float
) -> Found | None:
    probe = _ollama if kind == "ollama" else _llamacpp
    try:
        async with asyncio.timeout(limit):
            return await probe(session, root.rstrip("/"))
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None  # nothing there (or too slow to be worth waiting for)


async def detect_providers(
    environ: Mapping[str, str], *, probe_seconds: float = PROBE_SECONDS
) -> list[Found]:
    """The real providers to add, keyed ones first, then local servers that answered."""
    local = {
        "ollama": environ.get(OLLAMA_URL_VAR, "http://127.0.0.1:11434"),
        "llamacpp": environ.get(LLAMACPP_URL_VAR, "http://127.0.0.1:8080"),
    }
    found = _keyed(environ)
    async with aiohttp.ClientSession() as session:
        probes = [_probe(session, url, kind, probe_seconds) for kind, url in local.items() if url]
        answers = await asyncio.gather(*probes)
    return found + [answer for answer in answers if answer is not None]
