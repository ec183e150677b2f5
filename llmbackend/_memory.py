"""``ConversationMemory``: the history of each conversation, in any state store.

A conversation is one entry in a :class:`~llmbackend.state.CacheStore` (memory, SQLite or
Redis): a JSON list of its messages (no system messages: those come with each request),
with an expiry ``ttl_minutes`` after the last turn. The expiry is written into the entry
and judged with this object's clock, so every store forgets at the same moment (the stores
also expire or evict it themselves). What is stored is trimmed to ``default_token_limit``
by whole turns, the most a prompt could ever use, so a conversation never grows without
bound.

Adding a turn is a read-modify-write. Within a process, one lock per conversation makes
concurrent turns line up, so none is lost. Across processes sharing a store nothing
serialises them: two turns saved at the same moment from two processes on the same
conversation can lose one (the last write wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

from attrs import define, field

from llmbackend._logging import LoggerFactory
from llmbackend._tokens import ESTIMATE, TokenCounter, fit_turns
from llmbackend.errors import StateStoreError
from llmbackend.models import ChatMessage, ToolCall
from llmbackend.settings import MemorySettings
from llmbackend.state._protocols import CacheStore

__all__ = ["ConversationMemory", "decode_messages", "encode_messages"]

_FORMAT: Final = 1
_BYTES_PER_MB: Final = 1024 * 1024
_ROLES: Final = frozenset({"user", "assistant", "tool", "system"})


def encode_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """``messages`` as JSON-ready dicts (unset fields left out)."""
    encoded = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.name is not None:
            item["name"] = message.name
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            item["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls
            ]
        encoded.append(item)
    return encoded


def decode_messages(items: Any) -> tuple[ChatMessage, ...]:
    """The messages :func:`encode_messages` wrote; ``ValueError`` for anything else."""
    if not isinstance(items, list):
        raise ValueError("messages must be a list")  # noqa: TRY004  # a format error
    messages = []
    for item in items:
        if not isinstance(item, dict) or item.get("role") not in _ROLES:
            raise ValueError(f"not a stored message: {item!r:.80}")
        calls = [
            ToolCall(id=str(c["id"]), name=str(c["name"]), arguments=str(c["arguments"]))
            for c in item.get("tool_calls") or ()
        ]
        messages.append(
            ChatMessage(
                role=item["role"],
                content=item.get("content"),
                name=item.get("name"),
                tool_call_id=item.get("tool_call_id"),
                tool_calls=calls,
            )
        )
    return tuple(messages)


@define
class _Lock:
    lock: asyncio.Lock = field(factory=asyncio.Lock)
    users: int = 0


class ConversationMemory:
    """Reads and extends the history of conversations, by ``conversation_id``.

    ``store`` is any cache store (``open_store(...)``); ``settings`` gives the TTL, the size
    bound and the token limit. ``token_counter`` judges the limit (default: the estimate);
    ``clock`` (seconds since the epoch) is injectable for tests.

    Failures of the store raise :class:`~llmbackend.errors.StateStoreError`: without its
    history a conversation cannot be answered correctly. An unreadable entry (written by an
    incompatible version) counts as an empty conversation and is logged.
    """

    def __init__(
        self,
        store: CacheStore,
        settings: MemorySettings,
        *,
        token_counter: TokenCounter = ESTIMATE,
        clock: Callable[[], float] = time.time,
        logger_factory: LoggerFactory | None = None,
    ) -> None:
        self._store = store
        self._ttl = settings.ttl_minutes * 60.0
        self._max_bytes = int(settings.max_size_mb * _BYTES_PER_MB)
        self.token_limit = settings.default_token_limit
        self.token_counter = token_counter
        self._clock = clock
        self._log = (logger_factory or LoggerFactory())("llmbackend.memory")
        self._locks: dict[str, _Lock] = {}

    def __repr__(self) -> str:
        return f"<ConversationMemory store={type(self._store).__name__} ttl={self._ttl:g}s>"

    @staticmethod
    def _key(conversation_id: str) -> str:
        # Namespaced, so a store shared with other features can never mix keys up.
        return f"conversation:{conversation_id}"

    async def history(self, conversation_id: str) -> tuple[ChatMessage, ...]:
        """The stored messages of the conversation, oldest first (empty when unknown or
        expired)."""
        raw = await self._store.cache_get(self._key(conversation_id))
        if raw is None:
            return ()
        try:
            envelope = json.loads(raw)
            if envelope.get("format") != _FORMAT:
                raise ValueError(f"format {envelope.get('format')!r}")  # noqa: TRY301
            if envelope["expires_at"] <= self._clock():
                return ()
            return decode_messages(envelope["messages"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._log.warning(
                "memory_entry_unreadable", conversation=conversation_id, error=str(exc)
            )
            return ()

    async def append(
        self, conversation_id: str, messages: Sequence[ChatMessage]
    ) -> tuple[ChatMessage, ...]:
        """Add ``messages`` (one turn) to the conversation; return what is stored now.

        System messages are not stored. The history is trimmed to the token limit by whole
        turns, oldest first (the newest turn always stays), and its expiry starts again.
        """
        new = [message for message in messages if message.role != "system"]
        async with self._locked(conversation_id):
            stored = fit_turns(
                (*await self.history(conversation_id), *new), self.token_limit, self.token_counter
            )
            await self._write(conversation_id, stored)
        return stored

    async def clear(self, conversation_id: str) -> None:
        """Forget the conversation."""
        async with self._locked(conversation_id):
            await self._write(conversation_id, ())

    async def _write(self, conversation_id: str, messages: Sequence[ChatMessage]) -> None:
        now = self._clock()
        envelope = {
            "format": _FORMAT,
            "expires_at": now + self._ttl,
            "messages": encode_messages(messages),
        }
        value = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
        if len(value) > self._max_bytes:
            # Every store refuses a value over the bound silently; a lost turn must not be.
            raise StateStoreError(
                f"conversation {conversation_id!r} needs {len(value)} bytes, more than"
                " memory.max_size_mb allows"
            )
        await self._store.cache_put(
            self._key(conversation_id),
            value,
            now=now,
            ttl_seconds=self._ttl,
            max_bytes=self._max_bytes,
        )

    @contextlib.asynccontextmanager
    async def _locked(self, conversation_id: str) -> AsyncIterator[None]:
        """The conversation's lock; the entry goes when its last user leaves (no leak)."""
        entry = self._locks.get(conversation_id)
        if entry is None:
            entry = self._locks[conversation_id] = _Lock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[conversation_id]
