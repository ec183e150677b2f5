"""The original home of the fake provider server, kept for existing imports.

``FakeOpenAIServer`` is :class:`~llmbackend.testing._fake_server.FakeProviderServer`, which
now also speaks the Anthropic Messages format and carries the fault catalogue; see that
module for how behaviours are chosen.
"""

from __future__ import annotations

from llmbackend.testing._fake_server import BEHAVIOR_HEADER, FakeProviderServer, RecordedRequest

__all__ = ["BEHAVIOR_HEADER", "FakeOpenAIServer", "FakeProviderServer", "RecordedRequest"]

#: The former name of :class:`FakeProviderServer`; same class.
FakeOpenAIServer = FakeProviderServer
