"""Fakes and helpers for testing code that uses llmbackend, and for plugin authors.

* ``FakeBackend`` / ``FakeReply`` / ``FakeBackendPlugin``: scripted in-process backends.
* ``FakeOpenAIServer`` / ``Behavior``: a real HTTP server on 127.0.0.1 speaking the OpenAI
  wire format, with scripted answers and faults, recording what it received.
* ``assert_valid_plugin`` / ``registered_plugin`` / ``isolated_default_registry``: for plugin
  authors (fixtures: ``pytest_plugins = ["llmbackend.testing.pytest_plugin"]``).
"""

from llmbackend.testing._fake_backend import FakeBackend, FakeBackendPlugin, FakeReply
from llmbackend.testing._fake_behavior import Behavior, BehaviorKind, Problem
from llmbackend.testing._fake_openai import BEHAVIOR_HEADER, FakeOpenAIServer, RecordedRequest
from llmbackend.testing._fake_server import FakeProviderServer
from llmbackend.testing._plugins import (
    assert_valid_plugin,
    isolated_default_registry,
    registered_plugin,
)

__all__ = [
    "BEHAVIOR_HEADER",
    "Behavior",
    "BehaviorKind",
    "FakeBackend",
    "FakeBackendPlugin",
    "FakeOpenAIServer",
    "FakeProviderServer",
    "FakeReply",
    "Problem",
    "RecordedRequest",
    "assert_valid_plugin",
    "isolated_default_registry",
    "registered_plugin",
]
