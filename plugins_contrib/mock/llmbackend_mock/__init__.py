"""llmbackend-mock: plausible canned answers by prompt category, with simulated latency."""

from llmbackend_mock.answers import Category, answer_for, classify
from llmbackend_mock.backend import DELAY_HEADER, MockBackend, estimate_tokens
from llmbackend_mock.plugin import MockPlugin

__all__ = [
    "DELAY_HEADER",
    "Category",
    "MockBackend",
    "MockPlugin",
    "answer_for",
    "classify",
    "estimate_tokens",
]
