"""Backend base classes and the built-in provider backends.

Provider modules are imported on first use (``llmbackend.backends.OpenAIBackend``), so
``import llmbackend`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from llmbackend.backends._http import HttpBackend
from llmbackend.backends.base import BaseLlmBackend, Capability, SessionFactory

if TYPE_CHECKING:
    from llmbackend.backends.openai import OpenAIBackend

__all__ = ["BaseLlmBackend", "Capability", "HttpBackend", "OpenAIBackend", "SessionFactory"]

_LAZY = {"OpenAIBackend": "llmbackend.backends.openai"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
