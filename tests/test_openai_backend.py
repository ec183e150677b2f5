"""OpenAIBackend: recorded-interaction conformance, streaming robustness and error mapping."""

from __future__ import annotations

import base64
import email.utils
import json
import struct
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from llmbackend.backends.openai import OpenAIBackend
from llmbackend.errors import (
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
    ContentFilteredError,
    ContextLengthExceededError,
    InvalidRequestError,
    MalformedResponseError,
    ModelNotFoundError,
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
    ToolDefinition,
    UsageEvent,
)
from llmbackend.settings import LlmBackendConfig
from llmbackend.testing import Behavior, FakeOpenAIServer, fold_stream
from llmbackend.testing._replay import awkward_sse, load_wire_fixture, sse_body

API_KEY = "sk-test-SECRET-0123456789"
OPENAI_CASES = (
    "chat_completion",
    "chat_completion_stream_after_tool_result",
    "chat_completion_stream_usage",
    "chat_completion_tool_call",
    "chat_completion_tool_call_stream",
    "embeddings",
    "error_400_unsupported_parameter",
    "error_401_invalid_api_key",
    "error_404_model_not_found",
)
STREAM_CASES = tuple(case for case in OPENAI_CASES if "stream" in case)
ERROR_TYPES: dict[int, type[BackendError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    404: ModelNotFoundError,
}
HI = ChatRequest(messages=[ChatMessage.user("hi")])


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as fake:
        yield fake


BackendFactory = Callable[..., OpenAIBackend]


@pytest.fixture
def make_backend(session: aiohttp.ClientSession) -> BackendFactory:
    def build(**overrides: Any) -> OpenAIBackend:
        options: dict[str, Any] = {
            "name": "oa",
            "type": "openai",
            "api_key": API_KEY,
            "model_name": "gpt-test",
            "timeout_seconds": 10.0,
        }
        options.update(overrides)
        return OpenAIBackend(LlmBackendConfig(**options), session_factory=lambda: session)

    return build


def load_case(wire_dir: Path, case: str) -> dict[str, Any]:
    return load_wire_fixture(wire_dir / "openai" / f"{case}.yaml")


def recorded_functions(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The function definitions of a recorded request (``tools`` or the legacy ``functions``)."""
    if "tools" in body:
        return [tool["function"] for tool in body["tools"]]
    return list(body.get("functions", []))


def request_from_recording(body: dict[str, Any]) -> ChatRequest:
    """The ChatRequest equivalent to a recorded chat-completions body."""
    messages = [
        ChatMessage(
            role=m["role"],
            content=m.get("content"),
            name=m.get("name"),
            tool_call_id=m.get("tool_call_id"),
            tool_calls=[
                ToolCall(
                    id=c["id"], name=c["function"]["name"], arguments=c["function"]["arguments"]
                )
                for c in m.get("tool_calls", [])
            ],
        )
        for m in body["messages"]
    ]
    tools = [
        ToolDefinition(
            name=f["name"], description=f.get("description", ""), parameters=f["parameters"]
        )
        for f in recorded_functions(body)
    ]
    return ChatRequest(
        messages=messages,
        model=body["model"],
        temperature=body.get("temperature"),
        max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
        stop_sequences=body.get("stop") or (),
        tools=tools,
    )


def assert_essential_fields(sent: dict[str, Any], recorded: dict[str, Any]) -> None:
    """The body we built carries the recorded request's meaning."""
    assert sent["model"] == recorded["model"]
    assert sent["messages"] == recorded["messages"]
    assert sent.get("stream", False) == recorded.get("stream", False)
    assert sent.get("stream_options") == recorded.get("stream_options")
    functions = recorded_functions(recorded)
    assert sent.get("tools") == ([{"type": "function", "function": f} for f in functions] or None)
    for key in ("temperature", "stop"):
        assert sent.get(key) == recorded.get(key)
    # Real OpenAI gets max_completion_tokens (max_tokens is deprecated there).
    limit = recorded.get("max_completion_tokens", recorded.get("max_tokens"))
    assert sent.get("max_completion_tokens") == limit
    assert "max_tokens" not in sent


class Expected(NamedTuple):
    text: str
    tool_calls: list[tuple[str, str, str]]  # (id, name, arguments)
    raw_reason: str | None
    model: str
    usage: tuple[int, int, int, int]  # prompt, completion, total, cached


def _usage(raw: dict[str, Any]) -> tuple[int, int, int, int]:
    cached = raw.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    return raw["prompt_tokens"], raw["completion_tokens"], raw["total_tokens"], cached


def expected_from_json(body: str) -> Expected:
    """What a recorded non-streamed answer says, read straight from its JSON."""
    answer = json.loads(body)
    choice = answer["choices"][0]
    message = choice["message"]
    calls = [
        (c["id"], c["function"]["name"], c["function"]["arguments"])
        for c in message.get("tool_calls") or []
    ]
    if message.get("function_call"):
        legacy = message["function_call"]
        calls.append(("", legacy["name"], legacy["arguments"]))
    return Expected(
        message["content"] or "",
        calls,
        choice["finish_reason"],
        answer["model"],
        _usage(answer["usage"]),
    )


def expected_from_sse(body: str, *, upto: int | None = None) -> Expected:
    """What a recorded stream says (optionally only its first ``upto`` data frames)."""
    frames = [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]
    text, reason, model, usage = "", None, "", (0, 0, 0, 0)
    calls: dict[int, list[str]] = {}
    for frame in frames[:upto]:
        if frame == "[DONE]":
            break
        chunk = json.loads(frame)
        model = chunk["model"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                entry = calls.setdefault(call["index"], ["", "", ""])
                entry[0] = call.get("id") or entry[0]
                entry[1] = call.get("function", {}).get("name") or entry[1]
                entry[2] += call.get("function", {}).get("arguments") or ""
            reason = choice["finish_reason"] or reason
        if chunk.get("usage"):
            usage = _usage(chunk["usage"])
    tool_calls = [(c[0], c[1], c[2]) for _, c in sorted(calls.items())]
    return Expected(text, tool_calls, reason, model, usage)


def assemble(events: list[StreamEvent]) -> Expected:
    """Fold stream events the way a caller would (tool-call fragments joined by index)."""
    r = fold_stream(events)
    return Expected(
        r.content,
        [(c.id, c.name, c.arguments) for c in r.tool_calls],
        r.raw_finish_reason,
        r.model,
        (r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cached_prompt_tokens),
    )


async def collect(backend: OpenAIBackend, request: ChatRequest = HI) -> list[StreamEvent]:
    return [event async for event in backend.stream(request)]


def delta_chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    return {"model": "m-1", "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}


# --- (a) conformance with the recorded interactions ---------------------------------------------


def test_every_recorded_openai_file_is_covered(wire_dir: Path) -> None:
    """The conformance cases below are exactly the files in the shared openai fixture folder."""
    assert {path.stem for path in (wire_dir / "openai").glob("*.yaml")} == set(OPENAI_CASES)


@pytest.mark.parametrize("case", OPENAI_CASES)
async def test_recorded_interaction_conformance(
    case: str, wire_dir: Path, make_backend: BackendFactory
) -> None:
    """Replaying a recorded OpenAI answer yields what the recording says (content, tool calls,
    finish reason, tokens, or the exact error), and our request has the recorded method, path
    and essential body fields."""
    recording = load_case(wire_dir, case)
    recorded_request, recorded_response = recording["request"], recording["response"]
    recorded_body = json.loads(recorded_request["body"])
    url = recorded_request["base_url"] + recorded_request["url_path"]
    headers = {k.lower(): v for k, v in recorded_response["headers"].items()}
    backend = make_backend(model_name=None)
    status = recorded_response["status"]
    with aioresponses() as mocked:
        mocked.add(
            url,
            method=recorded_request["method"],
            status=status,
            body=recorded_response["body"],
            content_type=headers.get("content-type", "application/json"),
        )
        if recorded_request["url_path"].endswith("/embeddings"):
            request = EmbeddingRequest(
                inputs=recorded_body["input"],
                model=recorded_body["model"],
                dimensions=recorded_body.get("dimensions"),
            )
            embedded = await backend.embed(request)
            answer = json.loads(recorded_response["body"])
            assert embedded.embeddings == tuple(tuple(d["embedding"]) for d in answer["data"])
            assert embedded.prompt_tokens == answer["usage"]["prompt_tokens"]
            assert embedded.model == answer["model"]
        elif status >= 400:
            with pytest.raises(BackendError) as caught:
                await backend.chat(request_from_recording(recorded_body))
            error = json.loads(recorded_response["body"])["error"]
            assert type(caught.value) is ERROR_TYPES[status]
            assert caught.value.status == status
            assert caught.value.code == error["code"]
            assert caught.value.message == error["message"]
        elif recorded_body.get("stream"):
            events = await collect(backend, request_from_recording(recorded_body))
            assert assemble(events) == expected_from_sse(recorded_response["body"])
        else:
            response = await backend.chat(request_from_recording(recorded_body))
            expected = expected_from_json(recorded_response["body"])
            assert response.content == expected.text
            assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == expected.tool_calls
            assert response.raw_finish_reason == expected.raw_reason
            assert response.model == expected.model
            usage = response.usage
            assert (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens,
                usage.cached_prompt_tokens,
            ) == expected.usage
        assert mocked.requests is not None
        calls = mocked.requests[(recorded_request["method"], URL(url))]
    assert len(calls) == 1
    sent = calls[0].kwargs["json"]
    if recorded_request["url_path"].endswith("/embeddings"):
        assert {k: sent[k] for k in recorded_body} == recorded_body
    else:
        assert_essential_fields(sent, recorded_body)
    assert calls[0].kwargs["headers"]["Authorization"] == f"Bearer {API_KEY}"


async def test_recorded_legacy_function_call_maps_to_tool_calls(
    wire_dir: Path, make_backend: BackendFactory
) -> None:
    """A legacy ``function_call`` answer normalises to FinishReason.TOOL_CALLS with raw kept."""
    recording = load_case(wire_dir, "chat_completion_tool_call")
    with aioresponses() as mocked:
        mocked.post(
            "https://api.openai.com/v1/chat/completions", body=recording["response"]["body"]
        )
        response = await make_backend().chat(HI)
    assert response.finish_reason is FinishReason.TOOL_CALLS
    assert response.raw_finish_reason == "function_call"
    assert response.tool_calls[0].parsed_arguments() == {"location": "Boston"}


# --- (b) streams over a real loopback server ------------------------------------------------------


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("case", STREAM_CASES)
async def test_recorded_stream_split_at_awkward_offsets(
    case: str, crlf: bool, wire_dir: Path, server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """A recorded stream cut across many TCP writes at awkward offsets, with keep-alive
    comments (and CRLF line ends) mixed in, parses to exactly what the recording says."""
    body = load_case(wire_dir, case)["response"]["body"]
    pieces = awkward_sse(body, crlf=crlf)
    assert len(pieces) > 20
    server.enqueue(Behavior.raw(pieces))
    events = await collect(make_backend(base_url=server.base_url))
    assert assemble(events) == expected_from_sse(body)


async def test_stream_tool_call_fragments_assemble_to_the_recorded_call(
    wire_dir: Path, server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """Tool-call fragments of the recorded stream join (by index) into the call that the next
    recorded turn sent back: same id, name and arguments."""
    body = load_case(wire_dir, "chat_completion_tool_call_stream")["response"]["body"]
    follow_up = json.loads(
        load_case(wire_dir, "chat_completion_stream_after_tool_result")["request"]["body"]
    )
    sent_back = next(m for m in follow_up["messages"] if m.get("tool_calls"))["tool_calls"][0]
    server.enqueue(Behavior.raw(awkward_sse(body)))
    result = assemble(await collect(make_backend(base_url=server.base_url)))
    [(call_id, name, arguments)] = result.tool_calls
    assert call_id == sent_back["id"]
    assert name == sent_back["function"]["name"]
    assert json.loads(arguments) == json.loads(sent_back["function"]["arguments"])
    assert result.raw_reason == "tool_calls"


async def test_multibyte_text_split_inside_a_character(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """A UTF-8 character cut between two writes still decodes to the right text."""
    body = (
        sse_body(delta_chunk({"content": "héllo ✓"}, None), delta_chunk({}, "stop"), "[DONE]")
        .replace(b"\\u00e9", "é".encode())
        .replace(b"\\u2713", "✓".encode())
    )
    cut = body.index("✓".encode()) + 1
    server.enqueue(Behavior.raw([body[:cut], body[cut:]]))
    events = await collect(make_backend(base_url=server.base_url))
    assert assemble(events).text == "héllo ✓"


async def test_missing_done_after_finish_reason_is_complete(
    wire_dir: Path, server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """A recorded stream whose body ends cleanly after finish_reason (no [DONE]) completes."""
    body = load_case(wire_dir, "chat_completion_stream_usage")["response"]["body"]
    trimmed = body.replace("data: [DONE]\n\n", "")
    assert trimmed != body
    server.enqueue(Behavior.raw([trimmed.encode()]))
    events = await collect(make_backend(base_url=server.base_url))
    assert assemble(events) == expected_from_sse(body)


async def test_fake_missing_done_behaviour_is_complete(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """The fake server's missing-[DONE] fault is also read as a complete answer."""
    server.enqueue(Behavior.missing_done("all there"))
    events = await collect(make_backend(base_url=server.base_url))
    assert assemble(events).text == "all there"
    assert assemble(events).raw_reason == "stop"


async def test_body_ending_without_finish_raises_stream_interrupted(
    wire_dir: Path, server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """A body that ends cleanly before any finish_reason raises StreamInterruptedError with the
    text delivered so far; it is never presented as a normal end."""
    body = load_case(wire_dir, "chat_completion_stream_usage")["response"]["body"]
    frames = body.split("\n\n")
    cut = next(i for i, f in enumerate(frames) if '"finish_reason":"stop"' in f)
    partial = "\n\n".join(frames[:cut]) + "\n\n"
    server.enqueue(Behavior.raw([partial.encode()]))
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(make_backend(base_url=server.base_url))
    expected = expected_from_sse(body, upto=cut).text
    assert expected
    assert caught.value.partial_text == expected


async def test_connection_cut_mid_answer_raises_stream_interrupted(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """A connection dropped after three chunks raises StreamInterruptedError with their text."""
    server.enqueue(Behavior.cut_stream(after_chunks=3))
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(make_backend(base_url=server.base_url))
    assert caught.value.partial_text == server.reply[: 3 * server.chunk_size]
    assert isinstance(caught.value.__cause__, BackendUnavailableError)


async def test_malformed_chunk_before_content_raises_malformed_response(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """A frame that is not JSON raises MalformedResponseError naming the problem (no KeyError)."""
    server.enqueue(Behavior.malformed_chunk(after_chunks=0))
    with pytest.raises(MalformedResponseError, match="not JSON") as caught:
        await collect(make_backend(base_url=server.base_url))
    assert "KeyError" not in str(caught.value)


async def test_malformed_frame_amid_a_healthy_stream_is_skipped_and_counted(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """After content, one undecodable frame is skipped; the count comes with the finish."""

    def delta(text: str, reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": reason}
        return sse_body(json.dumps({"model": "m", "choices": [choice]}))

    server.enqueue(
        Behavior.raw(
            [
                delta("Hel"),
                b'data: {"choices": [{"delta": \n\n',
                delta("lo", "stop"),
                sse_body("[DONE]"),
            ]
        )
    )
    events = await collect(make_backend(base_url=server.base_url))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello"
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    assert finish.malformed_events == 1


@pytest.mark.parametrize(
    "chunk",
    [{"choices": "nope"}, {"choices": [{"index": 0, "delta": "x"}]}, ["a", "list"]],
    ids=["choices-not-list", "delta-not-object", "not-an-object"],
)
async def test_wrongly_shaped_chunk_raises_malformed_response(
    chunk: Any, server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """Valid JSON in the wrong shape raises MalformedResponseError, never KeyError/TypeError."""
    server.enqueue(Behavior.raw([sse_body(json.dumps(chunk))]))
    with pytest.raises(MalformedResponseError):
        await collect(make_backend(base_url=server.base_url))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"message": "The server had an error", "type": "server_error"}, BackendUnavailableError),
        ({"message": "Slow down", "type": "rate_limit_exceeded"}, RateLimitedError),
        ({"message": "too long", "code": "context_length_exceeded"}, ContextLengthExceededError),
    ],
)
async def test_error_chunk_mid_stream_raises_the_mapped_error(
    error: dict[str, Any],
    expected: type[BackendError],
    server: FakeOpenAIServer,
    make_backend: BackendFactory,
) -> None:
    """An ``{"error": ...}`` frame after the 200 status raises the error it describes."""
    server.enqueue(Behavior.raw([sse_body(delta_chunk({"role": "assistant"}), {"error": error})]))
    with pytest.raises(expected) as caught:
        await collect(make_backend(base_url=server.base_url))
    assert type(caught.value) is expected
    assert caught.value.message == error["message"]


async def test_stream_refusal_raises_content_filtered(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """A streamed refusal with no content raises ContentFilteredError carrying the refusal."""
    body = sse_body(
        delta_chunk({"role": "assistant", "refusal": "I can't "}),
        delta_chunk({"refusal": "help with that."}),
        delta_chunk({}, "stop"),
        "[DONE]",
    )
    server.enqueue(Behavior.raw([body]))
    with pytest.raises(ContentFilteredError, match="I can't help with that") as caught:
        await collect(make_backend(base_url=server.base_url))
    assert caught.value.code == "refusal"


async def test_done_without_finish_reason_still_finishes_once(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """``[DONE]`` is the protocol's explicit end: one FinishEvent (reason unknown) follows."""
    server.enqueue(Behavior.raw([sse_body(delta_chunk({"content": "ok"}), "[DONE]")]))
    events = await collect(make_backend(base_url=server.base_url))
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    assert (finish.reason, finish.raw_reason, finish.model) == (None, None, "m-1")
    assert finish.backend == "oa"


async def test_fake_server_stream_round_trip_sends_stream_options(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """A streamed call asks for usage, and text, usage and finish arrive in order."""
    events = await collect(make_backend(base_url=server.base_url))
    sent = server.requests[-1].json
    assert (sent["stream"], sent["stream_options"]) == (True, {"include_usage": True})
    result = assemble(events)
    assert result.text == server.reply
    assert result.usage[1] == len(server.reply.split())
    assert isinstance(events[-2], UsageEvent)


# --- errors ------------------------------------------------------------------------------------


async def call(backend: OpenAIBackend, operation: str) -> object:
    if operation == "stream":
        return await collect(backend)
    return await backend.chat(HI)


OPERATIONS = pytest.mark.parametrize("operation", ["chat", "stream"])


@OPERATIONS
async def test_429_retry_after_seconds(
    operation: str, server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """HTTP 429 with ``Retry-After: 7`` raises a retryable RateLimitedError asking for 7s."""
    server.enqueue_error(429, headers={"Retry-After": "7"})
    with pytest.raises(RateLimitedError) as caught:
        await call(make_backend(base_url=server.base_url), operation)
    assert (caught.value.retry_after, caught.value.retryable, caught.value.status) == (
        7.0,
        True,
        429,
    )


@OPERATIONS
async def test_429_retry_after_http_date(
    operation: str, server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """HTTP 429 with ``Retry-After`` as an HTTP date becomes the seconds until that date."""
    when = datetime.now(UTC) + timedelta(seconds=120)
    server.enqueue_error(
        429, headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)}
    )
    with pytest.raises(RateLimitedError) as caught:
        await call(make_backend(base_url=server.base_url), operation)
    assert caught.value.retry_after is not None
    assert 100.0 < caught.value.retry_after <= 120.0


async def test_insufficient_quota_is_not_retryable(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """A 429 for exhausted quota is a RateLimitedError that waiting cannot fix."""
    server.enqueue_error(429, {"error": {"message": "quota", "code": "insufficient_quota"}})
    with pytest.raises(RateLimitedError) as caught:
        await make_backend(base_url=server.base_url).chat(HI)
    assert caught.value.retryable is False


@OPERATIONS
async def test_500_is_retryable_unavailable(
    operation: str, server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """HTTP 500 raises a retryable BackendUnavailableError with the status."""
    server.enqueue_error(500)
    with pytest.raises(BackendUnavailableError) as caught:
        await call(make_backend(base_url=server.base_url), operation)
    assert (caught.value.status, caught.value.retryable) == (500, True)


@OPERATIONS
async def test_context_length_exceeded(
    operation: str, server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """HTTP 400 with code context_length_exceeded raises ContextLengthExceededError."""
    error = {
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    server.enqueue_error(400, {"error": error})
    with pytest.raises(ContextLengthExceededError) as caught:
        await call(make_backend(base_url=server.base_url), operation)
    assert (caught.value.status, caught.value.code) == (400, "context_length_exceeded")


@OPERATIONS
async def test_connection_refused_is_unavailable(
    operation: str, make_backend: BackendFactory
) -> None:
    """A port nobody listens on (a stopped server's) raises BackendUnavailableError."""
    async with FakeOpenAIServer() as stopped:
        url = stopped.base_url
    backend = make_backend(base_url=url)
    with pytest.raises(BackendUnavailableError):
        await call(backend, operation)
    assert (await backend.get_health()).available is False


async def test_refusal_raises_content_filtered(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """A non-streamed refusal (``refusal`` set, content null) raises ContentFilteredError."""
    answer = {
        "model": "m-1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": "I can't do that."},
                "finish_reason": "stop",
            }
        ],
    }
    server.enqueue(Behavior.raw([json.dumps(answer).encode()], content_type="application/json"))
    with pytest.raises(ContentFilteredError, match="I can't do that") as caught:
        await make_backend(base_url=server.base_url).chat(HI)
    assert caught.value.code == "refusal"


@pytest.mark.parametrize(
    "body", [b"{not json", b'{"choices": []}', b'{"choices": [{"message": "x"}]}', b"[]"]
)
async def test_malformed_answer_raises_malformed_response(
    body: bytes, server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """An unparsable or wrongly shaped chat answer raises MalformedResponseError."""
    server.enqueue(Behavior.raw([body], content_type="application/json"))
    with pytest.raises(MalformedResponseError):
        await make_backend(base_url=server.base_url).chat(HI)


async def test_api_key_never_leaks_into_repr_or_errors(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """The API key appears neither in repr(backend) nor in errors, even when echoed back."""
    backend = make_backend(base_url=server.base_url)
    echo = {
        "error": {"message": f"Incorrect API key provided: {API_KEY}", "code": "invalid_api_key"}
    }
    server.enqueue_error(401, echo)
    server.enqueue(
        Behavior.raw([sse_body({"error": echo["error"] | {"type": "authentication_error"}})])
    )
    errors: list[BaseException] = []
    for operation in ("chat", "stream"):
        with pytest.raises(AuthenticationError) as caught:
            await call(backend, operation)
        errors.append(caught.value)
    assert API_KEY not in repr(backend)
    for error in errors:
        assert API_KEY not in f"{error} {error!r} {error.args}"
    assert all(server.requests[i].headers["Authorization"] == f"Bearer {API_KEY}" for i in (0, 1))


# --- requests, headers, paths --------------------------------------------------------------------


async def test_chat_request_body_carries_every_parameter(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """Messages, sampling parameters, tools, tool_choice and response_format are all sent."""
    tool = ToolDefinition(name="lookup", description="Find it.", parameters={"type": "object"})
    request = ChatRequest(
        messages=[
            ChatMessage.system("be brief"),
            ChatMessage.user("hi", name="ann"),
            ChatMessage.assistant(tool_calls=(ToolCall(id="c1", name="lookup", arguments="{}"),)),
            ChatMessage.tool("42", tool_call_id="c1", name="lookup"),
        ],
        temperature=0.2,
        top_p=0.9,
        frequency_penalty=0.1,
        presence_penalty=0.3,
        stop_sequences=["END"],
        tools=[tool],
        tool_choice="auto",
        response_format={"type": "json_object"},
    )
    response = await make_backend(base_url=server.base_url, max_output_tokens=77).chat(request)
    assert response.content == server.reply
    assert response.finish_reason is FinishReason.STOP
    assert server.requests[-1].path == "/v1/chat/completions"
    assert server.requests[-1].json == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi", "name": "ann"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "content": "42", "tool_call_id": "c1", "name": "lookup"},
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.3,
        "stop": ["END"],
        "max_completion_tokens": 77,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": "Find it.",
                    "parameters": {"type": "object"},
                },
            }
        ],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
    }


async def test_tool_call_answer_and_cached_tokens(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """Tool calls are parsed, and ``prompt_tokens_details.cached_tokens`` is reported."""
    answer = {
        "model": "m-2",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c9",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"x":1}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 20,
            "completion_tokens": 5,
            "total_tokens": 25,
            "prompt_tokens_details": {"cached_tokens": 16},
        },
    }
    server.enqueue(Behavior.raw([json.dumps(answer).encode()], content_type="application/json"))
    response = await make_backend(base_url=server.base_url).chat(HI)
    assert response.content == ""
    assert response.tool_calls == (ToolCall(id="c9", name="f", arguments='{"x":1}'),)
    assert response.finish_reason is FinishReason.TOOL_CALLS
    assert (response.cached_prompt_tokens, response.total_tokens, response.model) == (16, 25, "m-2")


async def test_organization_and_additional_headers_are_sent(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """Bearer auth, OpenAI-Organization and configured additional headers reach the server."""
    backend = make_backend(
        base_url=server.base_url, organization_id="org-42", additional_headers={"X-Team": "blue"}
    )
    await backend.chat(HI)
    await collect(backend)
    for recorded in server.requests:
        assert recorded.headers["Authorization"] == f"Bearer {API_KEY}"
        assert recorded.headers["OpenAI-Organization"] == "org-42"
        assert recorded.headers["X-Team"] == "blue"
    assert server.requests[-1].headers["Accept"] == "text/event-stream"


async def test_no_api_key_sends_no_authorization(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """Without an API key (local servers) no Authorization or organization header is sent."""
    await make_backend(base_url=server.base_url, api_key=None, type="lmstudio").chat(HI)
    assert "Authorization" not in server.requests[-1].headers
    assert "OpenAI-Organization" not in server.requests[-1].headers


@pytest.mark.parametrize("suffix", ["", "/v1"], ids=["root", "v1"])
async def test_llamacpp_paths_and_health(
    suffix: str, server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """llama.cpp uses /v1/... API paths from its root URL (no doubled /v1) and GET /health."""
    backend = make_backend(type="llamacpp", base_url=server.root_url + suffix, api_key=None)
    await backend.chat(HI)
    await collect(backend)
    assert await backend.models() == list(server.models)
    health = await backend.get_health()
    assert health.available, health.error
    paths = [(r.method, r.path) for r in server.requests]
    assert paths == [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/health"),
    ]


async def test_openai_health_lists_models_and_reports_failure(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """For OpenAI the availability check lists models; a 503 there makes it unavailable."""
    backend = make_backend(type="openai_compatible", base_url=server.base_url)
    assert (await backend.get_health()).available
    server.register("down", Behavior.error(503))
    down = make_backend(
        type="openai_compatible",
        base_url=server.base_url,
        additional_headers={"x-fake-behavior": "down"},
    )
    health = await down.get_health()
    assert not health.available
    assert health.error is not None
    assert "BackendUnavailableError" in health.error
    assert [r.path for r in server.requests] == ["/v1/models", "/v1/models"]


# --- embeddings and models ---------------------------------------------------------------------


async def test_embeddings_float_in_input_order(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """Float embeddings come back one per input, in input order, with usage; the request
    sends the input list, the model, ``dimensions`` and ``encoding_format: float``."""
    backend = make_backend(base_url=server.base_url, model_name="text-embed")
    response = await backend.embed(EmbeddingRequest(inputs=["a b", "c", "a b"], dimensions=5))
    assert [len(v) for v in response.embeddings] == [5, 5, 5]
    assert response.embeddings[0] == response.embeddings[2] != response.embeddings[1]
    assert (response.prompt_tokens, response.model, response.backend) == (5, "text-embed", "oa")
    assert server.requests[-1].json == {
        "model": "text-embed",
        "input": ["a b", "c", "a b"],
        "dimensions": 5,
        "encoding_format": "float",
    }


@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_embeddings_sorted_by_index_and_base64_decoded(
    encoding: str, server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """Answers listed out of order are put in ``index`` order; base64 little-endian float32
    vectors decode to the same numbers as float lists."""
    vectors = [[0.5, -1.25, 3.0], [0.125, 2.0, -0.75]]

    def encode(vector: list[float]) -> Any:
        if encoding == "float":
            return vector
        return base64.b64encode(struct.pack("<3f", *vector)).decode()

    data = [{"index": i, "embedding": encode(v)} for i, v in reversed(list(enumerate(vectors)))]
    answer = {"data": data, "model": "e-1", "usage": {"prompt_tokens": 4, "total_tokens": 4}}
    server.enqueue(Behavior.raw([json.dumps(answer).encode()], content_type="application/json"))
    response = await make_backend(base_url=server.base_url).embed(
        EmbeddingRequest(inputs=["x", "y"])
    )
    assert response.embeddings == tuple(tuple(v) for v in vectors)
    assert (response.model, response.prompt_tokens) == ("e-1", 4)


async def test_embeddings_count_mismatch_is_malformed(
    server: FakeOpenAIServer, make_backend: BackendFactory
) -> None:
    """Fewer vectors than inputs is a MalformedResponseError, not a silent misalignment."""
    answer = {"data": [{"index": 0, "embedding": [1.0]}], "model": "e"}
    server.enqueue(Behavior.raw([json.dumps(answer).encode()], content_type="application/json"))
    with pytest.raises(MalformedResponseError):
        await make_backend(base_url=server.base_url).embed(EmbeddingRequest(inputs=["x", "y"]))


async def test_list_models(server: FakeOpenAIServer, make_backend: BackendFactory) -> None:
    """``models()`` returns the ids from GET /v1/models."""
    assert await make_backend(base_url=server.base_url).models() == list(server.models)
    assert (server.requests[-1].method, server.requests[-1].path) == ("GET", "/v1/models")


def test_capabilities_and_default_model(make_backend: BackendFactory) -> None:
    """Every OpenAI capability is declared; there is no default model (config must name one)."""
    backend = make_backend(model_name=None)
    assert backend.model is None
    assert {c.value for c in backend.capabilities} == {
        "chat",
        "streaming",
        "tools",
        "embeddings",
        "models",
    }


@pytest.mark.parametrize(
    ("backend_type", "field"),
    [("openai", "max_completion_tokens"), ("openai_compatible", "max_tokens")],
)
async def test_output_limit_field_follows_the_server_kind(
    server: FakeOpenAIServer, make_backend: BackendFactory, backend_type: str, field: str
) -> None:
    """Real OpenAI gets max_completion_tokens; compatible servers keep max_tokens."""
    backend = make_backend(base_url=server.base_url, type=backend_type, max_output_tokens=12)
    await backend.chat(ChatRequest(messages=[ChatMessage.user("hi")]))
    sent = server.requests[-1].json
    assert sent[field] == 12
    assert {"max_tokens", "max_completion_tokens"} - {field} & set(sent) == set()
