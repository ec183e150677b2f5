"""Conversation memory: each `memory` setting, history through chat and stream, trimming,
expiry, failures that leave a conversation unchanged, concurrency, the cache across
conversations, and secrets. Store-by-store proofs are in tests/state/test_state_memory.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import attrs
import pytest

from llmbackend import (
    AllBackendsFailedError,
    BackendUnavailableError,
    ChatMessage,
    ChatRequest,
    ConfigurationError,
    ConversationMemory,
    FinishReason,
    InvalidRequestError,
    LlmRequest,
    LlmService,
    StateStoreError,
    StreamInterruptedError,
    ToolCall,
    load_settings,
    open_service,
)
from llmbackend._converter import unstructure_settings
from llmbackend._prompting import PromptPipeline
from llmbackend._redaction import redactor_for
from llmbackend.settings import LlmSettings, MemorySettings
from llmbackend.state import MemoryStore, open_store
from llmbackend.testing import FakeBackend, FakeBackendPlugin, FakeReply


class WordCounter:
    """One token per word."""

    name = "words"

    def count(self, text: str) -> int:
        return len(text.split())


WORDS = WordCounter()


class Clock:
    """A settable clock (seconds since the epoch)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def fake(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "custom_backend_type": "fake", "timeout_seconds": 5, **extra}


def settings(*backends: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"backends": list(backends), "health_check": {"enabled": False}, **extra}


MEMORY_ON = {"enabled": True}


def script(service: Any, name: str) -> FakeBackend:
    backend = service.backend(name)
    assert isinstance(backend, FakeBackend)
    return backend


def said(backend: FakeBackend, index: int = -1) -> list[tuple[str, str | None]]:
    request = backend.history[index]
    assert isinstance(request, ChatRequest)
    return [(message.role, message.content) for message in request.messages]


def turn(text: str, conversation: str = "c1", **extra: Any) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage.user(text)], conversation_id=conversation, **extra)


def texts(messages: tuple[ChatMessage, ...]) -> list[str | None]:
    return [message.content for message in messages]


def memory_of(service: LlmService) -> ConversationMemory:
    assert service.memory is not None
    return service.memory


# --- the conversation through the service ----------------------------------------------------


async def test_a_conversation_remembers_its_turns() -> None:
    """Each request of a conversation is sent after the earlier turns; the system message
    comes with each request and is never stored; other conversations are separate."""
    config = settings(fake("a"), memory=MEMORY_ON)
    async with open_service(config, plugins=[FakeBackendPlugin()]) as svc:
        backend = script(svc, "a")
        backend.push("Hello Ann.", "You are Ann.", "I don't know.")
        system = ChatMessage.system("Be brief.")
        await svc.chat(
            ChatRequest(messages=[system, ChatMessage.user("I am Ann")], conversation_id="c1")
        )
        await svc.chat(
            ChatRequest(messages=[system, ChatMessage.user("Who am I?")], conversation_id="c1")
        )
        await svc.chat(turn("Who am I?", conversation="c2"))
        stored = await memory_of(svc).history("c1")

    assert said(backend, 1) == [
        ("system", "Be brief."),
        ("user", "I am Ann"),
        ("assistant", "Hello Ann."),
        ("user", "Who am I?"),
    ]
    assert said(backend, 2) == [("user", "Who am I?")]
    assert texts(stored) == ["I am Ann", "Hello Ann.", "Who am I?", "You are Ann."]


async def test_memory_disabled_refuses_a_conversation_id() -> None:
    """With memory.enabled false (the default) a conversation_id is a clear caller error,
    never silently ignored; requests without one work as before."""
    async with open_service(settings(fake("a")), plugins=[FakeBackendPlugin()]) as svc:
        with pytest.raises(InvalidRequestError, match=r"set memory\.enabled = true"):
            await svc.chat(turn("hi"))
        assert svc.memory is None
        assert (await svc.chat(ChatRequest(messages=[ChatMessage.user("hi")]))).content == "ok"
        assert script(svc, "a").calls == 1


async def test_completions_and_streams_join_the_conversation() -> None:
    """complete() and a completed stream() add their turn like chat() does."""
    config = settings(fake("a"), memory=MEMORY_ON)
    async with open_service(config, plugins=[FakeBackendPlugin()]) as svc:
        backend = script(svc, "a")
        backend.push("first answer", "streamed answer")
        await svc.complete(LlmRequest(prompt="first", conversation_id="c1"))
        _ = [event async for event in svc.stream(turn("second"))]
        await svc.chat(turn("third"))
        stored = await memory_of(svc).history("c1")
    assert texts(stored) == ["first", "first answer", "second", "streamed answer", "third", "ok"]
    assert said(backend)[:4] == [
        ("user", "first"),
        ("assistant", "first answer"),
        ("user", "second"),
        ("assistant", "streamed answer"),
    ]


async def test_variables_are_stored_filled_in() -> None:
    """The history keeps what the model was told: user messages with their values."""
    config = settings(fake("a"), memory=MEMORY_ON)
    async with open_service(config, plugins=[FakeBackendPlugin()]) as svc:
        await svc.chat(turn("Hi, I am {{ name }}", variables={"name": "Ann"}))
        stored = await memory_of(svc).history("c1")
    assert texts(stored) == ["Hi, I am Ann", "ok"]


async def test_tool_calls_are_remembered_and_answered() -> None:
    """An answer with tool calls is stored with them; the next request sends the results and
    the backend sees call and results in order."""
    call = ToolCall(id="call-1", name="weather", arguments='{"city": "Oslo"}')
    config = settings(fake("a"), memory=MEMORY_ON)
    async with open_service(config, plugins=[FakeBackendPlugin()]) as svc:
        backend = script(svc, "a")
        backend.push(
            FakeReply(text="", tool_calls=[call], finish_reason=FinishReason.TOOL_CALLS), "Rain."
        )
        await svc.chat(turn("Weather in Oslo?"))
        result = ChatMessage.tool("rain", tool_call_id="call-1")
        await svc.chat(ChatRequest(messages=[result], conversation_id="c1"))
        stored = await memory_of(svc).history("c1")
    sent = backend.history[-1]
    assert isinstance(sent, ChatRequest)
    assert [m.role for m in sent.messages] == ["user", "assistant", "tool"]
    assert sent.messages[1].tool_calls == (call,)
    assert sent.messages[1].content is None
    assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant"]


async def test_clear_forgets_a_conversation() -> None:
    """service.memory.clear() starts the conversation afresh."""
    config = settings(fake("a"), memory=MEMORY_ON)
    async with open_service(config, plugins=[FakeBackendPlugin()]) as svc:
        await svc.chat(turn("remember me"))
        await memory_of(svc).clear("c1")
        await svc.chat(turn("who?"))
        assert said(script(svc, "a")) == [("user", "who?")]


# --- failures leave memory unchanged -----------------------------------------------------------


async def test_a_failed_chat_leaves_the_conversation_unchanged() -> None:
    """When every backend fails, the turn is not stored; the next success is."""
    config = settings(fake("a", max_retries=0), memory=MEMORY_ON)
    async with open_service(config, plugins=[FakeBackendPlugin()]) as svc:
        backend = script(svc, "a")
        await svc.chat(turn("one"))
        backend.push(BackendUnavailableError("down"))
        with pytest.raises(AllBackendsFailedError):
            await svc.chat(turn("lost"))
        after_failure = await memory_of(svc).history("c1")
        await svc.chat(turn("two"))
        final = await memory_of(svc).history("c1")
    assert texts(after_failure) == ["one", "ok"]
    assert texts(final) == ["one", "ok", "two", "ok"]


async def test_a_cut_stream_leaves_the_conversation_unchanged() -> None:
    """A stream interrupted after content (stream_recovery raise) is not a turn."""
    config = settings(fake("a", max_retries=0), memory=MEMORY_ON)
    async with open_service(config, plugins=[FakeBackendPlugin()]) as svc:
        script(svc, "a").push(
            FakeReply(
                text="half an answer", fail_after_chunks=1, error=BackendUnavailableError("cut")
            )
        )
        with pytest.raises(StreamInterruptedError):
            _ = [event async for event in svc.stream(turn("tell me"))]
        stored = await memory_of(svc).history("c1")
    assert stored == ()


async def test_a_memory_write_failure_still_returns_the_answer() -> None:
    """A turn too large for memory.max_size_mb is refused by the memory (not silently
    dropped by the store) and logged; the caller still gets the answer it paid for."""
    config = settings(fake("a"), memory={"enabled": True, "max_size_mb": 0.0002})  # ~200 bytes
    async with open_service(config, plugins=[FakeBackendPlugin()]) as svc:
        answer = await svc.chat(turn("x" * 500))
        stored = await memory_of(svc).history("c1")
        with pytest.raises(StateStoreError, match=r"more than memory\.max_size_mb allows"):
            await memory_of(svc).append("c1", [ChatMessage.user("y" * 500)])
    assert answer.content == "ok"
    assert stored == ()


# --- settings ----------------------------------------------------------------------------------


async def test_token_limit_trims_the_prompt_and_keeps_the_system_message() -> None:
    """default_token_limit bounds each prompt (oldest turns dropped, the system message and
    the newest user message kept); a backend's smaller max_input_tokens wins for it."""
    # Tokens (4 framing + 1 per word): a prompt 3, "rules" 5, a question 6, an answer 6.
    config = settings(
        fake("big", priority=1),
        fake("small", priority=2, max_input_tokens=3 + 5 + 11 + 6),  # one turn with "ok"
        memory={"enabled": True, "default_token_limit": 3 + 5 + 12 + 12 + 6},  # two turns
    )
    system = ChatMessage.system("rules")
    async with open_service(config, plugins=[FakeBackendPlugin()], token_counter=WORDS) as svc:
        big = script(svc, "big")
        for word in ("alpha", "beta", "gamma"):
            big.push(f"{word} two")
            request = ChatRequest(
                messages=[system, ChatMessage.user(f"{word} x")], conversation_id="c"
            )
            await svc.chat(request)
        await svc.chat(attrs.evolve(request, messages=[system, ChatMessage.user("last x")]))
        await svc.chat(
            attrs.evolve(
                request, messages=[system, ChatMessage.user("small x")], preferred_backend="small"
            )
        )
    assert said(big) == [
        ("system", "rules"),
        ("user", "beta x"),
        ("assistant", "beta two"),
        ("user", "gamma x"),
        ("assistant", "gamma two"),
        ("user", "last x"),
    ]
    assert said(script(svc, "small")) == [
        ("system", "rules"),
        ("user", "last x"),
        ("assistant", "ok"),
        ("user", "small x"),
    ]


async def test_stored_history_is_bounded_by_the_token_limit() -> None:
    """Memory stores at most default_token_limit tokens of whole turns: it cannot grow
    without bound."""
    memory = ConversationMemory(
        MemoryStore(), MemorySettings(default_token_limit=3 + 4 * (4 + 1)), token_counter=WORDS
    )
    for index in range(10):
        await memory.append(
            "c", [ChatMessage.user(f"q{index}"), ChatMessage.assistant(f"a{index}")]
        )
    assert texts(await memory.history("c")) == ["q8", "a8", "q9", "a9"]


async def test_ttl_forgets_a_conversation_after_its_last_turn() -> None:
    """ttl_minutes after the last turn a conversation is gone; each turn restarts the clock."""
    clock = Clock()
    memory = ConversationMemory(MemoryStore(), MemorySettings(ttl_minutes=10), clock=clock)
    await memory.append("c", [ChatMessage.user("one")])
    clock.now += 9 * 60
    await memory.append("c", [ChatMessage.user("two")])
    clock.now += 9 * 60  # 18 minutes after the first turn, 9 after the last
    kept = await memory.history("c")
    clock.now += 60
    assert texts(kept) == ["one", "two"]
    assert await memory.history("c") == ()


async def test_ttl_through_a_service() -> None:
    """A service's memory (built directly, clock injected) forgets an idle conversation: the
    backend no longer sees the old turn."""
    clock = Clock()
    config = load_settings(settings(fake("a"), memory={"enabled": True, "ttl_minutes": 1}))
    backend = FakeBackend(config.backends[0])
    memory = ConversationMemory(MemoryStore(), config.memory, clock=clock)
    prompts = PromptPipeline.build(config, config.backends, memory=memory)
    async with LlmService(config, [backend], prompts=prompts) as svc:
        await svc.chat(turn("old"))
        clock.now += 61
        await svc.chat(turn("new"))
    assert said(backend) == [("user", "new")]


async def test_max_size_evicts_the_least_recently_used_conversation() -> None:
    """memory.max_size_mb bounds the in-memory store: the idlest conversation goes first."""
    store = MemoryStore()
    await ConversationMemory(store, MemorySettings()).append("probe", [ChatMessage.user("x" * 40)])
    size = len(await store.cache_get("conversation:probe") or b"")
    assert size > 100
    room_for_three = (3 * size + size // 2) / (1024 * 1024)
    memory = ConversationMemory(MemoryStore(), MemorySettings(max_size_mb=room_for_three))
    for name in ("a", "b", "c"):
        await memory.append(name, [ChatMessage.user("x" * 40)])
    await memory.history("a")  # used: "b" is now the least recently used
    await memory.append("d", [ChatMessage.user("x" * 40)])
    present = [name for name in "abcd" if await memory.history(name)]
    assert present == ["a", "c", "d"]


async def test_connection_string_places_memory_in_that_store(tmp_path: Path) -> None:
    """An explicit memory.connection_string (SQLite here) keeps conversations there: a new
    service on the same file continues them."""
    db = tmp_path / "memory.db"
    config = settings(
        fake("a"), memory={"enabled": True, "provider": "sqlite", "connection_string": str(db)}
    )
    async with open_service(config, plugins=[FakeBackendPlugin()]) as svc:
        await svc.chat(turn("before restart"))
    async with open_service(config, plugins=[FakeBackendPlugin()]) as svc:
        await svc.chat(turn("after restart"))
        assert said(script(svc, "a")) == [
            ("user", "before restart"),
            ("assistant", "ok"),
            ("user", "after restart"),
        ]
    assert db.exists()


async def test_connection_string_defaults_to_the_cache_store_of_the_same_provider(
    tmp_path: Path,
) -> None:
    """Without its own connection_string, memory on the caching provider uses the cache's
    location, under its own key_prefix (so the cache's size bound never evicts it)."""
    db = tmp_path / "shared.db"
    config = settings(
        fake("a"),
        caching={"enabled": True, "provider": "sqlite", "connection_string": str(db)},
        memory={"enabled": True, "provider": "sqlite", "key_prefix": "convs:"},
    )
    async with open_service(config, plugins=[FakeBackendPlugin()]) as svc:
        await svc.chat(turn("kept in the shared file"))
    async with open_store("sqlite", str(db), "convs:") as store:
        stored = await ConversationMemory(store, MemorySettings()).history("c1")
    async with open_store("sqlite", str(db), "llm:") as store:
        under_cache_prefix = await ConversationMemory(store, MemorySettings()).history("c1")
    assert texts(stored) == ["kept in the shared file", "ok"]
    assert under_cache_prefix == ()


def test_a_persistent_provider_needs_a_connection_string() -> None:
    """memory.provider sqlite/redis without a location (its own or the cache's) is a
    configuration error naming memory.connection_string."""
    with pytest.raises(ConfigurationError) as raised:
        load_settings(settings(fake("a"), memory={"enabled": True, "provider": "redis"}))
    assert [p.path for p in raised.value.problems] == ["memory.connection_string"]
    # Disabled memory needs nothing; a range problem is reported with its path.
    load_settings(settings(fake("a"), memory={"provider": "redis"}))
    with pytest.raises(ConfigurationError, match=r"memory\.max_size_mb: must be greater than 0"):
        load_settings(settings(fake("a"), memory={"max_size_mb": 0}))


def test_memory_and_cache_prefixes_must_not_nest_in_one_sqlite_file() -> None:
    """In one SQLite file each feature prunes every key under its prefix, so a memory prefix
    inside the cache's (or the reverse) is refused; in separate files it is fine."""
    shared = {"provider": "sqlite", "connection_string": "state.db"}
    with pytest.raises(ConfigurationError) as raised:
        load_settings(
            settings(
                fake("a"),
                caching={**shared, "key_prefix": "app:"},
                memory={"enabled": True, "provider": "sqlite", "key_prefix": "app:mem:"},
            )
        )
    assert [p.path for p in raised.value.problems] == ["memory.key_prefix"]
    load_settings(
        settings(
            fake("a"),
            caching={**shared, "key_prefix": "app:"},
            memory={
                **shared,
                "enabled": True,
                "connection_string": "other.db",
                "key_prefix": "app:m:",
            },
        )
    )


def test_memory_connection_string_is_a_secret() -> None:
    """The memory connection string (and its password) never shows in repr, in the safe
    unstructured settings, or in redacted text."""
    url = "redis://user:s3cr3t-pw@cache:6379/0"
    config = load_settings(
        settings(fake("a"), memory={"enabled": True, "provider": "redis", "connection_string": url})
    )
    assert "s3cr3t" not in repr(config)
    assert "connection_string" not in unstructure_settings(config)["memory"]
    assert unstructure_settings(config, include_secrets=True)["memory"]["connection_string"] == url
    scrubbed = redactor_for(config).text(f"failed to reach {url}; password s3cr3t-pw")
    assert "s3cr3t" not in scrubbed


def test_a_directly_built_service_needs_a_store_for_persistent_memory() -> None:
    """LlmService without open_service gets an in-process memory for provider memory, and a
    clear error for a provider whose store must be opened first."""
    in_process = LlmSettings(memory=MemorySettings(enabled=True))
    assert LlmService(in_process, []).memory is not None
    sqlite = LlmSettings(memory=MemorySettings(enabled=True, provider="sqlite"))
    with pytest.raises(ConfigurationError, match=r"memory\.provider: a 'sqlite' store must be"):
        LlmService(sqlite, [])


# --- concurrency and the cache ------------------------------------------------------------------


class YieldingStore(MemoryStore):
    """A memory store whose reads and writes give way to other tasks, like a network store:
    without a lock, two read-modify-writes interleave."""

    async def cache_get(self, key: str) -> bytes | None:
        for _ in range(3):
            await asyncio.sleep(0)
        return await super().cache_get(key)

    async def cache_put(self, key: str, value: bytes, **options: Any) -> None:
        await asyncio.sleep(0)
        await super().cache_put(key, value, **options)


async def test_concurrent_turns_on_one_conversation_lose_nothing() -> None:
    """Twenty turns saved at once on one conversation are all kept (a per-conversation lock
    orders the read-modify-writes); the lock table is empty afterwards."""
    memory = ConversationMemory(YieldingStore(), MemorySettings(default_token_limit=100_000))
    await asyncio.gather(
        *(
            memory.append("c", [ChatMessage.user(f"q{i}"), ChatMessage.assistant(f"a{i}")])
            for i in range(20)
        )
    )
    stored = await memory.history("c")
    assert sorted(texts(stored)[0::2]) == sorted(f"q{i}" for i in range(20))
    assert len(stored) == 40
    assert memory._locks == {}


async def test_concurrent_requests_on_one_conversation_keep_both_turns() -> None:
    """Two chats on one conversation at the same time both end up in its history."""
    config = settings(fake("a"), memory=MEMORY_ON)
    async with open_service(config, plugins=[FakeBackendPlugin()]) as svc:
        script(svc, "a").default_reply = FakeReply(text="answer", delay=0.01)
        await asyncio.gather(svc.chat(turn("first")), svc.chat(turn("second")))
        stored = await memory_of(svc).history("c1")
    assert sorted(texts(stored)) == ["answer", "answer", "first", "second"]


async def test_the_cache_never_answers_across_conversation_histories() -> None:
    """With caching on, the same question after different histories reaches the backend;
    after the same (empty) history the prompt is identical and the cache answers -- and the
    cached answer still joins its conversation."""
    config = settings(fake("a"), caching={"enabled": True}, memory=MEMORY_ON)
    async with open_service(config, plugins=[FakeBackendPlugin()]) as svc:
        backend = script(svc, "a")
        backend.push("I am a", "I am b", "answer 1", "answer 2")
        await svc.chat(turn("hello a", conversation="a"))
        await svc.chat(turn("hello b", conversation="b"))
        in_a = await svc.chat(turn("same question", conversation="a"))
        in_b = await svc.chat(turn("same question", conversation="b"))
        fresh = await svc.chat(turn("hello a", conversation="new"))
        new_history = await memory_of(svc).history("new")
    assert (in_a.content, in_a.cached, in_b.content, in_b.cached) == (
        "answer 1",
        False,
        "answer 2",
        False,
    )
    assert (fresh.content, fresh.cached) == ("I am a", True)
    assert texts(new_history) == ["hello a", "I am a"]
    assert backend.calls == 4


class BrokenStore(MemoryStore):
    """A store that fails on reads or on writes."""

    def __init__(self, *, reads: bool, writes: bool) -> None:
        super().__init__()
        self.reads, self.writes = reads, writes

    async def cache_get(self, key: str) -> bytes | None:
        if self.reads:
            raise StateStoreError("store down (read)")
        return await super().cache_get(key)

    async def cache_put(self, key: str, value: bytes, **options: Any) -> None:
        if self.writes:
            raise StateStoreError("store down (write)")
        await super().cache_put(key, value, **options)


async def test_a_store_that_cannot_read_fails_the_request_before_any_backend() -> None:
    """Without its history a conversation cannot be answered correctly: the request fails
    with the store's error (fail closed) and no backend is called; a failed write after a
    good answer is logged and the answer returned."""
    config = load_settings(settings(fake("a"), memory=MEMORY_ON))
    backend = FakeBackend(config.backends[0])
    unreadable = ConversationMemory(BrokenStore(reads=True, writes=False), config.memory)
    async with LlmService(
        config, [backend], prompts=PromptPipeline.build(config, config.backends, memory=unreadable)
    ) as svc:
        with pytest.raises(StateStoreError, match=r"store down \(read\)"):
            await svc.chat(turn("hi"))
    assert backend.calls == 0
    unwritable = ConversationMemory(BrokenStore(reads=False, writes=True), config.memory)
    async with LlmService(
        config, [backend], prompts=PromptPipeline.build(config, config.backends, memory=unwritable)
    ) as svc:
        answer = await svc.chat(turn("hi"))
    assert (answer.content, backend.calls) == ("ok", 1)


async def test_an_unreadable_entry_is_an_empty_conversation() -> None:
    """An entry this version cannot read (another format, corrupt bytes) counts as empty."""
    store = MemoryStore()
    memory = ConversationMemory(store, MemorySettings())
    options: dict[str, Any] = {"now": 0.0, "ttl_seconds": 60.0, "max_bytes": 10_000}
    await store.cache_put("conversation:old", b'{"format": 99, "messages": []}', **options)
    await store.cache_put("conversation:bad", b"\xff not json", **options)
    await store.cache_put(
        "conversation:odd", b'{"format": 1, "expires_at": 9e99, "messages": [1]}', **options
    )
    assert [await memory.history(name) for name in ("old", "bad", "odd")] == [(), (), ()]
