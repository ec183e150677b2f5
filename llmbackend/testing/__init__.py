"""Fakes and helpers for testing code that uses llmbackend, and for plugin authors.

* ``FakeBackend`` / ``FakeReply`` / ``FakeBackendPlugin``: scripted in-process backends.
* ``FakeOpenAIServer`` / ``Behavior``: a real HTTP server on 127.0.0.1 speaking the OpenAI
  wire format, with scripted answers and faults, recording what it received.
* ``ReplayServer`` and helpers: serve recorded or hand-written bodies split at awkward byte
  offsets, to test a backend's wire format (frames cut across reads).
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
from llmbackend.testing._replay import (
    AWKWARD_SIZES,
    ReceivedRequest,
    ReplayServer,
    Responder,
    ScriptedReply,
    awkward_sse,
    json_reply,
    load_wire_fixture,
    split_at,
    split_awkwardly,
    split_into,
    sse_body,
    sse_reply,
)
from llmbackend.testing._stream_check import fold_stream

__all__ = [
    "AWKWARD_SIZES",
    "BEHAVIOR_HEADER",
    "Behavior",
    "BehaviorKind",
    "FakeBackend",
    "FakeBackendPlugin",
    "FakeOpenAIServer",
    "FakeProviderServer",
    "FakeReply",
    "Problem",
    "ReceivedRequest",
    "RecordedRequest",
    "ReplayServer",
    "Responder",
    "ScriptedReply",
    "assert_valid_plugin",
    "awkward_sse",
    "fold_stream",
    "isolated_default_registry",
    "json_reply",
    "load_wire_fixture",
    "registered_plugin",
    "split_at",
    "split_awkwardly",
    "split_into",
    "sse_body",
    "sse_reply",
]
