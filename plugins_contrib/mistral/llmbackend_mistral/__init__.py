"""llmbackend-mistral: an llmbackend plugin for Mistral AI's API.

``MistralBackend`` is imported on first use, so discovering the plugin stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from llmbackend_mistral.plugin import MistralPlugin

if TYPE_CHECKING:
    from llmbackend_mistral.backend import MISTRAL_BASE_URL, MistralBackend

__all__ = ["MISTRAL_BASE_URL", "MistralBackend", "MistralPlugin"]

_LAZY = frozenset({"MISTRAL_BASE_URL", "MistralBackend"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("llmbackend_mistral.backend"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
