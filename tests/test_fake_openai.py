"""FakeOpenAIServer: the scripted OpenAI wire-format server that ships in llmbackend.testing."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from llmbackend.models import ToolCall
from llmbackend.testing._fake_behavior import Behavior, BehaviorKind
from llmbackend.testing._fake_openai import BEHAVIOR_HEADER, FakeOpenAIServer


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(chunk_size=5) as fake:
        yield fake


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    async with session.post(url, json=body, headers=headers) as response:
        return response.status, await response.text()


async def read_pieces(response: aiohttp.ClientResponse, sink: list[bytes]) -> None:
    """Read the body piece by piece into ``sink`` (kept if the read fails midway)."""
    async for piece in response.content.iter_any():
        sink.append(piece)  # noqa: PERF401 - the pieces read before a failure are the point


def frames(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]


CHAT = {"model": "gpt-x", "messages": [{"role": "user", "content": "two words"}]}


async def test_base_url_and_requests_are_recorded(
    server: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    """The server listens on 127.0.0.1 under /v1 and records method, path, headers and body."""
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    status, _ = await post(session, f"{server.base_url}/chat/completions", CHAT, {"X-Probe": "yes"})
    async with session.get(f"{server.base_url}/models?limit=2") as response:
        assert response.status == 200
    assert status == 200
    first, second = server.requests
    assert (first.method, first.path, first.json) == ("POST", "/v1/chat/completions", CHAT)
    assert first.headers["X-Probe"] == "yes"
    assert (second.method, second.path, second.json, second.query) == (
        "GET",
        "/v1/models",
        None,
        {"limit": "2"},
    )


async def test_non_streamed_answer_has_openai_shape(
    server: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    """A plain chat answer carries the default reply, the requested model, stop and usage."""
    _, text = await post(session, f"{server.base_url}/chat/completions", CHAT)
    answer = json.loads(text)
    choice = answer["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (server.reply, "stop")
    assert answer["model"] == "gpt-x"
    assert answer["usage"]["prompt_tokens"] == 2
    assert answer["usage"]["completion_tokens"] == len(server.reply.split())


async def test_stream_has_chunks_usage_and_done(
    server: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    """A stream sends the reply in ``chunk_size`` pieces, a finish chunk, a usage chunk (when
    asked for) and ``data: [DONE]``."""
    body = CHAT | {"stream": True, "stream_options": {"include_usage": True}}
    _, text = await post(session, f"{server.base_url}/chat/completions", body)
    data = frames(text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert "".join(pieces) == server.reply
    assert all(len(piece) <= 5 for piece in pieces)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] > 0


async def test_enqueue_serves_replies_errors_then_default(
    server: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    """Queued replies and errors are served in order to POST requests, GETs do not consume
    them, and the default reply follows once the queue is empty."""
    server.enqueue("first", Behavior.ok("second"))
    server.enqueue_error(503, {"error": {"message": "busy"}}, {"Retry-After": "3"})
    url = f"{server.base_url}/chat/completions"
    replies = []
    for _ in range(2):
        _, text = await post(session, url, CHAT)
        replies.append(json.loads(text)["choices"][0]["message"]["content"])
        async with session.get(f"{server.base_url}/models") as response:
            assert response.status == 200
    async with session.post(url, json=CHAT) as response:
        assert (response.status, response.headers["Retry-After"]) == (503, "3")
        assert await response.json() == {"error": {"message": "busy"}}
    assert server.pending == 0
    _, text = await post(session, url, CHAT)
    replies.append(json.loads(text)["choices"][0]["message"]["content"])
    assert replies == ["first", "second", server.reply]


async def test_behaviour_chosen_by_header_or_model(
    server: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    """The x-fake-behavior header or a model named like a catalogue entry picks the behaviour
    without consuming the queue; an unknown name is a 400."""
    server.register("teapot", Behavior.error(418))
    server.enqueue("queued")
    url = f"{server.base_url}/chat/completions"
    assert (await post(session, url, CHAT, {BEHAVIOR_HEADER: "teapot"}))[0] == 418
    assert (await post(session, url, CHAT | {"model": "error_500"}))[0] == 500
    assert (await post(session, url, CHAT, {BEHAVIOR_HEADER: "nope"}))[0] == 400
    assert server.pending == 1
    assert set(BehaviorKind) - {BehaviorKind.ERROR, BehaviorKind.RAW} <= set(server.catalogue)


async def test_missing_done_ends_after_finish(
    server: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    """The missing-[DONE] fault sends the finish chunk and ends the body without [DONE]."""
    server.enqueue(Behavior.missing_done("abc"))
    _, text = await post(session, f"{server.base_url}/chat/completions", CHAT | {"stream": True})
    data = frames(text)
    assert "[DONE]" not in data
    assert json.loads(data[-1])["choices"][0]["finish_reason"] == "stop"


async def test_cut_stream_drops_the_connection(
    server: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    """The cut-stream fault sends K chunks and then breaks the connection (streamed or not)."""
    server.enqueue(Behavior.cut_stream(after_chunks=2), Behavior.cut_stream())
    url = f"{server.base_url}/chat/completions"
    received: list[bytes] = []
    async with session.post(url, json=CHAT | {"stream": True}) as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await read_pieces(response, received)
    assert len(frames(b"".join(received).decode())) == 2
    async with session.post(url, json=CHAT) as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_malformed_chunk_is_not_json(
    server: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    """The malformed-chunk fault sends K good frames, one that is not JSON, then the rest of
    the answer and [DONE]; a non-streamed answer is cut-off JSON."""
    server.enqueue(Behavior.malformed_chunk(after_chunks=1), Behavior.malformed_chunk())
    url = f"{server.base_url}/chat/completions"
    _, text = await post(session, url, CHAT | {"stream": True})
    good, bad, *rest, done = frames(text)
    for frame in (good, *rest):
        json.loads(frame)
    with pytest.raises(ValueError, match="Expecting"):
        json.loads(bad)
    assert done == "[DONE]"
    assert json.loads(rest[-1])["choices"][0]["finish_reason"] == "stop"
    _, whole = await post(session, url, CHAT)
    with pytest.raises(ValueError, match=r"Unterminated|Expecting"):
        json.loads(whole)


async def test_tool_calls_streamed_as_fragments(
    server: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    """Scripted tool calls arrive with id and name first, then argument fragments, and finish
    with ``tool_calls``."""
    call = ToolCall(id="call_1", name="add", arguments='{"a": 1, "b": 2}')
    server.enqueue(Behavior.ok(tool_calls=[call]))
    _, text = await post(session, f"{server.base_url}/chat/completions", CHAT | {"stream": True})
    chunks = [json.loads(d) for d in frames(text)[:-1]]
    fragments = [f for c in chunks for f in c["choices"][0]["delta"].get("tool_calls", [])]
    assert fragments[0]["id"] == "call_1"
    assert fragments[0]["function"]["name"] == "add"
    assert "".join(f["function"]["arguments"] for f in fragments) == call.arguments
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_embeddings_float_and_base64_agree(
    server: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    """Embeddings are deterministic per text, sized by ``dimensions``, and the base64 form
    decodes to the same float32 values as the float form."""
    url = f"{server.base_url}/embeddings"
    body = {"model": "e", "input": ["hi there", "yo"], "dimensions": 3}
    _, as_float = await post(session, url, body)
    _, as_b64 = await post(session, url, body | {"encoding_format": "base64"})
    floats = [d["embedding"] for d in json.loads(as_float)["data"]]
    decoded = [
        list(struct.unpack("<3f", base64.b64decode(d["embedding"])))
        for d in json.loads(as_b64)["data"]
    ]
    assert floats == decoded
    assert [len(v) for v in floats] == [3, 3]
    assert json.loads(as_float)["usage"]["prompt_tokens"] == 3


async def test_health_and_models(server: FakeOpenAIServer, session: aiohttp.ClientSession) -> None:
    """GET /health answers ok and GET /v1/models lists the configured models."""
    async with session.get(f"{server.root_url}/health") as response:
        assert await response.json() == {"status": "ok"}
    async with session.get(f"{server.base_url}/models") as response:
        assert [m["id"] for m in (await response.json())["data"]] == list(server.models)


async def test_stop_frees_the_port_and_is_idempotent(session: aiohttp.ClientSession) -> None:
    """After stop, connections are refused and the port can be bound again; stopping twice is
    harmless."""
    fake = FakeOpenAIServer()
    await fake.start()
    port = fake.port
    await post(session, f"{fake.base_url}/chat/completions", CHAT)
    await fake.stop()
    await fake.aclose()
    assert not fake.running
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


async def test_stop_is_bounded_with_a_slow_handler(session: aiohttp.ClientSession) -> None:
    """A handler held up by artificial latency does not keep stop() waiting past its
    shutdown timeout."""
    fake = FakeOpenAIServer(latency=60.0, shutdown_timeout=0.05)
    await fake.start()
    with pytest.raises(TimeoutError):
        await post_with_timeout(session, f"{fake.base_url}/chat/completions")
    assert len(fake.requests) == 1
    await fake.stop()
    assert not fake.running


async def post_with_timeout(session: aiohttp.ClientSession, url: str) -> None:
    async with session.post(url, json=CHAT, timeout=aiohttp.ClientTimeout(total=0.2)) as response:
        await response.read()


def test_port_before_start_is_an_error() -> None:
    """Asking for the address of a server that was never started fails clearly."""
    with pytest.raises(RuntimeError, match="not been started"):
        _ = FakeOpenAIServer().base_url
