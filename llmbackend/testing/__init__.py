"""Fakes and helpers for testing code that uses llmbackend, and for plugin authors."""

from llmbackend.testing._fake_backend import FakeBackend, FakeBackendPlugin, FakeReply

__all__ = ["FakeBackend", "FakeBackendPlugin", "FakeReply"]
