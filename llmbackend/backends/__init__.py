"""Backend base classes and the built-in provider backends.

Provider modules are imported on first use (``llmbackend.backends.OpenAIBackend``), so
``import llmbackend`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmbackend._lazy import lazy_names
from llmbackend.backends._http import HttpBackend
from llmbackend.backends.base import BaseLlmBackend, Capability, SessionFactory

if TYPE_CHECKING:
    from llmbackend.backends.anthropic import AnthropicBackend
    from llmbackend.backends.azure_openai import AzureOpenAIBackend
    from llmbackend.backends.cohere import CohereBackend
    from llmbackend.backends.easynmt import EasyNmtBackend
    from llmbackend.backends.gemini import GeminiBackend
    from llmbackend.backends.ollama import OllamaBackend
    from llmbackend.backends.openai import OpenAIBackend

__all__ = [
    "AnthropicBackend",
    "AzureOpenAIBackend",
    "BaseLlmBackend",
    "Capability",
    "CohereBackend",
    "EasyNmtBackend",
    "GeminiBackend",
    "HttpBackend",
    "OllamaBackend",
    "OpenAIBackend",
    "SessionFactory",
]

_LAZY = {
    "AnthropicBackend": "llmbackend.backends.anthropic",
    "AzureOpenAIBackend": "llmbackend.backends.azure_openai",
    "CohereBackend": "llmbackend.backends.cohere",
    "EasyNmtBackend": "llmbackend.backends.easynmt",
    "GeminiBackend": "llmbackend.backends.gemini",
    "OllamaBackend": "llmbackend.backends.ollama",
    "OpenAIBackend": "llmbackend.backends.openai",
}


__getattr__, __dir__ = lazy_names(globals(), _LAZY, __all__)
