"""FakeProviderServer: both wire formats, the fault catalogue, per-backend counting, shutdown.

Faults are checked at the wire level with a plain aiohttp client (status, headers, body
shape, dropped connections, stalls seen through a client-side timeout), then a few through
the SDK's OpenAIBackend to show it maps them to the right errors.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from llmbackend.backends.openai import OpenAIBackend
from llmbackend.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ContentFilteredError,
    ContextLengthExceededError,
    InvalidRequestError,
    RateLimitedError,
    StreamInterruptedError,
)
from llmbackend.models import ChatMessage, ChatRequest, ToolCall
from llmbackend.settings import LlmBackendConfig
from llmbackend.testing._fake_behavior import Behavior, BehaviorKind, builtin_catalogue
from llmbackend.testing._fake_openai import FakeOpenAIServer
from llmbackend.testing._fake_server import BEHAVIOR_HEADER, FakeProviderServer

#: How long the client waits for a byte before calling a connection stalled. Only ever
#: reached by the stall and never-answer faults, whose servers send nothing more.
SILENCE = 0.2
PREFILL_MESSAGE = "does not support assistant message prefill"


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def server() -> AsyncIterator[FakeProviderServer]:
    # A long shutdown timeout: stop() must be prompt by waking handlers, not by timing out.
    async with FakeProviderServer(chunk_size=5, shutdown_timeout=60.0) as fake:
        yield fake


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each SSE event in ``text``."""
    events = []
    for block in text.split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        if data:
            events.append((name, "\n".join(data)))
    return events


def parsed(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


class OpenAIWire:
    """Requests and stream readings for ``/v1/chat/completions``."""

    name = "openai"
    path = "/chat/completions"

    def body(self, *, stream: bool = False, messages: list[dict[str, Any]] | None = None) -> Any:
        messages = messages or [{"role": "user", "content": "two words"}]
        body: dict[str, Any] = {"model": "gpt-x", "messages": messages}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return body

    def texts(self, text: str) -> list[str]:
        chunks = [parsed(data) for _, data in sse_events(text)]
        return [
            c["choices"][0]["delta"].get("content", "")
            for c in chunks
            if isinstance(c, dict) and c.get("choices")
        ]

    def finished(self, text: str) -> bool:
        chunks = [parsed(data) for _, data in sse_events(text)]
        return any(
            isinstance(c, dict) and c.get("choices") and c["choices"][0]["finish_reason"]
            for c in chunks
        )

    def terminated(self, text: str) -> bool:
        return any(data == "[DONE]" for _, data in sse_events(text))

    def error(self, body: Any) -> dict[str, Any]:
        assert set(body) == {"error"}
        error: dict[str, Any] = body["error"]
        assert {"message", "type", "param", "code"} <= set(error)
        return error

    def stream_error(self, text: str) -> dict[str, Any] | None:
        for _, data in sse_events(text):
            chunk = parsed(data)
            if isinstance(chunk, dict) and "error" in chunk:
                return self.error(chunk)
        return None


class AnthropicWire:
    """Requests and stream readings for ``/v1/messages``."""

    name = "anthropic"
    path = "/messages"

    def body(self, *, stream: bool = False, messages: list[dict[str, Any]] | None = None) -> Any:
        messages = messages or [{"role": "user", "content": "two words"}]
        body = {"model": "claude-x", "max_tokens": 64, "messages": messages}
        return body | ({"stream": True} if stream else {})

    def texts(self, text: str) -> list[str]:
        return [
            event["delta"]["text"]
            for name, data in sse_events(text)
            if name == "content_block_delta"
            and (event := parsed(data)) is not None
            and event["delta"]["type"] == "text_delta"
        ]

    def finished(self, text: str) -> bool:
        return any(name == "message_delta" for name, _ in sse_events(text))

    def terminated(self, text: str) -> bool:
        return any(name == "message_stop" for name, _ in sse_events(text))

    def error(self, body: Any) -> dict[str, Any]:
        assert body["type"] == "error"
        error: dict[str, Any] = body["error"]
        assert set(error) == {"type", "message"}
        return error

    def stream_error(self, text: str) -> dict[str, Any] | None:
        for name, data in sse_events(text):
            if name == "error":
                return self.error(json.loads(data))
        return None


Wire = OpenAIWire | AnthropicWire


@pytest.fixture(params=[OpenAIWire(), AnthropicWire()], ids=lambda wire: wire.name)
def wire(request: pytest.FixtureRequest) -> Wire:
    chosen: Wire = request.param
    return chosen


async def send(
    session: aiohttp.ClientSession,
    url: str,
    body: Any,
    behavior: str | None = None,
) -> tuple[int, dict[str, str], str]:
    headers = {BEHAVIOR_HEADER: behavior} if behavior else {}
    async with session.post(url, json=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.text()


async def read_until_broken(response: aiohttp.ClientResponse) -> tuple[str, BaseException | None]:
    """The body read so far, and the error that ended it (``None`` for a clean end)."""
    received = b""
    try:
        async for piece in response.content.iter_any():
            received += piece
    except aiohttp.ClientPayloadError as exc:
        return received.decode(), exc
    return received.decode(), None


async def read_until_silent(response: aiohttp.ClientResponse) -> str:
    """The body read until the server stops sending for SILENCE seconds (a stall)."""
    received = b""
    while True:
        try:
            async with asyncio.timeout(SILENCE):
                piece = await response.content.readany()
        except TimeoutError:
            return received.decode()
        assert piece, "the body ended instead of stalling"
        received += piece


# --- wire formats ------------------------------------------------------------------------------


def recorded(wire_dir: Path, case: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((wire_dir / "anthropic" / f"{case}.yaml").read_text())
    return loaded


async def test_anthropic_message_has_the_recorded_shape(
    server: FakeProviderServer, session: aiohttp.ClientSession, wire_dir: Path
) -> None:
    """A non-streamed /v1/messages answer has the recorded keys, a text block, end_turn and
    input/output token usage."""
    status, headers, text = await send(
        session, f"{server.base_url}/messages", AnthropicWire().body()
    )
    answer = json.loads(text)
    real = json.loads(recorded(wire_dir, "messages")["response"]["body"])
    assert status == 200
    assert set(answer) == set(real)
    assert (answer["type"], answer["role"], answer["model"]) == ("message", "assistant", "claude-x")
    assert answer["content"] == [{"type": "text", "text": server.reply}]
    assert answer["stop_reason"] == "end_turn"
    assert answer["usage"] == {"input_tokens": 2, "output_tokens": len(server.reply.split())}
    assert headers["request-id"].startswith("req_")


async def test_anthropic_stream_has_the_recorded_event_sequence(
    server: FakeProviderServer, session: aiohttp.ClientSession, wire_dir: Path
) -> None:
    """A streamed /v1/messages answer sends the recorded event sequence (message_start,
    content_block_start, ping, text deltas, content_block_stop, message_delta with stop reason
    and usage, message_stop), each event's data typed by its event name."""
    url = f"{server.base_url}/messages"
    _, headers, text = await send(session, url, AnthropicWire().body(stream=True))
    events = sse_events(text)
    real = sse_events(recorded(wire_dir, "messages_stream")["response"]["body"])

    def squeezed(names: list[str | None]) -> list[str | None]:
        return [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]]

    assert squeezed([name for name, _ in events]) == squeezed([name for name, _ in real])
    assert all(json.loads(data)["type"] == name for name, data in events)
    assert "".join(AnthropicWire().texts(text)) == server.reply
    delta = json.loads(events[-2][1])
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == len(server.reply.split())
    assert headers["Content-Type"].startswith("text/event-stream")


async def test_anthropic_tool_use_streams_input_json_deltas(
    server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """Scripted tool calls stream as a tool_use block whose input arrives as input_json_delta
    fragments, ending with stop_reason tool_use; the whole answer carries the parsed input."""
    call = ToolCall(id="toolu_1", name="add", arguments='{"a": 1, "b": 2}')
    server.enqueue(Behavior.ok(tool_calls=[call]), Behavior.ok(tool_calls=[call]))
    url = f"{server.base_url}/messages"
    _, _, text = await send(session, url, AnthropicWire().body(stream=True))
    events = [json.loads(data) for _, data in sse_events(text)]
    start = next(e for e in events if e["type"] == "content_block_start")
    assert start["content_block"] == {
        "type": "tool_use",
        "id": "toolu_1",
        "name": "add",
        "input": {},
    }
    fragments = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert "".join(fragments) == call.arguments
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    _, _, whole = await send(session, url, AnthropicWire().body())
    assert json.loads(whole)["content"] == [
        {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 1, "b": 2}}
    ]


async def test_models_answer_in_the_asking_providers_shape(
    server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """GET /v1/models lists OpenAI-style, or Anthropic-style (one page) when the request
    carries anthropic-version."""
    async with session.get(f"{server.base_url}/models") as response:
        openai_list = await response.json()
    headers = {"anthropic-version": "2023-06-01"}
    async with session.get(f"{server.base_url}/models", headers=headers) as response:
        anthropic_list = await response.json()
    assert openai_list["object"] == "list"
    assert [m["id"] for m in openai_list["data"]] == list(server.models)
    assert [m["type"] for m in anthropic_list["data"]] == ["model"] * len(server.models)
    assert (anthropic_list["has_more"], anthropic_list["last_id"]) == (False, server.models[-1])


def test_fake_openai_server_is_the_provider_server() -> None:
    """The old name still works: FakeOpenAIServer is FakeProviderServer."""
    assert FakeOpenAIServer is FakeProviderServer


# --- logical backends and counting -------------------------------------------------------------


async def test_url_for_separates_backends_and_counts_their_attempts(
    server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """Backends on one server are told apart by url_for's path prefix: counts holds their
    model calls (health checks and listings are recorded but not counted) and requests_for
    their requests; the root URLs belong to backend None."""
    assert server.url_for("primary") == f"{server.root_url}/b/primary/v1"
    body = OpenAIWire().body()
    for _ in range(2):
        await send(session, f"{server.url_for('primary')}/chat/completions", body)
    await send(session, f"{server.url_for('secondary')}/messages", AnthropicWire().body())
    await send(session, f"{server.base_url}/chat/completions", body)
    async with session.get(f"{server.url_for('primary')}/models") as response:
        assert response.status == 200
    async with session.get(f"{server.root_url_for('primary')}/health") as response:
        assert response.status == 200
    assert server.counts == {"primary": 2, "secondary": 1, None: 1}
    assert [r.path for r in server.requests_for("primary")] == [
        "/b/primary/v1/chat/completions",
        "/b/primary/v1/chat/completions",
        "/b/primary/v1/models",
        "/b/primary/health",
    ]
    assert [r.backend for r in server.requests_for(None)] == [None]


def test_url_for_rejects_names_that_are_not_one_path_segment() -> None:
    """A backend name must fit in one URL path segment."""
    fake = FakeProviderServer()  # never started: names are checked before the port is
    for bad in ("", "a/b", "a b"):
        with pytest.raises(ValueError, match="backend name"):
            fake.url_for(bad)


async def test_script_queues_named_entries_per_backend(
    server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """script() queues catalogue entries by name for one backend's next model calls, in
    order; other backends keep the default reply; an unknown name fails at once."""
    server.script("error_429", "error_500", "ok", backend="primary")
    body = OpenAIWire().body()
    statuses = [
        (await send(session, f"{server.url_for('primary')}/chat/completions", body))[0]
        for _ in range(4)
    ]
    other = await send(session, f"{server.url_for('other')}/chat/completions", body)
    assert statuses == [429, 500, 200, 200]
    assert other[0] == 200
    assert [r.behavior for r in server.requests_for("primary")] == [
        "error_429",
        "error_500",
        "ok",
        None,
    ]
    with pytest.raises(ValueError, match="not in the catalogue"):
        server.script("no_such_fault")


async def test_reset_forgets_requests_counts_queues_and_state(
    server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """After reset(), the server is as new: nothing recorded or queued, stateful entries
    start over."""
    url = f"{server.base_url}/chat/completions"
    body = OpenAIWire().body()
    assert (await send(session, url, body, "error_500_once"))[0] == 500
    server.enqueue("queued")
    server.reset()
    assert (server.requests, server.counts, server.pending) == ([], {}, 0)
    assert (await send(session, url, body, "error_500_once"))[0] == 500


@pytest.mark.parametrize("name", sorted(builtin_catalogue()))
async def test_every_catalogue_entry_is_selectable_by_header_and_by_model(
    name: str, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """Each catalogue entry serves a request that names it in the x-fake-behavior header or
    as its model (recorded as the behaviour that served it)."""
    url = f"{server.base_url}/chat/completions"
    by_header = OpenAIWire().body()
    by_model = by_header | {"model": name}
    tasks = [
        asyncio.create_task(send(session, url, by_header, name)),
        asyncio.create_task(send(session, url, by_model)),
    ]
    async with asyncio.timeout(5):
        await server.wait_for_requests(2)
    for task in tasks:  # some entries never answer; what they do is tested below
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert [r.behavior for r in server.requests] == [name, name]


def test_catalogue_covers_every_behaviour_kind() -> None:
    """Every kind except the two that need arguments (ERROR, RAW) has a catalogue entry of
    the same name."""
    catalogue = FakeProviderServer().catalogue
    named = set(BehaviorKind) - {BehaviorKind.ERROR, BehaviorKind.RAW}
    assert named <= set(catalogue)
    assert all(catalogue[kind.value].kind is kind for kind in named)


# --- rate limits and server errors -------------------------------------------------------------


async def test_429_with_retry_after_seconds(
    wire: Wire, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """error_429 is HTTP 429 with Retry-After: 1 and the provider's rate-limit error body."""
    status, headers, text = await send(
        session, server.base_url + wire.path, wire.body(), "error_429"
    )
    error = wire.error(json.loads(text))
    assert (status, headers["Retry-After"]) == (429, "1")
    if wire.name == "openai":
        assert error["code"] == "rate_limit_exceeded"
    else:
        assert error["type"] == "rate_limit_error"


async def test_429_with_retry_after_as_http_date(
    wire: Wire, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """error_429_date sends Retry-After as an HTTP date about 30 s ahead (whole seconds)."""
    before = time.time()
    status, headers, _ = await send(
        session, server.base_url + wire.path, wire.body(), "error_429_date"
    )
    when = email.utils.parsedate_to_datetime(headers["Retry-After"]).timestamp()
    assert status == 429
    assert before + 28 <= when <= time.time() + 30


async def test_429_without_retry_after(
    wire: Wire, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """error_429_no_retry_after is a 429 with no Retry-After header at all."""
    url = server.base_url + wire.path
    status, headers, _ = await send(session, url, wire.body(), "error_429_no_retry_after")
    assert status == 429
    assert "Retry-After" not in headers


async def test_500_once_then_ok_per_backend_and_name(
    wire: Wire, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """error_500_once answers 500 to the first model call of each logical backend, then
    normal answers; header and model selection share the state of the name."""
    body = wire.body()
    primary = server.url_for("primary") + wire.path
    first = await send(session, primary, body, "error_500_once")
    second = await send(session, primary, body | {"model": "error_500_once"})
    other = await send(session, server.url_for("other") + wire.path, body, "error_500_once")
    assert [first[0], second[0], other[0]] == [500, 200, 500]
    assert wire.error(json.loads(first[2]))["type"] in ("server_error", "api_error")


async def test_503_always(
    wire: Wire, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """error_503 answers 503 to every request."""
    url = server.base_url + wire.path
    statuses = [(await send(session, url, wire.body(), "error_503"))[0] for _ in range(3)]
    assert statuses == [503, 503, 503]


async def test_529_is_anthropics_overloaded_error(
    server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """error_529 on /v1/messages is Anthropic's overloaded_error body."""
    url = f"{server.base_url}/messages"
    status, headers, text = await send(session, url, AnthropicWire().body(), "error_529")
    assert status == 529
    assert json.loads(text) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": headers["request-id"],
    }


async def test_flapping_by_count_then_healthy_health_checks_do_not_count(
    server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """flapping answers 503 to the first 3 model calls, then 200; a health check or model
    listing in between sees the current state without using up a failure."""
    url = f"{server.url_for('primary')}/chat/completions"
    headers = {BEHAVIOR_HEADER: "flapping"}
    statuses = []
    for _ in range(5):
        statuses.append((await send(session, url, OpenAIWire().body(), "flapping"))[0])
        if len(statuses) == 1:
            async with session.get(f"{server.url_for('primary')}/models", headers=headers) as r:
                assert r.status == 503
    assert statuses == [503, 503, 503, 200, 200]
    assert server.counts["primary"] == 5


async def test_flapping_by_time_window_uses_the_injected_clock(
    session: aiohttp.ClientSession,
) -> None:
    """A flapping entry with a time window fails until that many seconds (on the server's
    clock) have passed since its first model call, then answers."""
    now = [100.0]
    window = {"outage": Behavior.flapping(seconds=10.0)}
    async with FakeProviderServer(behaviors=window, clock=lambda: now[0]) as fake:
        url = f"{fake.base_url}/chat/completions"
        statuses = []
        for moment in (100.0, 105.0, 109.9, 110.0, 500.0):
            now[0] = moment
            statuses.append((await send(session, url, OpenAIWire().body(), "outage"))[0])
    assert statuses == [503, 503, 503, 200, 200]


# --- connection faults -------------------------------------------------------------------------


async def test_connection_reset_drops_without_a_response(
    wire: Wire, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """connection_reset closes the connection without a status line; the attempt counts."""
    with pytest.raises(aiohttp.ClientConnectionError):
        await send(session, server.base_url + wire.path, wire.body(), "connection_reset")
    assert server.counts[None] == 1


async def test_never_answer_is_seen_as_a_client_timeout(
    server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """never_answer accepts the request and sends nothing: the client's read timeout fires."""
    timeout = aiohttp.ClientTimeout(sock_read=SILENCE)
    url = f"{server.base_url}/chat/completions"
    headers = {BEHAVIOR_HEADER: "never_answer"}
    with pytest.raises(TimeoutError):
        async with session.post(url, json=OpenAIWire().body(), headers=headers, timeout=timeout):
            pass
    assert server.in_flight == 1  # still held, until the server stops


async def test_stop_is_prompt_with_held_stalled_and_slow_requests(
    session: aiohttp.ClientSession,
) -> None:
    """With a never-answered request, a stalled stream and a 60 s first-token delay open,
    stop() returns at once (well inside its 60 s shutdown timeout), every handler has ended
    and every client sees its connection closed."""
    slow = {"slow_first_token": Behavior.slow_first_token(60.0)}
    fake = FakeProviderServer(behaviors=slow, shutdown_timeout=60.0)
    await fake.start()
    url = f"{fake.base_url}/messages"
    body = AnthropicWire().body(stream=True)

    async def attempt(name: str) -> None:
        async with session.post(url, json=body, headers={BEHAVIOR_HEADER: name}) as response:
            await response.read()

    tasks = [
        asyncio.create_task(attempt(name))
        for name in ("never_answer", "stream_stall", "slow_first_token")
    ]
    async with asyncio.timeout(5):
        await fake.wait_for_requests(3)
    async with asyncio.timeout(2):
        await fake.stop()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert fake.in_flight == 0
    assert all(isinstance(result, aiohttp.ClientError) for result in results), results


# --- stream faults -------------------------------------------------------------------------


async def test_slow_first_token_sends_headers_then_waits(
    wire: Wire, session: aiohttp.ClientSession
) -> None:
    """slow_first_token sends the status line at once and the first chunk only after the
    configured delay: with a long delay the client's read times out after a 200; with a
    short one the complete answer follows."""
    behaviors = {
        "slow_first_token": Behavior.slow_first_token(60.0),
        "bit_slow": Behavior.slow_first_token(0.01),
    }
    async with FakeProviderServer(behaviors=behaviors, shutdown_timeout=60.0) as fake:
        url = fake.base_url + wire.path
        headers = {BEHAVIOR_HEADER: "slow_first_token"}
        async with session.post(url, json=wire.body(stream=True), headers=headers) as response:
            assert response.status == 200
            assert await read_until_silent(response) == ""
        _, _, text = await send(session, url, wire.body(stream=True), "bit_slow")
    assert "".join(wire.texts(text)) == fake.reply
    assert wire.terminated(text)


async def test_cut_stream_drops_the_connection_after_k_chunks(
    wire: Wire, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """A cut stream delivers K content chunks and then breaks the connection, before any
    finish."""
    server.enqueue(Behavior.cut_stream(after_chunks=2))
    url = server.base_url + wire.path
    async with session.post(url, json=wire.body(stream=True)) as response:
        text, error = await read_until_broken(response)
    assert isinstance(error, aiohttp.ClientPayloadError)
    assert wire.texts(text) == [server.reply[:5], server.reply[5:10]]
    assert not wire.finished(text)


async def test_stream_stall_is_detected_by_a_client_timeout(
    wire: Wire, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """A stalled stream delivers K chunks, then the connection stays open and silent: only a
    client-side timeout notices. stop() releases it."""
    server.enqueue(Behavior.stream_stall(after_chunks=3))
    async with session.post(server.base_url + wire.path, json=wire.body(stream=True)) as response:
        text = await read_until_silent(response)
        assert wire.texts(text) == [server.reply[:5], server.reply[5:10], server.reply[10:15]]
        assert not wire.finished(text)
        assert server.in_flight == 1
        async with asyncio.timeout(2):
            await server.stop()
    assert server.in_flight == 0


async def test_malformed_chunk_amid_valid_ones_then_a_normal_finish(
    wire: Wire, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """malformed_chunk sends one frame that is not JSON after K chunks; the rest of the
    answer, the finish and the terminator follow as normal."""
    server.enqueue(Behavior.malformed_chunk(after_chunks=1))
    _, _, text = await send(session, server.base_url + wire.path, wire.body(stream=True))
    datas = [data for _, data in sse_events(text) if data != "[DONE]"]
    bad = [index for index, data in enumerate(datas) if parsed(data) is None]
    assert len(bad) == 1
    assert "".join(wire.texts(text)) == server.reply
    assert wire.finished(text)
    assert wire.terminated(text)


async def test_missing_done_ends_after_the_finish(
    wire: Wire, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """missing_done sends the whole answer and its finish, but not the terminator
    ([DONE] for OpenAI, message_stop for Anthropic), and ends the body cleanly."""
    url = server.base_url + wire.path
    async with session.post(
        url, json=wire.body(stream=True), headers={BEHAVIOR_HEADER: "missing_done"}
    ) as response:
        text, error = await read_until_broken(response)
    assert error is None
    assert "".join(wire.texts(text)) == server.reply
    assert wire.finished(text)
    assert not wire.terminated(text)


async def test_stream_error_event_mid_answer(
    wire: Wire, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """stream_error sends K chunks and then the provider's mid-stream error (Anthropic
    event: error with overloaded_error; OpenAI a data frame with an error object) and ends;
    a non-streamed request gets HTTP 529 instead."""
    url = server.base_url + wire.path
    _, _, text = await send(session, url, wire.body(stream=True), "stream_error")
    error = wire.stream_error(text)
    assert error is not None
    assert error["type"] == ("overloaded_error" if wire.name == "anthropic" else "server_error")
    assert wire.texts(text) == [server.reply[:5]]
    assert not wire.finished(text)
    assert (await send(session, url, wire.body(), "stream_error"))[0] == 529


# --- request-dependent errors ------------------------------------------------------------------


async def test_context_length_error_is_the_providers_real_body(
    wire: Wire, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """context_length is a 400 with OpenAI's code context_length_exceeded, or Anthropic's
    invalid_request_error "prompt is too long"."""
    status, _, text = await send(
        session, server.base_url + wire.path, wire.body(), "context_length"
    )
    error = wire.error(json.loads(text))
    assert status == 400
    assert error["type"] == "invalid_request_error"
    if wire.name == "openai":
        assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    else:
        assert error["message"].startswith("prompt is too long: ")


async def test_content_filter_is_a_finish_reason_like_the_real_apis(
    wire: Wire, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """content_filter answers HTTP 200 with no text and finish_reason content_filter
    (OpenAI) or stop_reason refusal (Anthropic), streamed or not."""
    url = server.base_url + wire.path
    status, _, text = await send(session, url, wire.body(), "content_filter")
    answer = json.loads(text)
    _, _, streamed = await send(session, url, wire.body(stream=True), "content_filter")
    assert status == 200
    if wire.name == "openai":
        assert answer["choices"][0]["finish_reason"] == "content_filter"
        assert '"finish_reason": "content_filter"' in streamed
    else:
        assert (answer["stop_reason"], answer["content"]) == ("refusal", [])
        assert '"stop_reason": "refusal"' in streamed
    assert "".join(wire.texts(streamed)) == ""


async def test_content_filter_error_is_the_providers_real_400(
    wire: Wire, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """content_filter_error is a 400: Azure OpenAI's code content_filter with its
    innererror, or Anthropic's "Output blocked by content filtering policy"."""
    url = server.base_url + wire.path
    status, _, text = await send(session, url, wire.body(), "content_filter_error")
    error = wire.error(json.loads(text))
    assert status == 400
    if wire.name == "openai":
        assert error["code"] == "content_filter"
        assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    else:
        assert error["message"] == "Output blocked by content filtering policy"


async def test_rejects_prefill_only_when_the_last_message_is_the_assistants(
    wire: Wire, server: FakeProviderServer, session: aiohttp.ClientSession
) -> None:
    """rejects_prefill answers 400 invalid_request_error (assistant prefill not supported)
    to a conversation ending with an assistant message, and normally to any other."""
    url = server.base_url + wire.path
    prefill = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hel"}]
    rejected = await send(session, url, wire.body(messages=prefill), "rejects_prefill")
    accepted = await send(session, url, wire.body(), "rejects_prefill")
    error = wire.error(json.loads(rejected[2]))
    assert (rejected[0], accepted[0]) == (400, 200)
    assert error["type"] == "invalid_request_error"
    assert PREFILL_MESSAGE in error["message"]


# --- through the SDK's OpenAI backend ----------------------------------------------------------


BackendFactory = Callable[..., OpenAIBackend]
HI = ChatRequest(messages=[ChatMessage.user("hi")])


@pytest.fixture
def make_backend(session: aiohttp.ClientSession) -> BackendFactory:
    def build(**overrides: Any) -> OpenAIBackend:
        options: dict[str, Any] = {
            "name": "oa",
            "type": "openai",
            "api_key": "sk-test-0123456789",
            "model_name": "gpt-test",
            "timeout_seconds": 10.0,
        } | overrides
        return OpenAIBackend(LlmBackendConfig(**options), session_factory=lambda: session)

    return build


async def collect(backend: OpenAIBackend, request: ChatRequest = HI) -> list[Any]:
    return [event async for event in backend.stream(request)]


async def test_sdk_maps_429_with_retry_after_seconds_and_date(
    server: FakeProviderServer, make_backend: BackendFactory
) -> None:
    """OpenAIBackend turns error_429 into RateLimitedError(retry_after=1) and error_429_date
    into one whose retry_after comes from the HTTP date; without the header it is None."""
    waits = []
    for name in ("error_429", "error_429_date", "error_429_no_retry_after"):
        with pytest.raises(RateLimitedError) as caught:
            await make_backend(base_url=server.base_url, model_name=name).chat(HI)
        waits.append(caught.value.retry_after)
    assert waits[0] == 1.0
    assert waits[1] is not None
    assert 27 <= waits[1] <= 30
    assert waits[2] is None


async def test_sdk_maps_reset_to_unavailable_and_counts_the_attempt(
    server: FakeProviderServer, make_backend: BackendFactory
) -> None:
    """A connection reset raises BackendUnavailableError; the server counted one attempt."""
    backend = make_backend(base_url=server.url_for("primary"), model_name="connection_reset")
    with pytest.raises(BackendUnavailableError):
        await backend.chat(HI)
    assert server.counts["primary"] == 1


async def test_sdk_maps_cut_stream_to_stream_interrupted(
    server: FakeProviderServer, make_backend: BackendFactory
) -> None:
    """A stream cut after two chunks raises StreamInterruptedError with their text."""
    backend = make_backend(base_url=server.base_url, model_name="cut_stream")
    server.register("cut_stream", Behavior.cut_stream(after_chunks=2))
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(backend)
    assert caught.value.partial_text == server.reply[:10]


async def test_sdk_times_out_stalled_and_slow_streams(
    server: FakeProviderServer, make_backend: BackendFactory
) -> None:
    """A stall after content is a StreamInterruptedError caused by a timeout; a first token
    that never comes is a BackendTimeoutError. Both are bounded by the backend's timeout."""
    server.register("slow_first_token", Behavior.slow_first_token(60.0))
    stalled = make_backend(
        base_url=server.base_url, model_name="stream_stall", timeout_seconds=SILENCE
    )
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(stalled)
    assert isinstance(caught.value.__cause__, BackendTimeoutError)
    assert caught.value.partial_text == server.reply[:5]
    slow = make_backend(
        base_url=server.base_url, model_name="slow_first_token", timeout_seconds=SILENCE
    )
    with pytest.raises(BackendTimeoutError):
        await collect(slow)


async def test_sdk_maps_request_dependent_errors(
    server: FakeProviderServer, make_backend: BackendFactory
) -> None:
    """context_length -> ContextLengthExceededError, content_filter_error ->
    ContentFilteredError, a prefill to rejects_prefill -> InvalidRequestError, and a
    content_filter answer with no content -> ContentFilteredError (code content_filter)."""
    url = server.base_url
    with pytest.raises(ContextLengthExceededError):
        await make_backend(base_url=url, model_name="context_length").chat(HI)
    with pytest.raises(ContentFilteredError):
        await make_backend(base_url=url, model_name="content_filter_error").chat(HI)
    prefill = ChatRequest(messages=[ChatMessage.user("hi"), ChatMessage.assistant("Hel")])
    refuses = make_backend(base_url=url, model_name="rejects_prefill")
    with pytest.raises(InvalidRequestError, match="prefill"):
        await refuses.chat(prefill)
    assert (await refuses.chat(HI)).content == server.reply
    with pytest.raises(ContentFilteredError) as withheld:
        await make_backend(base_url=url, model_name="content_filter").chat(HI)
    assert withheld.value.code == "content_filter"


async def test_sdk_sees_500_once_then_ok_and_counts_per_backend(
    server: FakeProviderServer, make_backend: BackendFactory
) -> None:
    """Two backends on one server: the primary's first call fails with a 500 and its second
    succeeds; the secondary is untouched; counts tell the attempts apart."""
    primary = make_backend(
        name="p", base_url=server.url_for("primary"), model_name="error_500_once"
    )
    secondary = make_backend(name="s", base_url=server.url_for("secondary"))
    with pytest.raises(BackendUnavailableError) as caught:
        await primary.chat(HI)
    assert caught.value.status == 500
    assert (await primary.chat(HI)).content == server.reply
    assert (await secondary.chat(HI)).content == server.reply
    assert server.counts == {"primary": 2, "secondary": 1}
