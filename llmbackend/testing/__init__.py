"""Fakes and helpers for testing code that uses llmbackend, and for plugin authors."""
