"""CohereBackend: recorded-interaction conformance, streaming robustness and error mapping."""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import attrs
import pytest
from aioresponses import aioresponses
from yarl import URL

from llmbackend.backends.cohere import CohereBackend
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

API_KEY = "co-test-SECRET-0123456789"
HI = ChatRequest(messages=[ChatMessage.user("hi")])
#: Same location as the ``wire_dir`` fixture; read at collection time to parametrize.
_COHERE_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "wire" / "cohere"
COHERE_CASES = sorted(path.stem for path in _COHERE_DIR.glob("*.yaml"))
V2_STREAM_CASES = ("chat_v2_stream", "chat_v2_tool_calls_stream")
#: The v2 chat endpoint every chat call of this backend uses.
CHAT_URL = "https://api.cohere.com/v2/chat"


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def server(replay_server: ReplayServer) -> ReplayServer:
    """The loopback server; what is not scripted gets a Cohere-shaped HTTP 500."""
    replay_server.default = json_reply({"message": "no scripted reply"}, status=500)
    return replay_server


BackendFactory = Callable[..., CohereBackend]


@pytest.fixture
def make_backend(session: aiohttp.ClientSession) -> BackendFactory:
    def build(**overrides: Any) -> CohereBackend:
        options: dict[str, Any] = {
            "name": "co",
            "type": "cohere",
            "api_key": API_KEY,
            "model_name": "command-test",
            "timeout_seconds": 10.0,
        }
        options.update(overrides)
        return CohereBackend(LlmBackendConfig(**options), session_factory=lambda: session)

    return build


@pytest.fixture
def local(server: ReplayServer, make_backend: BackendFactory) -> CohereBackend:
    """A backend pointed at the loopback server."""
    return make_backend(base_url=server.url)


def load_case(wire_dir: Path, case: str) -> dict[str, Any]:
    return load_wire_fixture(wire_dir / "cohere" / f"{case}.yaml")


def sse(*events: dict[str, Any] | str) -> bytes:
    """A v2 SSE body: ``event: <type>`` plus ``data:`` per event (raw strings as data only)."""
    return sse_body(*events, event_field="type")


def text_event(text: str) -> dict[str, Any]:
    return {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": text}}}}


def message_end(reason: str = "COMPLETE", **usage: Any) -> dict[str, Any]:
    delta: dict[str, Any] = {"finish_reason": reason}
    if usage:
        delta["usage"] = usage
    return {"type": "message-end", "delta": delta}


def request_from_recording(body: dict[str, Any]) -> ChatRequest:
    """The ChatRequest equivalent to a recorded /v2/chat body."""
    tools = [
        ToolDefinition(
            name=t["function"]["name"],
            description=t["function"].get("description", ""),
            parameters=t["function"]["parameters"],
        )
        for t in body.get("tools", [])
    ]
    return ChatRequest(
        messages=[ChatMessage(role=m["role"], content=m["content"]) for m in body["messages"]],
        model=body["model"],
        tools=tools,
    )


class Expected(NamedTuple):
    text: str
    tool_calls: list[tuple[str, str, str]]  # (id, name, arguments)
    raw_reason: str | None
    usage: tuple[int, int, int]  # prompt, completion, total


def _usage(raw: dict[str, Any]) -> tuple[int, int, int]:
    tokens = raw["tokens"]
    return tokens["input_tokens"], tokens["output_tokens"], sum(tokens.values())


def expected_from_json(body: str) -> Expected:
    """What a recorded non-streamed answer says, read straight from its JSON."""
    answer = json.loads(body)
    message = answer["message"]
    calls = [
        (c["id"], c["function"]["name"], c["function"]["arguments"])
        for c in message.get("tool_calls", [])
    ]
    text = "".join(item["text"] for item in message["content"] if item["type"] == "text")
    return Expected(text, calls, answer["finish_reason"], _usage(answer["usage"]))


def expected_from_sse(body: str) -> Expected:
    """What a recorded v2 stream says, read straight from its ``data:`` frames."""
    text, reason, usage = "", None, (0, 0, 0)
    calls: dict[int, list[str]] = {}
    for line in body.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[len("data: ") :])
        message = event.get("delta", {}).get("message", {})
        if event["type"] == "content-delta":
            text += message["content"]["text"]
        elif event["type"] in ("tool-call-start", "tool-call-delta"):
            entry = calls.setdefault(event["index"], ["", "", ""])
            call = message["tool_calls"]
            entry[0] = call.get("id") or entry[0]
            entry[1] = call["function"].get("name") or entry[1]
            entry[2] += call["function"]["arguments"]
        elif event["type"] == "message-end":
            reason = event["delta"]["finish_reason"]
            usage = _usage(event["delta"]["usage"])
    return Expected(text, [(c[0], c[1], c[2]) for _, c in sorted(calls.items())], reason, usage)


def assemble(events: list[StreamEvent]) -> Expected:
    """Fold stream events the way a caller would (tool-call fragments joined by index)."""
    r = fold_stream(events)
    return Expected(
        r.content,
        [(c.id, c.name, c.arguments) for c in r.tool_calls],
        r.raw_finish_reason,
        (r.prompt_tokens, r.completion_tokens, r.total_tokens),
    )


async def collect(backend: CohereBackend, request: ChatRequest = HI) -> list[StreamEvent]:
    return [event async for event in backend.stream(request)]


OPERATIONS = pytest.mark.parametrize("operation", ["chat", "stream"])


async def call(backend: CohereBackend, operation: str) -> object:
    if operation == "stream":
        return await collect(backend)
    return await backend.chat(HI)


# --- (a) conformance with the recorded interactions ---------------------------------------------


def test_recorded_cohere_files_exist(wire_dir: Path) -> None:
    """The conformance parameters below are the files of the shared cohere fixture folder."""
    assert (wire_dir / "cohere") == _COHERE_DIR
    assert COHERE_CASES, "no cohere recordings found"


@pytest.mark.parametrize("case", COHERE_CASES)
async def test_recorded_interaction_conformance(
    case: str, wire_dir: Path, make_backend: BackendFactory
) -> None:
    """Replaying a recorded Cohere answer yields what the recording says (content, tool calls,
    finish reason, tokens, vectors), and our request has the recorded method, URL and body.

    The legacy v1 stream (``/v1/chat``, NDJSON) is the one recording this v2-only backend
    never asks for: served in place of a v2 stream it must not pass for an answer."""
    recording = load_case(wire_dir, case)
    recorded_request, recorded_response = recording["request"], recording["response"]
    recorded_body = json.loads(recorded_request["body"])
    url = recorded_request["base_url"] + recorded_request["url_path"]
    headers = {k.lower(): v for k, v in recorded_response["headers"].items()}
    content_type = headers["content-type"]
    body = recorded_response["body"]
    backend = make_backend(model_name=None)
    legacy = recorded_request["url_path"] == "/v1/chat"
    with aioresponses() as mocked:
        if legacy:
            assert content_type == "application/stream+json"
            assert '"event_type":"stream-end"' in body
            mocked.post(CHAT_URL, body=body, content_type=content_type)
            request = ChatRequest(
                messages=[ChatMessage.user(recorded_body["message"])], model=recorded_body["model"]
            )
            with pytest.raises(BackendUnavailableError, match="before any content or finish"):
                await collect(backend, request)
            url = CHAT_URL
            recorded_body = {
                "model": recorded_body["model"],
                "messages": [{"role": "user", "content": recorded_body["message"]}],
                "stream": True,
            }
        elif recorded_request["url_path"] == "/v2/embed":
            mocked.post(url, body=body, content_type=content_type)
            embedded = await backend.embed(
                EmbeddingRequest(inputs=recorded_body["texts"], model=recorded_body["model"])
            )
            answer = json.loads(body)
            assert embedded.embeddings == tuple(tuple(v) for v in answer["embeddings"]["float"])
            assert embedded.prompt_tokens == answer["meta"]["billed_units"]["input_tokens"]
            assert embedded.model == recorded_body["model"]
        elif recorded_body["stream"]:
            mocked.post(url, body=body, content_type=content_type)
            events = await collect(backend, request_from_recording(recorded_body))
            assert assemble(events) == expected_from_sse(body)
            finish = events[-1]
            assert isinstance(finish, FinishEvent)
            assert finish.model == recorded_body["model"]
        else:
            mocked.post(url, body=body, content_type=content_type)
            response = await backend.chat(request_from_recording(recorded_body))
            expected = expected_from_json(body)
            assert response.content == expected.text
            assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == expected.tool_calls
            assert response.raw_finish_reason == expected.raw_reason
            assert response.finish_reason is FinishReason.STOP
            assert response.model == recorded_body["model"]
            usage = response.usage
            assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
                expected.usage
            )
        assert mocked.requests is not None
        requests = mocked.requests[(recorded_request["method"], URL(url))]
    assert len(requests) == 1
    sent = requests[0].kwargs["json"]
    if url.endswith("/v2/embed"):
        assert {k: sent[k] for k in recorded_body} == recorded_body
        assert sent["embedding_types"] == ["float"]
    else:
        assert sent == recorded_body
    assert requests[0].kwargs["headers"]["Authorization"] == f"Bearer {API_KEY}"


async def test_recorded_tool_call_stream_is_a_tool_calls_finish(
    wire_dir: Path, make_backend: BackendFactory
) -> None:
    """The recorded tool-call stream ends with FinishReason.TOOL_CALLS (raw TOOL_CALL), its
    arguments are complete JSON, and its tool plan is not answer text."""
    body = load_case(wire_dir, "chat_v2_tool_calls_stream")["response"]["body"]
    with aioresponses() as mocked:
        mocked.post(CHAT_URL, body=body, content_type="text/event-stream")
        events = await collect(make_backend())
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    assert (finish.reason, finish.raw_reason) == (FinishReason.TOOL_CALLS, "TOOL_CALL")
    calls = assemble(events).tool_calls
    assert [json.loads(arguments) for _, _, arguments in calls] == [{"location": "Tokyo"}] * 2
    assert not any(isinstance(e, TextDelta) for e in events)


# --- (b) streams over a real loopback server ------------------------------------------------------


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("case", V2_STREAM_CASES)
async def test_recorded_stream_split_at_awkward_offsets(
    case: str, crlf: bool, wire_dir: Path, server: ReplayServer, local: CohereBackend
) -> None:
    """A recorded v2 stream cut across many writes at awkward offsets, with keep-alive
    comments (and LF or CRLF line ends) mixed in, parses to exactly what the recording says."""
    body = load_case(wire_dir, case)["response"]["body"]
    pieces = awkward_sse(body, crlf=crlf, before="event:")
    assert len(pieces) > 20
    server.enqueue(sse_reply(pieces))
    assert assemble(await collect(local)) == expected_from_sse(body)
    assert (server.requests[-1].method, server.requests[-1].path_qs) == ("POST", "/v2/chat")
    assert server.requests[-1].headers["Accept"] == "text/event-stream"


async def test_message_end_completes_without_done(
    wire_dir: Path, server: ReplayServer, local: CohereBackend
) -> None:
    """``message-end`` is the end: a body without the trailing ``data: [DONE]`` completes."""
    body = load_case(wire_dir, "chat_v2_stream")["response"]["body"]
    trimmed = body.replace("data: [DONE]\n\n", "")
    assert trimmed != body
    server.enqueue(sse_reply(trimmed))
    assert assemble(await collect(local)) == expected_from_sse(body)


async def test_stream_ending_before_message_end_is_interrupted(
    wire_dir: Path, server: ReplayServer, local: CohereBackend
) -> None:
    """A body that ends cleanly before ``message-end`` (even after ``content-end``) raises
    StreamInterruptedError with the text delivered so far; never a normal end."""
    body = load_case(wire_dir, "chat_v2_stream")["response"]["body"]
    partial = body[: body.index("event: message-end")]
    server.enqueue(sse_reply(partial))
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(local)
    assert caught.value.partial_text == expected_from_sse(body).text


async def test_connection_cut_mid_stream_is_interrupted(
    server: ReplayServer, local: CohereBackend
) -> None:
    """A connection dropped after content (no message-end) raises StreamInterruptedError."""
    server.enqueue(
        sse_reply(
            [sse(text_event("Ahoy")), b'event: content-delta\ndata: {"type": "con'],
            cut=True,
        )
    )
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(local)
    assert caught.value.partial_text == "Ahoy"


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "content-delta", "delta": ',
        '["content-delta"]',
        '{"type": "content-delta", "delta": {"message": "x"}}',
        '{"type": "tool-call-delta", "delta": {"message": {"tool_calls": [1]}}}',
        '{"type": "message-end", "delta": "x"}',
    ],
    ids=["not-json", "not-object", "message-not-object", "tool-call-not-object", "end-not-object"],
)
async def test_malformed_stream_event(
    frame: str, server: ReplayServer, local: CohereBackend
) -> None:
    """An event that is not JSON or has the wrong shape raises MalformedResponseError naming
    the problem, never a KeyError/TypeError."""
    server.enqueue(sse_reply(sse(frame)))
    with pytest.raises(MalformedResponseError) as caught:
        await collect(local)
    assert "KeyError" not in str(caught.value)


async def test_unknown_and_thinking_events_are_not_text(
    server: ReplayServer, local: CohereBackend
) -> None:
    """Citation, tool-plan and unknown events carry no answer text, and thinking content
    (``content.thinking``) is not text either; usage and cached tokens come from message-end."""
    server.enqueue(
        sse_reply(
            sse(
                {"type": "message-start", "id": "m1", "delta": {"message": {"role": "assistant"}}},
                {
                    "type": "content-start",
                    "index": 0,
                    "delta": {"message": {"content": {"type": "thinking", "thinking": ""}}},
                },
                {
                    "type": "content-delta",
                    "index": 0,
                    "delta": {"message": {"content": {"thinking": "hmm"}}},
                },
                {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "plan"}}},
                {"type": "citation-start", "index": 0, "delta": {"message": {"citations": {}}}},
                {"type": "something-new", "delta": {}},
                text_event("Yes."),
                message_end(tokens={"input_tokens": 5, "output_tokens": 2}, cached_tokens=3),
            )
        )
    )
    events = await collect(local)
    assert assemble(events).text == "Yes."
    usage = [e.usage for e in events if isinstance(e, UsageEvent)][-1]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens) == (5, 2, 3)


@OPERATIONS
async def test_toxic_answer_without_content_is_content_filtered(
    operation: str, server: ReplayServer, local: CohereBackend
) -> None:
    """ERROR_TOXIC with no content raises ContentFilteredError (not an empty answer)."""
    if operation == "stream":
        server.enqueue(sse_reply(sse(message_end("ERROR_TOXIC"))))
    else:
        server.enqueue(
            json_reply(
                {"message": {"role": "assistant", "content": []}, "finish_reason": "ERROR_TOXIC"}
            )
        )
    with pytest.raises(ContentFilteredError) as caught:
        await call(local, operation)
    assert caught.value.code == "ERROR_TOXIC"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("COMPLETE", FinishReason.STOP),
        ("STOP_SEQUENCE", FinishReason.STOP),
        ("MAX_TOKENS", FinishReason.LENGTH),
        ("TOOL_CALL", FinishReason.TOOL_CALLS),
        ("ERROR", FinishReason.ERROR),
        ("ERROR_TOXIC", FinishReason.CONTENT_FILTER),
        ("SOMETHING_NEW", None),
    ],
)
@OPERATIONS
async def test_finish_reason_mapping(
    operation: str,
    raw: str,
    expected: FinishReason | None,
    server: ReplayServer,
    local: CohereBackend,
) -> None:
    """finish_reason values normalise as documented (with content present); unknown ones stay
    raw with reason None."""
    if operation == "stream":
        server.enqueue(sse_reply(sse(text_event("x"), message_end(raw))))
        finish = (await collect(local))[-1]
        assert isinstance(finish, FinishEvent)
        assert (finish.reason, finish.raw_reason) == (expected, raw)
    else:
        content = [{"type": "text", "text": "x"}]
        server.enqueue(
            json_reply({"message": {"role": "assistant", "content": content}, "finish_reason": raw})
        )
        response = await local.chat(HI)
        assert (response.finish_reason, response.raw_finish_reason) == (expected, raw)


async def test_tool_call_answer(server: ReplayServer, local: CohereBackend) -> None:
    """A non-streamed tool-call answer (no recording exists): calls parsed with ids and JSON
    arguments, tool_plan and thinking items kept out of content, billed units used when
    ``tokens`` is absent."""
    server.enqueue(
        json_reply(
            {
                "id": "r1",
                "message": {
                    "role": "assistant",
                    "tool_plan": "I will look it up.",
                    "content": [{"type": "thinking", "thinking": "hmm"}],
                    "tool_calls": [
                        {
                            "id": "get_weather_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"location":"Oslo"}'},
                        }
                    ],
                },
                "finish_reason": "TOOL_CALL",
                "usage": {"billed_units": {"input_tokens": 12, "output_tokens": 7}},
            }
        )
    )
    response = await local.chat(HI)
    assert response.content == ""
    assert response.tool_calls == (
        ToolCall(id="get_weather_1", name="get_weather", arguments='{"location":"Oslo"}'),
    )
    assert response.finish_reason is FinishReason.TOOL_CALLS
    assert (response.prompt_tokens, response.completion_tokens, response.total_tokens) == (
        12,
        7,
        19,
    )


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"message": "x"}',
        b'{"message": {"content": "x"}}',
        b'{"message": {"content": [], "tool_calls": [{"function": {}}]}}',
    ],
    ids=["not-json", "not-object", "message-not-object", "content-not-list", "call-without-name"],
)
async def test_malformed_answer(body: bytes, server: ReplayServer, local: CohereBackend) -> None:
    """An unparsable or wrongly shaped answer raises MalformedResponseError."""
    server.enqueue(ScriptedReply(pieces=body))
    with pytest.raises(MalformedResponseError):
        await local.chat(HI)


# --- requests ----------------------------------------------------------------------------------


async def test_chat_body_carries_every_part_of_the_request(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Messages (assistant text beside tool calls as tool_plan, tool results with their
    tool_call_id), sampling parameters under Cohere's names, tools, a named tool_choice
    (REQUIRED over the narrowed tool list) and a JSON-schema response format are sent."""
    lookup = ToolDefinition(name="lookup", description="Find it.", parameters={"type": "object"})
    other = ToolDefinition(name="other")
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    request = ChatRequest(
        messages=[
            ChatMessage.system("be brief"),
            ChatMessage.user("hi", name="ann"),
            ChatMessage.assistant(
                "Let me look.", tool_calls=[ToolCall(id="c1", name="lookup", arguments="")]
            ),
            ChatMessage.tool("42", tool_call_id="c1"),
            ChatMessage.assistant("It is 42."),
        ],
        temperature=0.2,
        top_p=0.9,
        frequency_penalty=0.1,
        presence_penalty=0.3,
        stop_sequences=["END"],
        tools=[lookup, other],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
    )
    server.enqueue(
        json_reply(
            {"message": {"content": [{"type": "text", "text": "ok"}]}, "finish_reason": "COMPLETE"}
        )
    )
    response = await make_backend(base_url=server.url, max_output_tokens=77).chat(request)
    assert response.content == "ok"
    assert server.requests[-1].path_qs == "/v2/chat"
    assert server.requests[-1].json == {
        "model": "command-test",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "tool_plan": "Let me look.",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
            {"role": "assistant", "content": "It is 42."},
        ],
        "temperature": 0.2,
        "p": 0.9,
        "max_tokens": 77,
        "stop_sequences": ["END"],
        "frequency_penalty": 0.1,
        "presence_penalty": 0.3,
        "tool_choice": "REQUIRED",
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
        "response_format": {"type": "json_object", "json_schema": schema},
        "stream": False,
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("required", "REQUIRED"), ("none", "NONE"), ("auto", None)],
)
async def test_tool_choice_strings(
    choice: str, expected: str | None, server: ReplayServer, local: CohereBackend
) -> None:
    """tool_choice ``required``/``none`` map to REQUIRED/NONE; ``auto`` is Cohere's default
    and is left out; the tool list is kept whole."""
    server.enqueue(json_reply({"message": {"content": []}, "finish_reason": "COMPLETE"}))
    tools = [ToolDefinition(name="f"), ToolDefinition(name="g")]
    await local.chat(attrs.evolve(HI, tools=tools, tool_choice=choice))
    sent = server.requests[-1].json
    assert sent.get("tool_choice") == expected
    assert [t["function"]["name"] for t in sent["tools"]] == ["f", "g"]


async def test_bearer_header_and_no_key(server: ReplayServer, make_backend: BackendFactory) -> None:
    """The API key travels as ``Authorization: Bearer``; without a key none is sent."""
    for key in (API_KEY, None):
        server.enqueue(json_reply({"message": {"content": []}, "finish_reason": "COMPLETE"}))
        await make_backend(
            base_url=server.url, api_key=key, additional_headers={"X-Client-Name": "t"}
        ).chat(HI)
    assert server.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"
    assert "Authorization" not in server.requests[1].headers
    assert all(r.headers["X-Client-Name"] == "t" for r in server.requests)


# --- errors ------------------------------------------------------------------------------------


@OPERATIONS
@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (400, "invalid request: message must not be empty", InvalidRequestError),
        (
            400,
            "too many tokens: total number of tokens in the prompt cannot exceed 4081",
            ContextLengthExceededError,
        ),
        (401, "invalid api token", AuthenticationError),
        (498, "invalid api token", AuthenticationError),
        (404, "model 'nope' not found", ModelNotFoundError),
        (422, "unprocessable", InvalidRequestError),
        (500, "internal server error", BackendUnavailableError),
        (503, "service unavailable", BackendUnavailableError),
    ],
    ids=["400", "context-length", "401", "498", "404", "422", "500", "503"],
)
async def test_error_statuses_map_to_the_error_tree(
    operation: str,
    status: int,
    message: str,
    expected: type[BackendError],
    server: ReplayServer,
    local: CohereBackend,
) -> None:
    """Cohere's ``{"id", "message"}`` error bodies map by status (and message) to the SDK
    error tree; 5xx are retryable, caller errors are not."""
    server.enqueue(json_reply({"id": "e1", "message": message}, status=status))
    with pytest.raises(BackendError) as caught:
        await call(local, operation)
    assert type(caught.value) is expected
    assert (caught.value.status, caught.value.message) == (status, message)
    assert caught.value.retryable is (status >= 500)


@OPERATIONS
async def test_429_retry_after(operation: str, server: ReplayServer, local: CohereBackend) -> None:
    """HTTP 429 raises a retryable RateLimitedError with Retry-After (seconds or HTTP date)."""
    when = datetime.now(UTC) + timedelta(seconds=120)
    for value in ("7", email.utils.format_datetime(when, usegmt=True)):
        server.enqueue(
            json_reply({"message": "slow down"}, status=429, headers={"Retry-After": value})
        )
    errors = []
    for _ in range(2):
        with pytest.raises(RateLimitedError) as caught:
            await call(local, operation)
        errors.append(caught.value)
    assert (errors[0].retry_after, errors[0].retryable) == (7.0, True)
    assert errors[1].retry_after is not None
    assert 100.0 < errors[1].retry_after <= 120.0


async def test_api_key_never_leaks_into_repr_or_errors(
    server: ReplayServer, local: CohereBackend
) -> None:
    """The API key appears neither in repr(backend) nor in errors, even when echoed back."""
    errors: list[BaseException] = []
    for operation in ("chat", "stream"):
        server.enqueue(json_reply({"message": f"invalid api token {API_KEY}"}, status=401))
        with pytest.raises(AuthenticationError) as caught:
            await call(local, operation)
        errors.append(caught.value)
    assert API_KEY not in repr(local)
    for error in errors:
        assert API_KEY not in f"{error} {error!r} {error.args}"


# --- embeddings, models, health ------------------------------------------------------------


async def test_embeddings_batch_96_per_call_in_order(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """More than 96 texts go in calls of at most 96, vectors come back in input order and
    billed input tokens are summed; metadata ``input_type`` and ``dimensions`` are sent."""
    texts = [f"t{i}" for i in range(100)]
    server.enqueue(
        json_reply(
            {
                "embeddings": {"float": [[float(i)] for i in range(96)]},
                "meta": {"billed_units": {"input_tokens": 96}},
            }
        )
    )
    server.enqueue(
        json_reply(
            {
                "embeddings": {"float": [[float(i)] for i in range(96, 100)]},
                "meta": {"billed_units": {"input_tokens": 4}},
            }
        )
    )
    backend = make_backend(base_url=server.url, model_name="embed-v4.0")
    request = EmbeddingRequest(
        inputs=texts, dimensions=256, metadata={"input_type": "search_query"}
    )
    response = await backend.embed(request)
    assert response.embeddings == tuple((float(i),) for i in range(100))
    assert (response.prompt_tokens, response.model) == (100, "embed-v4.0")
    sent = [r.json for r in server.requests]
    assert [len(s["texts"]) for s in sent] == [96, 4]
    assert [t for s in sent for t in s["texts"]] == texts
    assert all(
        (s["input_type"], s["output_dimension"], s["embedding_types"], s["model"])
        == ("search_query", 256, ["float"], "embed-v4.0")
        for s in sent
    )


@pytest.mark.parametrize(
    "body",
    [
        {"embeddings": {"float": [[1.0]]}},
        {"embeddings": {"float": [["x"], [1]]}},
        {"embeddings": []},
    ],
    ids=["too-few", "not-numbers", "no-float"],
)
async def test_malformed_embeddings(
    body: dict[str, Any], server: ReplayServer, local: CohereBackend
) -> None:
    """An embed answer with the wrong count or shape raises MalformedResponseError."""
    server.enqueue(json_reply(body))
    with pytest.raises(MalformedResponseError):
        await local.embed(EmbeddingRequest(inputs=["a", "b"]))


async def test_list_models_follows_pages(server: ReplayServer, local: CohereBackend) -> None:
    """models() lists every page of GET /v1/models by name."""
    server.enqueue(
        json_reply(
            {"models": [{"name": "command-a"}, {"name": "embed-v4.0"}], "next_page_token": "p2"}
        )
    )
    server.enqueue(json_reply({"models": [{"name": "rerank-v3.5"}]}))
    assert await local.models() == ["command-a", "embed-v4.0", "rerank-v3.5"]
    assert [r.path_qs for r in server.requests] == [
        "/v1/models?page_size=1000",
        "/v1/models?page_size=1000&page_token=p2",
    ]


async def test_health_gets_the_configured_model(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """The health check is GET /v1/models/{model} (proves key and model); a 401 makes the
    backend unavailable; without a model it lists one model."""
    backend = make_backend(base_url=server.url)
    server.enqueue(json_reply({"name": "command-test"}))
    assert (await backend.get_health()).available
    server.enqueue(json_reply({"message": "invalid api token"}, status=401))
    health = await backend.get_health()
    assert not health.available
    assert health.error is not None
    assert "AuthenticationError" in health.error
    server.enqueue(json_reply({"models": []}))
    assert (await make_backend(base_url=server.url, model_name=None).get_health()).available
    assert [r.path_qs for r in server.requests] == [
        "/v1/models/command-test",
        "/v1/models/command-test",
        "/v1/models?page_size=1",
    ]


def test_capabilities(make_backend: BackendFactory) -> None:
    """Chat, streaming, tools, embeddings and model listing are all declared."""
    assert {c.value for c in make_backend().capabilities} == {
        "chat",
        "streaming",
        "tools",
        "embeddings",
        "models",
    }


async def test_bad_frame_amid_a_healthy_stream_is_skipped_and_counted(
    server: ReplayServer, local: CohereBackend
) -> None:
    """After content has flowed, one undecodable frame is skipped; the finish counts it."""

    def text(piece: str) -> dict[str, object]:
        return {
            "type": "content-delta",
            "index": 0,
            "delta": {"message": {"content": {"text": piece}}},
        }

    end = {"type": "message-end", "delta": {"finish_reason": "COMPLETE"}}
    server.enqueue(
        sse_reply(sse(text("Hel"), '{"type": "content-delta", "delta": ', text("lo"), end))
    )
    events = await collect(local)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello"
    assert isinstance(events[-1], FinishEvent)
    assert events[-1].malformed_events == 1
