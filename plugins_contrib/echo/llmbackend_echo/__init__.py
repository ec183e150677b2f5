"""llmbackend-echo: a backend that answers with the last user message."""

from llmbackend_echo.backend import EchoBackend, count_tokens
from llmbackend_echo.plugin import EchoPlugin

__all__ = ["EchoBackend", "EchoPlugin", "count_tokens"]
