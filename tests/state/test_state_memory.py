"""Conversation memory over every store (memory, SQLite, redis-server): what is stored comes
back, expiry, concurrent turns, and a service whose `memory.provider` is each store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from llmbackend import ChatMessage, ChatRequest, ConversationMemory, ToolCall, open_service
from llmbackend.settings import MemorySettings
from llmbackend.state import StateStore
from llmbackend.testing import FakeBackend, FakeBackendPlugin


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


TURN = (
    ChatMessage.user("Wetter in Köln? 🌧"),
    ChatMessage.assistant(None, tool_calls=[ToolCall(id="c1", name="weather", arguments="{}")]),
    ChatMessage.tool('{"rain": true}', tool_call_id="c1", name="weather"),
    ChatMessage.assistant("Es regnet."),
)


async def test_a_turn_comes_back_as_it_was_stored(store: StateStore) -> None:
    """Every field of every message (tool calls, tool ids, names, non-ASCII) survives the
    store; system messages are not stored."""
    memory = ConversationMemory(store, MemorySettings())
    await memory.append("c", [ChatMessage.system("not stored"), *TURN])
    assert await memory.history("c") == TURN
    assert await memory.history("unknown") == ()


async def test_a_conversation_expires_ttl_after_its_last_turn(store: StateStore) -> None:
    """With the clock moved past ttl_minutes after the last turn, the history is gone in every
    store (the expiry is judged the same way everywhere)."""
    clock = Clock()
    memory = ConversationMemory(store, MemorySettings(ttl_minutes=5), clock=clock)
    await memory.append("c", TURN)
    clock.now += 5 * 60 - 1
    before = await memory.history("c")
    clock.now += 1
    assert before == TURN
    assert await memory.history("c") == ()


async def test_concurrent_turns_are_all_kept(store: StateStore) -> None:
    """Thirty turns appended at once to one conversation, each read-modify-write awaiting the
    store: none is lost."""
    memory = ConversationMemory(store, MemorySettings(default_token_limit=1_000_000))
    await asyncio.gather(
        *(
            memory.append("c", [ChatMessage.user(f"q{i}"), ChatMessage.assistant("a")])
            for i in range(30)
        )
    )
    stored = await memory.history("c")
    assert sorted(m.content or "" for m in stored if m.role == "user") == sorted(
        f"q{i}" for i in range(30)
    )


def memory_config(kind: str, location: str | None, key_prefix: str) -> dict[str, Any]:
    return {
        "backends": [{"name": "a", "custom_backend_type": "fake", "timeout_seconds": 5}],
        "health_check": {"enabled": False},
        "memory": {
            "enabled": True,
            "provider": kind,
            "connection_string": location,
            "key_prefix": key_prefix,
        },
    }


def said(service: Any) -> list[str | None]:
    backend = service.backend("a")
    assert isinstance(backend, FakeBackend)
    request = backend.history[-1]
    assert isinstance(request, ChatRequest)
    return [message.content for message in request.messages]


async def test_a_service_keeps_conversations_in_its_memory_provider(
    store_kind: str, store_location: str | None, key_prefix: str, reopen: Callable[[], Any]
) -> None:
    """memory.provider selects the store: a conversation continues across requests, and a
    second service on the same SQLite file or Redis continues it too (a restart, a replica);
    the in-process store is per service. The entries sit under memory.key_prefix."""
    config = memory_config(store_kind, store_location, key_prefix)
    question = ChatRequest(messages=[ChatMessage.user("one")], conversation_id="c")
    async with open_service(config, plugins=[FakeBackendPlugin()]) as first:
        await first.chat(question)
        await first.chat(ChatRequest(messages=[ChatMessage.user("two")], conversation_id="c"))
        assert said(first) == ["one", "ok", "two"]
    async with open_service(config, plugins=[FakeBackendPlugin()]) as second:
        await second.chat(ChatRequest(messages=[ChatMessage.user("three")], conversation_id="c"))
        seen_by_second = said(second)
    async with reopen() as store:
        stored = await ConversationMemory(store, MemorySettings()).history("c")

    if store_kind == "memory":
        assert seen_by_second == ["three"]
        assert stored == ()
    else:
        assert seen_by_second == ["one", "ok", "two", "ok", "three"]
        assert [m.content for m in stored] == ["one", "ok", "two", "ok", "three", "ok"]


async def test_two_services_on_one_store_do_not_share_a_key_prefix(
    store_kind: str, store_location: str | None, key_prefix: str
) -> None:
    """Services with different memory.key_prefix values on one store keep separate
    conversations under the same conversation id."""
    one = memory_config(store_kind, store_location, key_prefix + "one:")
    two = memory_config(store_kind, store_location, key_prefix + "two:")
    async with (
        open_service(one, plugins=[FakeBackendPlugin()]) as first,
        open_service(two, plugins=[FakeBackendPlugin()]) as second,
    ):
        await first.chat(ChatRequest(messages=[ChatMessage.user("first")], conversation_id="c"))
        await second.chat(ChatRequest(messages=[ChatMessage.user("second")], conversation_id="c"))
        assert said(second) == ["second"]
