"""AnthropicBackend: recorded-interaction conformance, streaming robustness, request encoding
and error mapping."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from llmbackend.backends.anthropic import AnthropicBackend
from llmbackend.errors import (
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
    ContentFilteredError,
    ContextLengthExceededError,
    InvalidRequestError,
    MalformedResponseError,
    ModelNotFoundError,
    NotSupportedError,
    RateLimitedError,
    StreamInterruptedError,
)
from llmbackend.models import (
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    FinishEvent,
    FinishReason,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    UsageEvent,
)
from llmbackend.settings import LlmBackendConfig
from llmbackend.testing import fold_stream
from llmbackend.testing._replay import (
    ReplayServer,
    ScriptedReply,
    awkward_sse,
    json_reply,
    load_wire_fixture,
    sse_body,
    sse_reply,
)

API_KEY = "sk-ant-test-SECRET-0123456789"
HI = ChatRequest(messages=[ChatMessage.user("hi")])
#: Every recording in the shared folder, globbed at collection so new files become cases
#: (the folder is the one tests/conftest.py's ``wire_dir`` names; a test checks they agree).
CASES = sorted(
    path.stem
    for path in (
        Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "wire" / "anthropic"
    ).glob("*.yaml")
) or ["<no recordings found>"]
#: The recorded HTTP status of each error case -> the SDK error it must become.
ERROR_TYPES: dict[int, type[BackendError]] = {400: InvalidRequestError}


# --- the loopback server and the backend under test ----------------------------------------


def message_answer(text: str = "Hello there.", **extra: Any) -> dict[str, Any]:
    """A Messages API answer with one text block."""
    answer: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test-1",
        "content": [{"type": "text", "text": text}] if text else [],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 7, "output_tokens": 3},
    }
    answer.update(extra)
    return answer


@pytest.fixture
def server(replay_server: ReplayServer) -> ReplayServer:
    """The loopback server, answering a plain text message to whatever is not scripted."""
    replay_server.default = json_reply(message_answer())
    return replay_server


BackendFactory = Callable[..., AnthropicBackend]


@pytest.fixture
def make_backend(session: aiohttp.ClientSession, server: ReplayServer) -> BackendFactory:
    def build(**overrides: Any) -> AnthropicBackend:
        options: dict[str, Any] = {
            "name": "claude",
            "type": "anthropic",
            "api_key": API_KEY,
            "model_name": "claude-test-1",
            "base_url": server.url,
            "timeout_seconds": 10.0,
        }
        options.update(overrides)
        return AnthropicBackend(LlmBackendConfig(**options), session_factory=lambda: session)

    return build


# --- reading the recordings independently of the backend -------------------------------------


def recordings(wire_dir: Path) -> list[Path]:
    return sorted((wire_dir / "anthropic").glob("*.yaml"))


def text_of(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "".join(block["text"] for block in content if block["type"] == "text")


def request_from_recording(body: dict[str, Any]) -> ChatRequest:
    """The ChatRequest equivalent to a recorded Messages API body (text turns, tools)."""
    messages = [ChatMessage.system(body["system"])] if "system" in body else []
    messages += [
        ChatMessage(role=m["role"], content=text_of(m["content"])) for m in body["messages"]
    ]
    tools = [
        ToolDefinition(
            name=t["name"], description=t.get("description", ""), parameters=t["input_schema"]
        )
        for t in body.get("tools", [])
    ]
    return ChatRequest(
        messages=messages,
        model=body["model"],
        temperature=body.get("temperature"),
        max_tokens=body["max_tokens"],
        stop_sequences=body.get("stop_sequences") or (),
        tools=tools,
    )


def as_blocks(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with string content written as one text block (the two forms are equal)."""
    return [
        m | {"content": [{"type": "text", "text": m["content"]}]}
        if isinstance(m["content"], str)
        else m
        for m in messages
    ]


def assert_essential_fields(sent: dict[str, Any], recorded: dict[str, Any]) -> None:
    """The body we built carries the recorded request's meaning."""
    for key in ("model", "max_tokens", "temperature", "system", "stop_sequences"):
        assert sent.get(key) == recorded.get(key), key
    assert sent.get("stream", False) == recorded.get("stream", False)
    assert as_blocks(sent["messages"]) == as_blocks(recorded["messages"])
    tools = [t | {"description": t.get("description", "")} for t in recorded.get("tools", [])]
    assert [t | {"description": t.get("description", "")} for t in sent.get("tools", [])] == tools


def sdk_only_query_removed(url_path: str) -> str:
    # The Anthropic Python SDK's beta namespace adds ?beta=true; it is a client-side marker,
    # not part of the API request, so our request has the path without it.
    return url_path.removesuffix("?beta=true")


class Expected(NamedTuple):
    text: str
    tool_calls: list[tuple[str, str, Any]]  # (id, name, parsed input)
    raw_reason: str | None
    model: str
    usage: tuple[int, int, int, int]  # prompt, completion, total, cached


def usage_tuple(raw: dict[str, Any]) -> tuple[int, int, int, int]:
    read = raw.get("cache_read_input_tokens") or 0
    prompt = raw["input_tokens"] + read + (raw.get("cache_creation_input_tokens") or 0)
    return prompt, raw["output_tokens"], prompt + raw["output_tokens"], read


def expected_from_message(body: str) -> Expected:
    """What a recorded non-streamed answer says, read straight from its JSON."""
    answer = json.loads(body)
    blocks = answer["content"]
    return Expected(
        "".join(b["text"] for b in blocks if b["type"] == "text"),
        [(b["id"], b["name"], b["input"]) for b in blocks if b["type"] == "tool_use"],
        answer["stop_reason"],
        answer["model"],
        usage_tuple(answer["usage"]),
    )


def sse_payloads(body: str) -> list[dict[str, Any]]:
    frames = [frame for frame in body.replace("\r\n", "\n").split("\n\n") if frame.strip()]
    payloads = []
    for frame in frames:
        data = [line[len("data:") :] for line in frame.split("\n") if line.startswith("data:")]
        payloads.append(json.loads("\n".join(data)))
    return payloads


def expected_from_events(body: str) -> Expected:
    """What a recorded stream says, folded from its events by a deliberately naive reader."""
    text, reason, model, usage = "", None, "", {}
    blocks: dict[int, list[Any]] = {}
    for event in sse_payloads(body):
        kind = event["type"]
        if kind == "message_start":
            model = event["message"]["model"]
            usage = dict(event["message"]["usage"])
        elif kind == "content_block_start" and event["content_block"]["type"] == "tool_use":
            block = event["content_block"]
            blocks[event["index"]] = [block["id"], block["name"], "", block["input"]]
        elif kind == "content_block_delta":
            delta = event["delta"]
            if delta["type"] == "text_delta":
                text += delta["text"]
            elif delta["type"] == "input_json_delta":
                blocks[event["index"]][2] += delta["partial_json"]
        elif kind == "message_delta":
            reason = event["delta"]["stop_reason"]
            usage.update(event["usage"])
    calls = [(b[0], b[1], json.loads(b[2]) if b[2] else b[3]) for _, b in sorted(blocks.items())]
    return Expected(text, calls, reason, model, usage_tuple(usage))


def assemble(events: list[StreamEvent]) -> Expected:
    """Fold stream events the way a caller would (tool-call fragments joined by index)."""
    assert any(isinstance(e, UsageEvent) for e in events), "Anthropic streams report usage"
    r = fold_stream(events)
    return Expected(
        r.content,
        [(c.id, c.name, json.loads(c.arguments)) for c in r.tool_calls],
        r.raw_finish_reason,
        r.model,
        (r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cached_prompt_tokens),
    )


async def collect(backend: AnthropicBackend, request: ChatRequest = HI) -> list[StreamEvent]:
    return [event async for event in backend.stream(request)]


#: Put before every event of a recorded stream: an extra ``ping`` event and a keep-alive.
PING_AND_KEEPALIVE = 'event: ping\ndata: {"type": "ping"}\n\n: keep-alive\n\n'


def sse(*events: dict[str, Any]) -> bytes:
    """An Anthropic SSE body: ``event: <type>`` plus the JSON data of each event."""
    return sse_body(*events, event_field="type")


def start(model: str = "claude-test-1", **usage: int) -> dict[str, Any]:
    counts = {"input_tokens": 5, "output_tokens": 1} | usage
    message = {"id": "m", "type": "message", "role": "assistant", "model": model, "content": []}
    return {"type": "message_start", "message": message | {"usage": counts}}


def text_block(index: int, *pieces: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "text", "text": ""},
        },
        *(
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "text_delta", "text": p},
            }
            for p in pieces
        ),
        {"type": "content_block_stop", "index": index},
    ]


def finish(reason: str = "end_turn", output_tokens: int = 9) -> list[dict[str, Any]]:
    return [
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
        {"type": "message_stop"},
    ]


def error_event(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_body(kind: str, message: str) -> dict[str, Any]:
    return error_event(kind, message) | {"request_id": "req_1"}


# --- (a) conformance with every recorded interaction -------------------------------------------


def test_every_recording_is_a_case(wire_dir: Path) -> None:
    """The conformance cases are exactly the recordings in the shared anthropic folder."""
    assert [path.stem for path in recordings(wire_dir)] == CASES
    assert len(CASES) >= 6


@pytest.mark.parametrize("case", CASES)
async def test_recorded_interaction_conformance(
    case: str,
    wire_dir: Path,
    server: ReplayServer,
    session: aiohttp.ClientSession,
    make_backend: BackendFactory,
) -> None:
    """Replaying each recorded Anthropic answer yields what the recording says (text, tool calls,
    stop reason, tokens, or the exact error), and our request has the recorded method, path
    and essential body fields. Whole bodies go through aioresponses against the default base
    URL; streams through the loopback server."""
    recording = load_wire_fixture(wire_dir / "anthropic" / f"{case}.yaml")
    recorded_request, recorded_response = recording["request"], recording["response"]
    recorded_body = json.loads(recorded_request["body"])
    request = request_from_recording(recorded_body)
    status = recorded_response["status"]
    path = sdk_only_query_removed(recorded_request["url_path"])
    if recorded_body.get("stream"):
        server.enqueue(sse_reply([recorded_response["body"].encode()]))
        events = await collect(make_backend(model_name=None), request)
        assert assemble(events) == expected_from_events(recorded_response["body"])
        [received] = server.requests
        assert (received.method, received.path) == (recorded_request["method"], path)
        assert received.query == {}
        assert_essential_fields(received.json, recorded_body)
        return
    url = recorded_request["base_url"] + path
    backend = AnthropicBackend(
        LlmBackendConfig(name="claude", type="anthropic", api_key=API_KEY),
        session_factory=lambda: session,
    )
    with aioresponses() as mocked:
        mocked.add(
            url,
            method=recorded_request["method"],
            status=status,
            body=recorded_response["body"],
            content_type="application/json",
        )
        if status >= 400:
            with pytest.raises(BackendError) as caught:
                await backend.chat(request)
            error = json.loads(recorded_response["body"])["error"]
            assert type(caught.value) is ERROR_TYPES[status]
            assert (caught.value.status, caught.value.code) == (status, error["type"])
            assert caught.value.message == error["message"]
        else:
            response = await backend.chat(request)
            expected = expected_from_message(recorded_response["body"])
            assert response.content == expected.text
            calls = [(c.id, c.name, c.parsed_arguments()) for c in response.tool_calls]
            assert calls == expected.tool_calls
            assert (response.raw_finish_reason, response.model) == (
                expected.raw_reason,
                expected.model,
            )
            usage = response.usage
            assert (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens,
                usage.cached_prompt_tokens,
            ) == expected.usage
        assert mocked.requests is not None
        [sent] = mocked.requests[(recorded_request["method"], URL(url))]
    assert_essential_fields(sent.kwargs["json"], recorded_body)
    headers = sent.kwargs["headers"]
    assert headers["x-api-key"] == API_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
async def test_recorded_streams_split_at_awkward_offsets(
    crlf: bool, wire_dir: Path, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Every recorded stream, cut across many TCP writes at awkward offsets with keep-alive
    comments and extra pings mixed in (and CRLF line ends), parses to what it says."""
    bodies = [
        load_wire_fixture(path)["response"]["body"]
        for path in recordings(wire_dir)
        if json.loads(load_wire_fixture(path)["request"]["body"]).get("stream")
    ]
    assert len(bodies) >= 3
    backend = make_backend()
    for body in bodies:
        pieces = awkward_sse(body, crlf=crlf, before="event:", filler=PING_AND_KEEPALIVE)
        assert len(pieces) > 20
        server.enqueue(sse_reply(pieces))
        assert assemble(await collect(backend)) == expected_from_events(body)


async def test_recorded_tool_stream_matches_the_non_streamed_shape(
    wire_dir: Path, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A tool without parameters (input {} and one empty fragment) assembles to the JSON text
    ``{}``, as a non-streamed answer's ``json.dumps(input)`` would be; text stays empty."""
    body = load_wire_fixture(wire_dir / "anthropic" / "messages_tool_use_stream_no_args.yaml")[
        "response"
    ]
    server.enqueue(sse_reply([body["body"].encode()]))
    events = await collect(make_backend())
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert "".join(d.arguments_delta for d in deltas) == "{}"
    assert deltas[0].id is not None
    assert deltas[0].name == "pelican_name_generator"
    assert all(d.index == 0 for d in deltas)
    assert events[-1] == FinishEvent(
        reason=FinishReason.TOOL_CALLS,
        raw_reason="tool_use",
        backend="claude",
        model="claude-haiku-4-5-20251001",
    )


async def test_tool_call_ordinals_skip_text_blocks(
    wire_dir: Path, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Tool-call deltas are indexed by tool-call ordinal (0, 1), not by content-block index
    (1, 2), and carry id and name only on their first fragment."""
    body = load_wire_fixture(wire_dir / "anthropic" / "messages_tool_use_stream.yaml")["response"][
        "body"
    ]
    server.enqueue(sse_reply([body.encode()]))
    deltas = [e for e in await collect(make_backend()) if isinstance(e, ToolCallDelta)]
    assert sorted({d.index for d in deltas}) == [0, 1]
    for ordinal in (0, 1):
        mine = [d for d in deltas if d.index == ordinal]
        assert mine[0].id is not None
        assert mine[0].name is not None
        assert all(d.id is None and d.name is None for d in mine[1:])


# --- (b) streams: interruptions and mid-stream errors ---------------------------------------------


async def test_body_ending_before_message_stop_raises_stream_interrupted(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A stream that ends after message_delta but before message_stop is cut, not finished:
    StreamInterruptedError carries the text delivered so far."""
    server.enqueue(sse_reply([sse(start(), *text_block(0, "Hel", "lo"), finish()[0])]))
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(make_backend())
    assert caught.value.partial_text == "Hello"


async def test_body_ending_before_any_content_is_a_retryable_failure(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A stream with only message_start and pings is an ordinary failed attempt (retryable)."""
    server.enqueue(sse_reply([sse(start(), {"type": "ping"})]))
    with pytest.raises(BackendUnavailableError) as caught:
        await collect(make_backend())
    assert caught.value.retryable


@pytest.mark.parametrize(
    ("kind", "message", "expected", "retryable"),
    [
        ("overloaded_error", "Overloaded", BackendUnavailableError, True),
        ("api_error", "Internal server error", BackendUnavailableError, True),
        ("rate_limit_error", "Slow down", RateLimitedError, True),
        ("invalid_request_error", "prompt is too long: 9 > 8", ContextLengthExceededError, False),
    ],
)
async def test_error_event_before_content_raises_the_mapped_error(
    kind: str,
    message: str,
    expected: type[BackendError],
    retryable: bool,
    server: ReplayServer,
    make_backend: BackendFactory,
) -> None:
    """An ``event: error`` after the 200 status raises the error its type names, with the
    status that type stands for (overloaded_error -> 529, retryable)."""
    server.enqueue(sse_reply([sse(start(), {"type": "ping"}, error_event(kind, message))]))
    with pytest.raises(expected) as caught:
        await collect(make_backend())
    assert type(caught.value) is expected
    assert (caught.value.message, caught.value.code, caught.value.retryable) == (
        message,
        kind,
        retryable,
    )
    if kind == "overloaded_error":
        assert caught.value.status == 529


async def test_error_event_after_content_is_an_interruption(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """An overloaded_error mid-answer raises StreamInterruptedError with the partial text,
    caused by the retryable BackendUnavailableError."""
    body = sse(
        start(),
        *text_block(0, "The answer is")[:2],
        error_event("overloaded_error", "Overloaded"),
    )
    server.enqueue(sse_reply([body]))
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(make_backend())
    assert caught.value.partial_text == "The answer is"
    assert isinstance(caught.value.__cause__, BackendUnavailableError)
    assert caught.value.__cause__.status == 529


@pytest.mark.parametrize(
    "body",
    [
        b"event: message_start\ndata: {not json\n\n",
        b'data: ["a", "list"]\n\n',
        sse(
            {
                "type": "content_block_delta",
                "index": 3,
                "delta": {"type": "text_delta", "text": "x"},
            }
        ),
        sse({"type": "message_start", "message": "nope"}),
        sse(start(), {"type": "content_block_start", "content_block": {"type": "text"}}),
    ],
    ids=["not-json", "not-object", "delta-for-unknown-block", "message-not-object", "no-index"],
)
async def test_malformed_stream_events_raise_malformed_response(
    body: bytes, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Unparsable or wrongly shaped events raise MalformedResponseError, never KeyError."""
    server.enqueue(sse_reply([body]))
    with pytest.raises(MalformedResponseError) as caught:
        await collect(make_backend())
    assert "KeyError" not in str(caught.value)


async def test_stream_usage_includes_cache_tokens_and_final_output(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Streamed usage combines message_start's input and cache counts with message_delta's
    cumulative output count; a usage event follows each of them."""
    body = sse(
        start(input_tokens=10, cache_read_input_tokens=100, cache_creation_input_tokens=5),
        *text_block(0, "ok"),
        *finish("max_tokens", output_tokens=42),
    )
    server.enqueue(sse_reply([body]))
    events = await collect(make_backend())
    usages = [e.usage for e in events if isinstance(e, UsageEvent)]
    assert len(usages) == 2
    final = usages[-1]
    assert (final.prompt_tokens, final.completion_tokens, final.cached_prompt_tokens) == (
        115,
        42,
        100,
    )
    finish_event = events[-1]
    assert isinstance(finish_event, FinishEvent)
    assert (finish_event.reason, finish_event.raw_reason) == (FinishReason.LENGTH, "max_tokens")


async def test_stream_refusal_without_content_raises_content_filtered(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A stream that ends with stop_reason refusal and no content raises ContentFilteredError."""
    server.enqueue(sse_reply([sse(start(), *finish("refusal"))]))
    with pytest.raises(ContentFilteredError) as caught:
        await collect(make_backend())
    assert caught.value.code == "refusal"


# --- (c) hand-written error cases -----------------------------------------------------------------


async def call(backend: AnthropicBackend, operation: str) -> object:
    if operation == "stream":
        return await collect(backend)
    return await backend.chat(HI)


OPERATIONS = pytest.mark.parametrize("operation", ["chat", "stream"])


@OPERATIONS
async def test_529_overloaded_is_retryable_unavailable(
    operation: str, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """HTTP 529 overloaded_error raises a retryable BackendUnavailableError with status 529."""
    server.enqueue(json_reply(error_body("overloaded_error", "Overloaded"), status=529))
    with pytest.raises(BackendUnavailableError) as caught:
        await call(make_backend(), operation)
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (
        529,
        "overloaded_error",
        True,
    )
    assert caught.value.message == "Overloaded"


@OPERATIONS
async def test_429_with_retry_after(
    operation: str, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """HTTP 429 rate_limit_error with ``retry-after: 17`` asks for a 17 s wait, retryable."""
    body = error_body("rate_limit_error", "Number of request tokens has exceeded your limit.")
    server.enqueue(json_reply(body, status=429, headers={"retry-after": "17"}))
    with pytest.raises(RateLimitedError) as caught:
        await call(make_backend(), operation)
    assert (caught.value.retry_after, caught.value.retryable, caught.value.status) == (
        17.0,
        True,
        429,
    )


async def test_429_spend_limit_is_not_retryable(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A 429 for the monthly spend limit is a RateLimitedError that waiting cannot fix."""
    body = error_body("rate_limit_error", "You have reached your spend limit.")
    body["error"]["details"] = {"error_code": "enforced_spend_limit_reached"}
    server.enqueue(json_reply(body, status=429))
    with pytest.raises(RateLimitedError) as caught:
        await make_backend().chat(HI)
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    ("status", "kind", "message", "expected"),
    [
        (400, "invalid_request_error", "max_tokens: field required", InvalidRequestError),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 212345 tokens > 200000 maximum",
            ContextLengthExceededError,
        ),
        (401, "authentication_error", "invalid x-api-key", AuthenticationError),
        (403, "permission_error", "not allowed", AuthenticationError),
        (404, "not_found_error", "model: claude-nope", ModelNotFoundError),
        (413, "request_too_large", "Request exceeds the maximum size", InvalidRequestError),
        (500, "api_error", "Internal server error", BackendUnavailableError),
    ],
)
async def test_error_bodies_map_to_the_error_tree(
    status: int,
    kind: str,
    message: str,
    expected: type[BackendError],
    server: ReplayServer,
    make_backend: BackendFactory,
) -> None:
    """Each Anthropic error type, at its HTTP status, becomes the matching SDK error carrying
    the provider's message, the error type as code and the status."""
    server.enqueue(json_reply(error_body(kind, message), status=status))
    with pytest.raises(expected) as caught:
        await make_backend().chat(HI)
    assert type(caught.value) is expected
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        status,
        kind,
        message,
    )


@pytest.mark.parametrize(
    "body", [b"{not json", b'{"content": "x"}', b'{"content": [{"type": "tool_use"}]}', b"[]"]
)
async def test_malformed_answer_raises_malformed_response(
    body: bytes, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """An unparsable or wrongly shaped answer raises MalformedResponseError."""
    server.enqueue(ScriptedReply(pieces=[body]))
    with pytest.raises(MalformedResponseError):
        await make_backend().chat(HI)


async def test_api_key_never_leaks_into_repr_or_errors(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """The API key appears neither in repr(backend) nor in errors, even when echoed back."""
    backend = make_backend()
    echo = error_body("authentication_error", f"invalid x-api-key: {API_KEY}")
    server.enqueue(
        json_reply(echo, status=401),
        sse_reply([sse(start(), error_event("authentication_error", f"bad key {API_KEY}"))]),
    )
    errors: list[BaseException] = []
    for operation in ("chat", "stream"):
        with pytest.raises(AuthenticationError) as caught:
            await call(backend, operation)
        errors.append(caught.value)
    assert API_KEY not in repr(backend)
    for error in errors:
        assert API_KEY not in f"{error} {error!r} {error.args}"
    assert all(r.headers["x-api-key"] == API_KEY for r in server.requests)


# --- (d) requests ------------------------------------------------------------------------------


async def test_request_body_system_tools_parameters_and_headers(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Systems join the top-level ``system``; tool calls become tool_use blocks; consecutive
    tool results merge into one user turn (tool results first, then a following user text);
    parameters map to Anthropic names (penalties dropped); headers carry key and version."""
    tool = ToolDefinition(name="lookup", description="Find it.", parameters={"type": "object"})
    request = ChatRequest(
        messages=[
            ChatMessage.system("be brief"),
            ChatMessage.user("weather and time?", name="ann"),
            ChatMessage.assistant(
                "Checking.",
                tool_calls=(
                    ToolCall(id="t1", name="lookup", arguments='{"q": "weather"}'),
                    ToolCall(id="t2", name="lookup", arguments=""),
                ),
            ),
            ChatMessage.tool("sunny", tool_call_id="t1"),
            ChatMessage.tool("noon", tool_call_id="t2"),
            ChatMessage.user("thanks"),
            ChatMessage.system("answer in French"),
        ],
        temperature=0.2,
        top_p=0.9,
        frequency_penalty=0.1,
        presence_penalty=0.3,
        stop_sequences=["END"],
        tools=[tool],
        tool_choice="required",
    )
    backend = make_backend(max_output_tokens=77, anthropic_version="2024-01-01")
    response = await backend.chat(request)
    assert response.content == "Hello there."
    [received] = server.requests
    assert (received.method, received.path) == ("POST", "/v1/messages")
    assert received.json == {
        "model": "claude-test-1",
        "max_tokens": 77,
        "system": "be brief\n\nanswer in French",
        "messages": [
            {"role": "user", "content": "weather and time?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "weather"}},
                    {"type": "tool_use", "id": "t2", "name": "lookup", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "t2", "content": "noon"},
                    {"type": "text", "text": "thanks"},
                ],
            },
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "tools": [
            {"name": "lookup", "description": "Find it.", "input_schema": {"type": "object"}}
        ],
        "tool_choice": {"type": "any"},
    }
    assert received.headers["x-api-key"] == API_KEY
    assert received.headers["anthropic-version"] == "2024-01-01"
    assert received.headers["Content-Type"] == "application/json"
    assert "Authorization" not in received.headers


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "lookup"}}, {"type": "tool", "name": "lookup"}),
        ({"type": "tool", "name": "lookup"}, {"type": "tool", "name": "lookup"}),
    ],
)
async def test_tool_choice_mapping(
    choice: Any, expected: dict[str, Any], server: ReplayServer, make_backend: BackendFactory
) -> None:
    """OpenAI-style tool_choice values become Anthropic's; Anthropic shapes pass through."""
    request = ChatRequest(
        messages=[ChatMessage.user("hi")], tools=[ToolDefinition(name="lookup")], tool_choice=choice
    )
    await make_backend().chat(request)
    assert server.requests[-1].json["tool_choice"] == expected


async def test_assistant_prefill_stays_the_final_turn(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A conversation ending with an assistant message is sent with it as the final assistant
    turn (Anthropic continues it), streamed and not; the answer is only the continuation."""
    request = ChatRequest(
        messages=[ChatMessage.user("Count to five."), ChatMessage.assistant("1, 2, 3")]
    )
    server.enqueue(
        json_reply(message_answer(", 4, 5")),
        sse_reply([sse(start(), *text_block(0, ", 4", ", 5"), *finish())]),
    )
    backend = make_backend()
    assert (await backend.chat(request)).content == ", 4, 5"
    assert assemble(await collect(backend, request)).text == ", 4, 5"
    for received in server.requests:
        assert received.json["messages"] == [
            {"role": "user", "content": "Count to five."},
            {"role": "assistant", "content": "1, 2, 3"},
        ]
    assert server.requests[1].json["stream"] is True


async def test_max_tokens_is_always_sent(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Without max_tokens in request or config the required field still goes out (4096);
    a request value wins over the config."""
    await make_backend().chat(HI)
    await make_backend(max_output_tokens=50).chat(
        ChatRequest(messages=[ChatMessage.user("hi")], max_tokens=12)
    )
    assert [r.json["max_tokens"] for r in server.requests] == [4096, 12]
    assert "system" not in server.requests[0].json
    assert "tool_choice" not in server.requests[0].json


async def test_arguments_that_are_not_an_object_fail_before_sending(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A tool call whose arguments are not a JSON object cannot become tool_use input: an
    InvalidRequestError is raised and nothing is sent."""
    request = ChatRequest(
        messages=[
            ChatMessage.user("hi"),
            ChatMessage.assistant(tool_calls=(ToolCall(id="t", name="f", arguments="[1]"),)),
        ]
    )
    with pytest.raises(InvalidRequestError, match="not a JSON object"):
        await make_backend().chat(request)
    assert server.requests == []


async def test_json_response_format_is_not_supported(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A JSON response_format cannot be honoured: NotSupportedError, nothing is sent."""
    request = ChatRequest(
        messages=[ChatMessage.user("hi")], response_format={"type": "json_object"}
    )
    with pytest.raises(NotSupportedError):
        await make_backend().chat(request)
    assert server.requests == []


# --- (e) answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("end_turn", FinishReason.STOP),
        ("stop_sequence", FinishReason.STOP),
        ("max_tokens", FinishReason.LENGTH),
        ("tool_use", FinishReason.TOOL_CALLS),
        ("refusal", FinishReason.CONTENT_FILTER),
        ("pause_turn", None),
    ],
)
async def test_stop_reason_mapping(
    raw: str, expected: FinishReason | None, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Each stop_reason normalises to its FinishReason; the raw value is kept beside it."""
    server.enqueue(json_reply(message_answer("text", stop_reason=raw)))
    response = await make_backend().chat(HI)
    assert (response.finish_reason, response.raw_finish_reason) == (expected, raw)


async def test_cache_tokens_and_ignored_block_types(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Cache reads count as cached prompt tokens (and, with cache writes, as prompt tokens);
    thinking blocks are not part of the answer text."""
    answer = message_answer(
        "",
        content=[
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "A"},
            {"type": "text", "text": "B"},
        ],
        usage={
            "input_tokens": 4,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 20,
            "output_tokens": 6,
        },
    )
    server.enqueue(json_reply(answer))
    response = await make_backend().chat(HI)
    assert response.content == "AB"
    assert (response.prompt_tokens, response.cached_prompt_tokens, response.total_tokens) == (
        1024,
        1000,
        1030,
    )


async def test_refusal_without_content_raises_content_filtered(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A non-streamed refusal with no content raises ContentFilteredError (code refusal)."""
    server.enqueue(json_reply(message_answer("", stop_reason="refusal")))
    with pytest.raises(ContentFilteredError) as caught:
        await make_backend().chat(HI)
    assert (caught.value.code, caught.value.retryable) == ("refusal", False)


# --- (f) models, health, capabilities -------------------------------------------------------------


async def test_list_models_follows_pages(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """``models()`` returns ``data[].id`` from GET /v1/models, following ``has_more`` with
    ``after_id``; the call carries the API key and version headers."""
    server.enqueue(
        json_reply(
            {
                "data": [{"id": "claude-a"}, {"id": "claude-b"}],
                "has_more": True,
                "last_id": "claude-b",
            }
        ),
        json_reply(
            {
                "data": [{"id": "claude-c", "type": "model"}],
                "has_more": False,
                "last_id": "claude-c",
            }
        ),
    )
    assert await make_backend().models() == ["claude-a", "claude-b", "claude-c"]
    assert [(r.method, r.path, r.query) for r in server.requests] == [
        ("GET", "/v1/models", {"limit": "1000"}),
        ("GET", "/v1/models", {"limit": "1000", "after_id": "claude-b"}),
    ]
    assert server.requests[0].headers["x-api-key"] == API_KEY
    assert server.requests[0].headers["anthropic-version"] == "2023-06-01"


async def test_model_list_without_data_is_malformed(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A model list without a data array raises MalformedResponseError."""
    server.enqueue(json_reply({"models": []}))
    with pytest.raises(MalformedResponseError):
        await make_backend().models()


async def test_health_lists_models_and_reports_overload(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """The availability check is GET /v1/models?limit=1; a 529 there makes it unavailable."""
    backend = make_backend()
    server.enqueue(
        json_reply({"data": [], "has_more": False}),
        json_reply(error_body("overloaded_error", "Overloaded"), status=529),
    )
    assert (await backend.get_health()).available
    health = await backend.get_health()
    assert not health.available
    assert health.error is not None
    assert "BackendUnavailableError" in health.error
    assert [(r.path, r.query) for r in server.requests] == [("/v1/models", {"limit": "1"})] * 2


async def test_base_url_ending_in_v1_is_not_doubled(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A base URL that already ends in /v1 gets /v1/messages, not /v1/v1/messages."""
    await make_backend(base_url=f"{server.url}/v1").chat(HI)
    assert server.requests[-1].path == "/v1/messages"


async def test_embeddings_are_not_supported(make_backend: BackendFactory) -> None:
    """Anthropic has no embeddings: the capability is absent and embed() raises."""
    backend = make_backend()
    assert {c.value for c in backend.capabilities} == {
        "chat",
        "streaming",
        "tools",
        "models",
        "prefill",
    }
    with pytest.raises(NotSupportedError):
        await backend.embed(EmbeddingRequest(inputs=["x"]))


async def test_bad_frame_amid_a_healthy_stream_is_skipped_and_counted(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """After content has flowed, one undecodable event is skipped; the finish counts it."""
    block = text_block(0, "Hel", "lo")
    bad = b"event: content_block_delta\ndata: {not json\n\n"
    body = sse(start(), *block[:2]) + bad + sse(*block[2:], *finish())
    server.enqueue(sse_reply([body]))
    events = await collect(make_backend())
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello"
    assert isinstance(events[-1], FinishEvent)
    assert events[-1].malformed_events == 1
