"""The response cache over every store: keys, hits and misses, TTL, size bounds, what may be
stored, and replaying a cached answer as a stream."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import redis.asyncio as aioredis

from llmbackend.errors import StateStoreError
from llmbackend.models import (
    ChatMessage,
    ChatRequest,
    FinishEvent,
    FinishReason,
    LlmRequest,
    LlmResponse,
    StreamRestarted,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    Usage,
    UsageEvent,
)
from llmbackend.settings import CachingSettings
from llmbackend.state import (
    ResponseCache,
    StateStore,
    StreamAssembler,
    canonical_request,
    open_store,
    replay_stream,
)
from llmbackend.state._sqlite import SqliteStore
from llmbackend.testing._redis_server import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


BASE = ChatRequest(
    messages=[ChatMessage.system("be brief"), ChatMessage.user("hello")],
    model="m1",
    temperature=0.2,
    max_tokens=50,
    tools=[ToolDefinition(name="lookup", parameters={"type": "object", "properties": {}})],
    tool_choice="auto",
    response_format={"type": "json_object"},
)

ANSWER = LlmResponse(
    content="hi there",
    backend="b1",
    model="m1",
    prompt_tokens=12,
    completion_tokens=3,
    total_tokens=15,
    finish_reason=FinishReason.TOOL_CALLS,
    raw_finish_reason="tool_calls",
    duration_ms=812.0,
    cost_usd=0.0021,
    tool_calls=[ToolCall(id="c1", name="lookup", arguments='{"q": "x"}')],
)


def make_cache(store: Any, clock: Clock | None = None, **settings: Any) -> ResponseCache:
    return ResponseCache(store, CachingSettings(enabled=True, **settings), clock=clock or Clock())


async def test_an_equal_request_hits_and_returns_the_answer_marked_cached(
    store: StateStore,
) -> None:
    """A stored answer comes back equal in content, tool calls and usage, flagged cached=True
    and costing nothing; an equal (rebuilt) request finds it."""
    cache = make_cache(store)
    assert await cache.put(cache.key_for(BASE), ANSWER)
    again = attrs.evolve(BASE, messages=list(BASE.messages))
    hit = await cache.get(cache.key_for(again))
    assert hit is not None
    assert hit.cached
    assert hit.cost_usd == 0.0
    assert attrs.evolve(hit, cached=False, cost_usd=ANSWER.cost_usd, duration_ms=812.0) == ANSWER
    assert cache.statistics().hits == 1


VARIATIONS: dict[str, dict[str, Any]] = {
    "model": {"model": "m2"},
    "message text": {"messages": [ChatMessage.system("be brief"), ChatMessage.user("hello!")]},
    "system prompt": {"messages": [ChatMessage.system("be long"), ChatMessage.user("hello")]},
    "message role": {"messages": [ChatMessage.user("be brief"), ChatMessage.user("hello")]},
    "tool call in history": {
        "messages": [
            ChatMessage.system("be brief"),
            ChatMessage.assistant(tool_calls=[ToolCall(id="c", name="lookup")]),
        ]
    },
    "temperature": {"temperature": 0.3},
    "max_tokens": {"max_tokens": 51},
    "top_p": {"top_p": 0.9},
    "frequency_penalty": {"frequency_penalty": 0.1},
    "presence_penalty": {"presence_penalty": 0.1},
    "stop sequences": {"stop_sequences": ["END"]},
    "tools": {"tools": [ToolDefinition(name="lookup", description="find")]},
    "tool_choice": {"tool_choice": "none"},
    "response_format": {"response_format": {"type": "text"}},
}


@pytest.mark.parametrize("change", VARIATIONS.values(), ids=VARIATIONS.keys())
def test_any_parameter_that_shapes_the_answer_changes_the_key(change: dict[str, Any]) -> None:
    """Each field that can change the answer gives a different key."""
    cache = ResponseCache(object(), CachingSettings())  # type: ignore[arg-type]
    assert cache.key_for(attrs.evolve(BASE, **change)) != cache.key_for(BASE)


def test_fields_that_cannot_change_the_answer_keep_the_key() -> None:
    """Metadata, timeouts, strategy and preferred backend are not part of the key; dict key
    order does not matter (the encoding sorts keys)."""
    cache = ResponseCache(object(), CachingSettings())  # type: ignore[arg-type]
    other = attrs.evolve(
        BASE,
        metadata={"trace": "x"},
        timeout_seconds=3,
        preferred_backend="b9",
        response_format={"type": "json_object"},
    )
    assert cache.key_for(other) == cache.key_for(BASE)
    one = attrs.evolve(BASE, response_format={"a": 1, "b": [1, 2]})
    two = attrs.evolve(BASE, response_format={"b": [1, 2], "a": 1})
    assert cache.key_for(one) == cache.key_for(two)


def test_backend_model_and_namespace_are_part_of_the_key() -> None:
    """The same request for another backend, model or namespace is another entry."""
    a = ResponseCache(object(), CachingSettings())  # type: ignore[arg-type]
    b = ResponseCache(object(), CachingSettings(), namespace="other")  # type: ignore[arg-type]
    assert a.key_for(BASE, backend="b1") != a.key_for(BASE, backend="b2")
    assert a.key_for(BASE, model="x") != a.key_for(BASE, model="y")
    assert a.key_for(BASE) != b.key_for(BASE)


def test_metadata_a_backend_reads_is_part_of_the_key_and_annotations_are_not() -> None:
    """EasyNMT reads its languages from metadata: another target language is another entry,
    while metadata that only annotates the request (a user id) shares the entry."""
    french = attrs.evolve(BASE, metadata={"target_language": "fr", "user": "ann"})
    german = attrs.evolve(BASE, metadata={"target_language": "de", "user": "ann"})
    french_for_bob = attrs.evolve(french, metadata={"target_language": "fr", "user": "bob"})
    assert canonical_request(french) != canonical_request(german)
    assert canonical_request(french) == canonical_request(french_for_bob)
    assert canonical_request(attrs.evolve(BASE, metadata={"user": "ann"})) == (
        canonical_request(BASE)
    )


def test_a_completion_and_its_chat_form_share_a_key() -> None:
    """LlmRequest(prompt, system_prompt) is keyed as the equivalent chat request."""
    completion = LlmRequest(prompt="hello", system_prompt="be brief", model="m1")
    chat = ChatRequest(
        messages=[ChatMessage.system("be brief"), ChatMessage.user("hello")], model="m1"
    )
    assert canonical_request(completion) == canonical_request(chat)


async def test_a_different_request_misses(store: StateStore) -> None:
    """Another request is a miss, counted as such."""
    cache = make_cache(store)
    await cache.put(cache.key_for(BASE), ANSWER)
    assert await cache.get(cache.key_for(attrs.evolve(BASE, temperature=0.9))) is None
    stats = cache.statistics()
    assert (stats.hits, stats.misses, stats.stores) == (0, 1, 1)


async def test_entries_expire_after_the_ttl(store: StateStore) -> None:
    """An entry is served until expiration_minutes have passed, then it is a miss."""
    clock = Clock()
    cache = make_cache(store, clock, expiration_minutes=10)
    key = cache.key_for(BASE)
    await cache.put(key, ANSWER)
    clock.now += 599
    assert await cache.get(key) is not None
    clock.now += 1
    assert await cache.get(key) is None


async def test_redis_entries_carry_the_ttl(redis_server: RedisServer, key_prefix: str) -> None:
    """In Redis the TTL is the server's own expiry, so stale entries disappear by themselves."""
    async with open_store("redis", redis_server.url, key_prefix) as store:
        cache = make_cache(store, expiration_minutes=2)
        key = cache.key_for(BASE)
        await cache.put(key, ANSWER)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        ttl_ms = await client.pttl(key_prefix + key.value)
    finally:
        await client.aclose()
    assert 110_000 < ttl_ms <= 120_000


@pytest.mark.parametrize(
    "reason",
    [FinishReason.ERROR, FinishReason.CONTENT_FILTER, FinishReason.LENGTH, None],
)
async def test_answers_that_did_not_finish_normally_are_never_stored(
    store: StateStore, reason: FinishReason | None
) -> None:
    """Errors, filtered, truncated and unknown endings are refused: a later get misses."""
    cache = make_cache(store)
    key = cache.key_for(BASE)
    assert not await cache.put(key, attrs.evolve(ANSWER, finish_reason=reason))
    assert await cache.get(key) is None
    assert cache.statistics().refused == 1


async def test_hits_and_fan_out_answers_are_not_stored_again(store: StateStore) -> None:
    """A cached answer, or one carrying a fan-out's alternatives, is refused."""
    cache = make_cache(store)
    key = cache.key_for(BASE)
    assert not await cache.put(key, attrs.evolve(ANSWER, cached=True))
    assert not await cache.put(key, attrs.evolve(ANSWER, alternative_responses=[ANSWER]))
    assert not await cache.put(key, attrs.evolve(ANSWER, failed_alternatives=[ValueError()]))


async def test_only_responses_can_be_stored() -> None:
    """put() takes an LlmResponse and nothing else (an exception cannot slip in)."""
    cache = make_cache(await open_store("memory"))
    with pytest.raises(TypeError, match="only LlmResponse"):
        await cache.put(cache.key_for(BASE), RuntimeError("boom"))  # type: ignore[arg-type]


async def test_memory_evicts_the_least_recently_used_entries() -> None:
    """Past max_cache_size_mb the memory store drops the least recently used entries first."""
    big = attrs.evolve(ANSWER, content="x" * 20_000)
    cache = make_cache(await open_store("memory"), max_cache_size_mb=0.1)  # ~5 entries
    keys = [cache.key_for(BASE, model=f"m{i}") for i in range(8)]
    for index, key in enumerate(keys):
        await cache.put(key, big)
        if index >= 1:
            assert await cache.get(keys[0]) is not None  # keep the first one recently used
    assert await cache.get(keys[0]) is not None
    assert await cache.get(keys[1]) is None
    assert await cache.get(keys[-1]) is not None


async def test_sqlite_prunes_to_the_size_bound(tmp_path: Any) -> None:
    """SQLite prunes periodically: expired entries first, then those expiring soonest, until
    the entries fit max_cache_size_mb; the newest survive."""
    store = await SqliteStore.connect(str(tmp_path / "c.db"))
    clock = Clock()
    cache = make_cache(store, clock, max_cache_size_mb=0.1)
    big = attrs.evolve(ANSWER, content="x" * 20_000)
    keys = [cache.key_for(BASE, model=f"m{i}") for i in range(70)]
    for key in keys:
        clock.now += 1
        await cache.put(key, big)
    rows = await store._rows("count", "SELECT COUNT(*) FROM cache_entries")
    assert rows[0][0] <= 5 + 70 % 64  # pruned on the 65th put; 5 more since
    await store.cache_prune(now=clock.now, max_bytes=int(0.1 * 1024 * 1024))
    rows = await store._rows("count", "SELECT COUNT(*), SUM(size) FROM cache_entries")
    count, size = rows[0]
    assert 0 < count <= 5
    assert size <= 0.1 * 1024 * 1024
    assert await cache.get(keys[-1]) is not None
    assert await cache.get(keys[0]) is None
    await store.aclose()


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
async def test_a_failing_store_degrades_to_misses(reopen: Any) -> None:
    """A cache whose store fails serves misses and skips stores; it never fails the caller."""
    store = await reopen()
    await store.aclose()
    cache = make_cache(store)
    key = cache.key_for(BASE)
    assert not await cache.put(key, ANSWER)
    assert await cache.get(key) is None
    assert cache.statistics().errors == 2


async def test_a_corrupt_entry_is_a_miss(store: StateStore) -> None:
    """An entry that cannot be decoded is a miss, not an exception."""
    cache = make_cache(store)
    key = cache.key_for(BASE)
    await store.cache_put(key.value, b"not json", now=0, ttl_seconds=60, max_bytes=10**6)
    assert await cache.get(key) is None
    assert cache.statistics().errors == 1


async def test_a_cached_answer_replays_as_a_normal_stream() -> None:
    """replay_stream yields text chunks, each tool call, usage and a final FinishEvent."""
    answer = attrs.evolve(ANSWER, content="abcdefghij")
    events = [event async for event in replay_stream(answer, chunk_chars=4)]
    assert events == [
        TextDelta(text="abcd"),
        TextDelta(text="efgh"),
        TextDelta(text="ij"),
        ToolCallDelta(index=0, id="c1", name="lookup", arguments_delta='{"q": "x"}'),
        UsageEvent(usage=Usage.of(12, 3)),
        FinishEvent(
            reason=FinishReason.TOOL_CALLS, raw_reason="tool_calls", backend="b1", model="m1"
        ),
    ]


async def test_a_replayed_cache_hit_says_so_and_assembles_as_costing_nothing() -> None:
    """A cache hit replayed as a stream ends with FinishEvent.cached, and assembles back into
    an answer marked cached that cost nothing."""
    hit = attrs.evolve(ANSWER, cached=True, cost_usd=0.0)
    assembler = StreamAssembler()
    async for event in replay_stream(hit):
        assembler.feed(event)
        last = event
    assert isinstance(last, FinishEvent)
    assert last.cached is True
    response = assembler.response()
    assert response is not None
    assert (response.cached, response.cost_usd) == (True, 0.0)


async def test_a_replayed_stream_assembles_back_into_the_answer() -> None:
    """StreamAssembler turns the replayed events back into an equal LlmResponse."""
    assembler = StreamAssembler()
    async for event in replay_stream(ANSWER, chunk_chars=3):
        assembler.feed(event)
    assert assembler.response(duration_ms=ANSWER.duration_ms) == attrs.evolve(ANSWER, cost_usd=None)


def test_an_unfinished_stream_assembles_to_nothing() -> None:
    """Without a FinishEvent (a cut or stalled stream) there is nothing to cache."""
    assembler = StreamAssembler()
    assembler.feed(TextDelta(text="partial"))
    assert assembler.response() is None


def test_a_restarted_stream_keeps_only_the_answer_that_finished() -> None:
    """After StreamRestarted the discarded text and tool calls are dropped."""
    assembler = StreamAssembler()
    assembler.feed(TextDelta(text="broken "))
    assembler.feed(ToolCallDelta(index=0, id="x", name="f"))
    assembler.feed(StreamRestarted(failed_backend="a", next_backend="b", discard_chars=7, error=""))
    assembler.feed(TextDelta(text="whole"))
    assembler.feed(FinishEvent(reason=FinishReason.STOP, raw_reason="stop", backend="b", model="m"))
    response = assembler.response()
    assert response is not None
    assert (response.content, response.tool_calls, response.backend) == ("whole", (), "b")


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
async def test_stores_with_another_prefix_do_not_share_entries(
    store: StateStore, reopen: Any, store_kind: str, store_location: str | None
) -> None:
    """key_prefix separates services sharing one SQLite file or Redis; the same prefix
    (another replica) sees the entries."""
    cache = make_cache(store)
    await cache.put(cache.key_for(BASE), ANSWER)
    async with open_store(store_kind, store_location, "someone-else:") as other:
        assert await make_cache(other).get(cache.key_for(BASE)) is None
    async with reopen() as same:
        assert await make_cache(same).get(cache.key_for(BASE)) is not None


def test_store_errors_are_llmbackend_errors() -> None:
    """StateStoreError belongs to the SDK's error tree."""
    from llmbackend.errors import LlmBackendError

    assert issubclass(StateStoreError, LlmBackendError)
