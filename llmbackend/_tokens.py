"""Token counting, and fitting a conversation into a token budget.

A real tokenizer counts when ``tiktoken`` is installed (``pip install 'llmbackend[tokens]'``):
its ``o200k_base`` encoding, which is exact for current OpenAI models and a close
approximation for other providers' models. Without it, the SDK's estimate counts (about
four characters a token, the same rule the budget reservations use). tiktoken is imported,
and its encoding loaded, only by :func:`default_token_counter` -- never by
``import llmbackend`` -- and the result is cached for the process.

Trimming keeps whole *turns*: a turn starts at a user message and holds everything up to
the next one (the assistant's answer, its tool calls and their results). Dropping whole
turns can never leave a tool result without the call it answers, nor a call without its
results.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol, runtime_checkable

from attrs import frozen

from llmbackend._logging import LoggerFactory
from llmbackend.models import ChatMessage

__all__ = [
    "ESTIMATE",
    "TIKTOKEN_ENCODING",
    "EstimateTokenCounter",
    "TiktokenCounter",
    "TokenCounter",
    "count_messages",
    "default_token_counter",
    "fit_turns",
    "message_tokens",
    "turns",
]

#: The tiktoken encoding used when tiktoken is installed.
TIKTOKEN_ENCODING: Final = "o200k_base"
#: Role markers and separators each message (and each tool call) costs on top of its text;
#: the same framing the budget estimate assumes (``llmbackend.state._cost``).
TOKENS_PER_MESSAGE: Final = 4
TOKENS_PER_REQUEST: Final = 3
_CHARS_PER_TOKEN: Final = 4.0


@runtime_checkable
class TokenCounter(Protocol):
    """Counts the tokens of a text. ``name`` says which tokenizer (``estimate``,
    ``tiktoken:o200k_base``, or your own)."""

    @property
    def name(self) -> str: ...

    def count(self, text: str) -> int:
        """The number of tokens in ``text`` (0 for an empty text)."""
        ...


@frozen
class EstimateTokenCounter:
    """About four characters a token: no dependency, errs high on purpose."""

    name: str = "estimate"

    def count(self, text: str) -> int:
        return math.ceil(len(text) / _CHARS_PER_TOKEN) if text else 0


#: The estimate, used when no real tokenizer is available.
ESTIMATE: Final = EstimateTokenCounter()


class TiktokenCounter:
    """Counts with a tiktoken encoding (anything with ``encode(text, disallowed_special=())``)."""

    def __init__(self, encoding: Any, name: str) -> None:
        self._encoding = encoding
        self.name = name

    def __repr__(self) -> str:
        return f"<TiktokenCounter {self.name}>"

    def count(self, text: str) -> int:
        # Special-token text in a user message is counted as text, never refused.
        return len(self._encoding.encode(text, disallowed_special=())) if text else 0


@functools.cache
def default_token_counter() -> TokenCounter:
    """tiktoken's ``o200k_base`` counter when tiktoken is installed, else the estimate.

    Cached for the process. Loading the encoding reads (and on first use downloads) a file,
    so call this off the event loop: :func:`~llmbackend.open_service` does, in its worker
    thread. If the encoding cannot be loaded (offline without tiktoken's cache), the
    estimate is used and ``token_counter_fallback`` is logged.
    """
    try:
        tiktoken = importlib.import_module("tiktoken")
    except ImportError:
        return ESTIMATE
    try:
        encoding = tiktoken.get_encoding(TIKTOKEN_ENCODING)
    except Exception as exc:  # noqa: BLE001  # any failure to load means "no real tokenizer"
        LoggerFactory()("llmbackend.memory").warning(
            "token_counter_fallback", encoding=TIKTOKEN_ENCODING, error=type(exc).__name__
        )
        return ESTIMATE
    return TiktokenCounter(encoding, f"tiktoken:{TIKTOKEN_ENCODING}")


def message_tokens(message: ChatMessage, counter: TokenCounter) -> int:
    """The tokens ``message`` costs in a prompt: its text, name, tool calls and framing."""
    total = TOKENS_PER_MESSAGE + counter.count(message.content or "")
    if message.name:
        total += counter.count(message.name)
    if message.tool_call_id:
        total += counter.count(message.tool_call_id)
    for call in message.tool_calls:
        total += TOKENS_PER_MESSAGE + counter.count(call.name) + counter.count(call.arguments)
    return total


def count_messages(messages: Iterable[ChatMessage], counter: TokenCounter) -> int:
    """The tokens of a prompt made of ``messages``."""
    return TOKENS_PER_REQUEST + sum(message_tokens(message, counter) for message in messages)


def turns(messages: Sequence[ChatMessage]) -> list[tuple[ChatMessage, ...]]:
    """``messages`` split before each user message (a leading non-user run is a turn too)."""
    found: list[tuple[ChatMessage, ...]] = []
    start = 0
    for index, message in enumerate(messages):
        if message.role == "user" and index > start:
            found.append(tuple(messages[start:index]))
            start = index
    if start < len(messages):
        found.append(tuple(messages[start:]))
    return found


def fit_turns(
    messages: Sequence[ChatMessage], budget: int, counter: TokenCounter
) -> tuple[ChatMessage, ...]:
    """The newest whole turns of ``messages`` whose tokens fit ``budget``.

    The oldest turns go first; the last turn (the newest user message and what follows it)
    always stays, even when it alone is over the budget: the provider then decides.
    """
    split = turns(messages)
    costs = [sum(message_tokens(message, counter) for message in turn) for turn in split]
    total = sum(costs)
    first = 0
    while total > budget and first < len(split) - 1:
        total -= costs[first]
        first += 1
    if first == 0:
        return tuple(messages)
    return tuple(message for turn in split[first:] for message in turn)
