"""OllamaBackend: recorded-interaction conformance, NDJSON streaming robustness, tools,
embeddings, models and error mapping."""

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

from llmbackend.backends import _ollama_wire as wire
from llmbackend.backends.ollama import OllamaBackend
from llmbackend.errors import (
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
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
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    UsageEvent,
)
from llmbackend.settings import LlmBackendConfig
from llmbackend.testing import fold_stream
from llmbackend.testing._replay import (
    ReceivedRequest,
    ReplayServer,
    ScriptedReply,
    json_reply,
    load_wire_fixture,
    split_awkwardly,
)

API_KEY = "ollama-test-SECRET-0123456789"
HI = ChatRequest(messages=[ChatMessage.user("hi")])
#: The error each recorded HTTP status must raise.
ERROR_TYPES: dict[int, type[BackendError]] = {404: ModelNotFoundError}
#: Same location as the ``wire_dir`` fixture; read at collection time to parametrize.
_OLLAMA_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "wire" / "ollama"
OLLAMA_CASES = sorted(path.stem for path in _OLLAMA_DIR.glob("*.yaml"))


#: The models the loopback Ollama has pulled.
MODELS = ("llama3:latest", "nomic-embed-text:latest")


# --- a loopback Ollama server ----------------------------------------------------------------


def ndjson(*lines: dict[str, Any]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def ndjson_reply(*pieces: bytes, **options: Any) -> ScriptedReply:
    """An NDJSON answer written as ``pieces``, one write each (a line may span writes)."""
    return ScriptedReply(pieces=pieces, content_type="application/x-ndjson", **options)


def raw(*lines: dict[str, Any]) -> ScriptedReply:
    """An NDJSON body of ``lines`` in one write."""
    return ndjson_reply(ndjson(*lines))


def error_reply(
    status: int, body: Any = None, headers: dict[str, str] | None = None
) -> ScriptedReply:
    """An HTTP error with Ollama's ``{"error": ...}`` body (a text body is sent as it is)."""
    body = body or {"error": f"fake error {status}"}
    if isinstance(body, str):
        return ScriptedReply(pieces=body, status=status, headers=headers or {})
    return json_reply(body, status=status, headers=headers or {})


def ollama_api(request: ReceivedRequest) -> ScriptedReply:
    """What a healthy Ollama answers to ``/api/chat`` (streamed or not), ``/api/embed`` and
    ``/api/tags`` when nothing is scripted."""
    body = request.json
    route = (request.method, request.path)
    if route == ("POST", "/api/chat"):
        model = body["model"]
        if not body["stream"]:
            return json_reply(
                {
                    "model": model,
                    "message": {"role": "assistant", "content": "Hello there"},
                    "done_reason": "stop",
                    "done": True,
                    "prompt_eval_count": 3,
                    "eval_count": 2,
                }
            )
        lines = [
            {"model": model, "message": {"role": "assistant", "content": "Hello"}, "done": False},
            {"model": model, "message": {"role": "assistant", "content": " there"}, "done": False},
            {
                "model": model,
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 3,
                "eval_count": 2,
            },
        ]
        return raw(*lines)
    if route == ("POST", "/api/embed"):
        size = body.get("dimensions", 3)
        vectors = [[float(len(text) + i) for i in range(size)] for text in body["input"]]
        tokens = sum(len(text.split()) for text in body["input"])
        return json_reply(
            {"model": body["model"], "embeddings": vectors, "prompt_eval_count": tokens}
        )
    if route == ("GET", "/api/tags"):
        return json_reply({"models": [{"name": name, "model": name, "size": 1} for name in MODELS]})
    return ScriptedReply(pieces="404 page not found", status=404, content_type="text/plain")


@pytest.fixture
def server(replay_server: ReplayServer) -> ReplayServer:
    """The loopback Ollama: scripted replies first, else what a healthy Ollama answers."""
    replay_server.default = ollama_api
    return replay_server


BackendFactory = Callable[..., OllamaBackend]


@pytest.fixture
def make_backend(session: aiohttp.ClientSession, server: ReplayServer) -> BackendFactory:
    def build(**overrides: Any) -> OllamaBackend:
        options: dict[str, Any] = {
            "name": "ol",
            "type": "ollama",
            "base_url": server.url,
            "model_name": "llama3",
            "timeout_seconds": 10.0,
        }
        options.update(overrides)
        return OllamaBackend(LlmBackendConfig(**options), session_factory=lambda: session)

    return build


async def collect(backend: OllamaBackend, request: ChatRequest = HI) -> list[StreamEvent]:
    return [event async for event in backend.stream(request)]


# --- what a recording says ------------------------------------------------------------------


class Expected(NamedTuple):
    text: str
    tool_calls: list[tuple[str, str]]  # (name, arguments JSON text)
    raw_reason: str | None
    model: str
    usage: tuple[int, int]  # prompt, completion


def _answer_text(obj: dict[str, Any]) -> str:
    text = obj["message"]["content"] if "message" in obj else obj.get("response", "")
    assert isinstance(text, str)
    return text


def expected_from_object(obj: dict[str, Any]) -> Expected:
    """What a non-streamed answer says, read straight from its JSON."""
    calls = [
        (c["function"]["name"], json.dumps(c["function"]["arguments"]))
        for c in obj.get("message", {}).get("tool_calls") or []
    ]
    usage = (obj.get("prompt_eval_count", 0), obj.get("eval_count", 0))
    return Expected(_answer_text(obj), calls, obj.get("done_reason"), obj["model"], usage)


def expected_from_ndjson(body: str, *, upto: int | None = None) -> Expected:
    """What a recorded NDJSON stream says (optionally only its first ``upto`` lines)."""
    lines = [json.loads(line) for line in body.splitlines() if line.strip()][:upto]
    text = "".join(_answer_text(line) for line in lines)
    calls = [
        (c["function"]["name"], json.dumps(c["function"]["arguments"]))
        for line in lines
        for c in line.get("message", {}).get("tool_calls") or []
    ]
    last = lines[-1]
    usage = (last.get("prompt_eval_count", 0), last.get("eval_count", 0))
    return Expected(text, calls, last.get("done_reason"), last["model"], usage)


def assemble(events: list[StreamEvent]) -> Expected:
    """Fold stream events the way a caller would."""
    assert sum(isinstance(e, UsageEvent) for e in events) == 1, "usage is reported once"
    r = fold_stream(events)
    calls = [(c.name, c.arguments) for c in r.tool_calls]
    return Expected(
        r.content, calls, r.raw_finish_reason, r.model, (r.prompt_tokens, r.completion_tokens)
    )


def load_case(wire_dir: Path, case: str) -> dict[str, Any]:
    return load_wire_fixture(wire_dir / "ollama" / f"{case}.yaml")


def request_from_recording(body: dict[str, Any]) -> ChatRequest:
    """The ChatRequest equivalent to a recorded ``/api/chat`` body."""
    messages = [
        ChatMessage(
            role=m["role"],
            content=m.get("content"),
            name=m.get("tool_name"),
            tool_calls=[
                ToolCall(
                    id=f"rec-{i}",
                    name=c["function"]["name"],
                    arguments=json.dumps(c["function"]["arguments"]),
                )
                for i, c in enumerate(m.get("tool_calls") or [])
            ],
        )
        for m in body["messages"]
    ]
    options = body.get("options") or {}
    fmt = body.get("format") or None
    response_format: dict[str, Any] | None = None
    if fmt == "json":
        response_format = {"type": "json_object"}
    elif isinstance(fmt, dict):
        response_format = {"type": "json_schema", "json_schema": {"name": "r", "schema": fmt}}
    return ChatRequest(
        messages=messages,
        model=body["model"],
        temperature=options.get("temperature"),
        max_tokens=options.get("num_predict"),
        top_p=options.get("top_p"),
        frequency_penalty=options.get("frequency_penalty"),
        presence_penalty=options.get("presence_penalty"),
        stop_sequences=options.get("stop") or (),
        tools=[
            ToolDefinition(
                name=t["function"]["name"],
                description=t["function"].get("description", ""),
                parameters=t["function"]["parameters"],
            )
            for t in body.get("tools") or []
        ],
        response_format=response_format,
    )


def assert_essential_fields(sent: dict[str, Any], recorded: dict[str, Any]) -> None:
    """The body we built carries the recorded request's meaning."""
    assert sent["model"] == recorded["model"]
    assert sent["messages"] == recorded["messages"]
    assert sent["stream"] is recorded.get("stream", True)  # Ollama streams unless told not to
    assert sent.get("options", {}) == (recorded.get("options") or {})
    assert sent.get("tools", []) == (recorded.get("tools") or [])
    assert sent.get("format") == (recorded.get("format") or None)


def check_generate_recording(recorded_body: dict[str, Any], body: str) -> None:
    """The shared answer / NDJSON parsing reads an ``/api/generate`` recording (``response``
    instead of ``message.content``) to what it says."""
    if recorded_body.get("stream"):
        state = wire.StreamState(backend="ol", model=recorded_body["model"])
        events: list[StreamEvent] = []
        for line in body.splitlines():
            if line.strip():
                events += state.feed(wire.decode_line(line, "ol"))
        assert state.done
        assert state.usage is not None
        events += [UsageEvent(usage=state.usage), state.finish()]
        assert assemble(events) == expected_from_ndjson(body)
        return
    parsed = wire.parse_answer(json.loads(body), "ol")
    expected = expected_from_object(json.loads(body))
    assert (parsed.content, parsed.raw_reason, parsed.model) == (
        expected.text,
        expected.raw_reason,
        expected.model,
    )
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == expected.usage
    assert parsed.reason is FinishReason.STOP


# --- (a) conformance with the recorded interactions ---------------------------------------------


def test_recorded_ollama_files_exist(wire_dir: Path) -> None:
    """The conformance parameters below are the files of the shared ollama fixture folder."""
    assert (wire_dir / "ollama") == _OLLAMA_DIR
    assert OLLAMA_CASES, "no ollama recordings found"


@pytest.mark.parametrize("case", OLLAMA_CASES)
async def test_recorded_interaction_conformance(
    case: str, wire_dir: Path, session: aiohttp.ClientSession
) -> None:
    """Replaying a recorded Ollama answer yields what the recording says (content, tool calls,
    finish reason, tokens, vectors, or the exact error), and our request has the recorded
    method, path and essential body fields. The ``/api/generate`` recordings (an endpoint the
    backend does not call) are checked at parser level: the shared answer / NDJSON parsing
    reads them to what they say."""
    recording = load_case(wire_dir, case)
    recorded_request, recorded_response = recording["request"], recording["response"]
    recorded_body = json.loads(recorded_request["body"])
    path = recorded_request["url_path"]
    status = recorded_response["status"]
    if path == "/api/generate":
        check_generate_recording(recorded_body, recorded_response["body"])
        return
    assert path in ("/api/chat", "/api/embed"), f"no conformance rule for {path}"
    url = recorded_request["base_url"] + path
    headers = {k.lower(): v for k, v in recorded_response["headers"].items()}
    config = LlmBackendConfig(name="ol", type="ollama", base_url=recorded_request["base_url"])
    backend = OllamaBackend(config, session_factory=lambda: session)
    with aioresponses() as mocked:
        mocked.add(
            url,
            method=recorded_request["method"],
            status=status,
            body=recorded_response["body"],
            content_type=headers.get("content-type", "application/json").split(";")[0],
        )
        if path == "/api/embed":
            inputs = recorded_body["input"]
            inputs = [inputs] if isinstance(inputs, str) else inputs
            embedded = await backend.embed(
                EmbeddingRequest(inputs=inputs, model=recorded_body["model"])
            )
            answer = json.loads(recorded_response["body"])
            assert embedded.embeddings == tuple(tuple(v) for v in answer["embeddings"])
            assert embedded.prompt_tokens == answer["prompt_eval_count"]
            assert embedded.model == answer["model"]
        elif status >= 400:
            with pytest.raises(BackendError) as caught:
                await backend.chat(request_from_recording(recorded_body))
            assert type(caught.value) is ERROR_TYPES[status]
            assert caught.value.status == status
            assert caught.value.message == json.loads(recorded_response["body"])["error"]
        elif recorded_body.get("stream", True):
            got = assemble(await collect(backend, request_from_recording(recorded_body)))
            assert got == expected_from_ndjson(recorded_response["body"])
        else:
            response = await backend.chat(request_from_recording(recorded_body))
            expected = expected_from_object(json.loads(recorded_response["body"]))
            assert response.content == expected.text
            assert [(c.name, c.arguments) for c in response.tool_calls] == expected.tool_calls
            assert response.raw_finish_reason == expected.raw_reason
            assert response.model == expected.model
            assert (response.prompt_tokens, response.completion_tokens) == expected.usage
            assert response.total_tokens == sum(expected.usage)
        assert mocked.requests is not None
        calls = mocked.requests[(recorded_request["method"], URL(url))]
    assert len(calls) == 1
    sent = calls[0].kwargs["json"]
    if path == "/api/embed":
        inputs = recorded_body["input"]
        assert sent == {
            "model": recorded_body["model"],
            "input": [inputs] if isinstance(inputs, str) else inputs,
        }
    else:
        assert_essential_fields(sent, recorded_body)


# --- (b) streams over a real loopback server ------------------------------------------------------


def awkward_pieces(body: str, *, crlf: bool = False) -> list[bytes]:
    """``body`` with blank lines between objects, cut at awkward byte offsets (small primes),
    so JSON objects, escapes and multibyte characters are cut mid-way."""
    text = body.replace("}\n{", "}\n\n{")
    if crlf:
        text = text.replace("\n", "\r\n")
    return split_awkwardly(text.encode())


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
async def test_recorded_stream_split_at_awkward_offsets(
    crlf: bool, wire_dir: Path, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """The recorded NDJSON stream cut across many TCP writes at awkward offsets, with blank
    lines (and CRLF line ends) mixed in, parses to exactly what the recording says."""
    body = load_case(wire_dir, "chat_stream")["response"]["body"]
    pieces = awkward_pieces(body, crlf=crlf)
    assert len(pieces) > 20
    server.enqueue(ndjson_reply(*pieces))
    events = await collect(make_backend())
    assert assemble(events) == expected_from_ndjson(body)
    assert server.requests[-1].json["stream"] is True


async def test_multibyte_text_split_inside_a_character(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A UTF-8 character cut between two writes still decodes to the right text."""
    body = (
        '{"model":"m","message":{"role":"assistant","content":"héllo ✓"},"done":false}\n'
        '{"model":"m","message":{"role":"assistant","content":""},"done":true,'
        '"done_reason":"stop"}\n'
    ).encode()
    cut = body.index("✓".encode()) + 1
    server.enqueue(ndjson_reply(body[:cut], body[cut:]))
    assert assemble(await collect(make_backend())).text == "héllo ✓"


async def test_body_ending_without_done_raises_stream_interrupted(
    wire_dir: Path, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A body that ends cleanly before the ``done: true`` line raises StreamInterruptedError
    with the text delivered so far; it is never presented as a normal end."""
    body = load_case(wire_dir, "chat_stream")["response"]["body"]
    lines = body.splitlines(keepends=True)
    partial = "".join(lines[:-2])
    server.enqueue(ndjson_reply(partial.encode()))
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(make_backend())
    expected = "".join(json.loads(line)["message"]["content"] for line in lines[:-2])
    assert expected
    assert caught.value.partial_text == expected


async def test_empty_body_is_a_retryable_failure(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A stream with neither content nor ``done`` is an ordinary, retryable failed attempt."""
    server.enqueue(ndjson_reply(b""))
    with pytest.raises(BackendUnavailableError) as caught:
        await collect(make_backend())
    assert caught.value.retryable


async def test_connection_cut_mid_answer_raises_stream_interrupted(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A connection dropped after two lines raises StreamInterruptedError with their text."""
    line = {"model": "m", "message": {"role": "assistant", "content": "ab"}, "done": False}
    server.enqueue(ndjson_reply(ndjson(line), ndjson(line), cut=True))
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(make_backend())
    assert caught.value.partial_text == "abab"
    assert isinstance(caught.value.__cause__, BackendUnavailableError)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("model 'gone' not found", ModelNotFoundError),
        ("an unexpected error occurred", BackendUnavailableError),
        ("the input is too long for the context length", ContextLengthExceededError),
    ],
)
async def test_error_line_before_content_raises_the_mapped_error(
    message: str, expected: type[BackendError], server: ReplayServer, make_backend: BackendFactory
) -> None:
    """An ``{"error": ...}`` line after the 200 status raises the error it describes."""
    server.enqueue(raw({"error": message}))
    with pytest.raises(expected) as caught:
        await collect(make_backend())
    assert type(caught.value) is expected
    assert caught.value.message == message


async def test_error_line_after_content_is_an_interruption(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """After text reached the caller, an error line is a cut stream caused by that error."""
    server.enqueue(
        raw(
            {"model": "m", "message": {"role": "assistant", "content": "par"}, "done": False},
            {"error": "an unexpected error occurred"},
        )
    )
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(make_backend())
    assert caught.value.partial_text == "par"
    assert isinstance(caught.value.__cause__, BackendUnavailableError)


@pytest.mark.parametrize(
    "body",
    [b'{"model": "m", "message": {"content": "x"\n', b"[1, 2]\n", b'{"message": "nope"}\n'],
    ids=["cut-json", "not-an-object", "message-not-object"],
)
async def test_malformed_line_raises_malformed_response(
    body: bytes, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A line that is not a well-formed answer object raises MalformedResponseError."""
    server.enqueue(ndjson_reply(body))
    with pytest.raises(MalformedResponseError) as caught:
        await collect(make_backend())
    assert "KeyError" not in str(caught.value)


async def test_malformed_line_amid_a_healthy_stream_is_skipped_and_counted(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """After content, one line that is not JSON is skipped; the count comes with the finish."""
    server.enqueue(
        ndjson_reply(
            ndjson({"model": "m", "message": {"content": "Hel"}, "done": False}),
            b'{"model": "m", "message": {"content": \n',
            ndjson(
                {"model": "m", "message": {"content": "lo"}, "done": True, "done_reason": "stop"}
            ),
        )
    )
    events = await collect(make_backend())
    assert assemble(events).text == "Hello"
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    assert finish.malformed_events == 1


async def test_lines_after_done_are_ignored(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """The ``done: true`` line ends the answer: one FinishEvent, nothing read after it."""
    server.enqueue(
        raw(
            {"model": "m", "message": {"content": "ok"}, "done": True, "done_reason": "length"},
            {"model": "m", "message": {"content": "late"}, "done": False},
        )
    )
    result = assemble(await collect(make_backend()))
    assert (result.text, result.raw_reason) == ("ok", "length")


# --- tools ------------------------------------------------------------------------------------

WEATHER_CALL = {"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}


async def test_tool_call_answer_gets_stable_ids_and_json_arguments(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Tool calls (arguments as an object, no id) become ToolCalls with JSON-text arguments and
    generated ids that are stable across calls; finish reason tool_calls, raw ``stop`` kept."""
    answer = {
        "model": "llama3.1",
        "message": {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
        "done_reason": "stop",
        "done": True,
        "prompt_eval_count": 40,
        "eval_count": 9,
    }
    server.enqueue(json_reply(answer), json_reply(answer))
    backend = make_backend()
    first, second = await backend.chat(HI), await backend.chat(HI)
    [call] = first.tool_calls
    assert (call.name, call.parsed_arguments()) == ("get_weather", {"city": "Paris", "days": 2})
    assert call.id
    assert call.id.startswith("call_0_")
    assert second.tool_calls == first.tool_calls
    assert first.finish_reason is FinishReason.TOOL_CALLS
    assert first.raw_finish_reason == "stop"
    assert (first.prompt_tokens, first.completion_tokens, first.total_tokens) == (40, 9, 49)


async def test_streamed_tool_calls_match_the_whole_answer(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Streamed tool calls arrive whole as ToolCallDeltas (index per call) with the same
    ids as the non-streamed answer would give; an id sent by Ollama is kept."""
    second = {"id": "call_from_server", "function": {"name": "f", "arguments": {}}}
    server.enqueue(
        raw(
            {"model": "m", "message": {"content": "", "tool_calls": [WEATHER_CALL]}, "done": False},
            {"model": "m", "message": {"content": "", "tool_calls": [second]}, "done": False},
            {"model": "m", "message": {"content": ""}, "done": True, "done_reason": "stop"},
        )
    )
    events = await collect(make_backend())
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    expected_id = wire.tool_call_id(
        0, "get_weather", json.dumps(WEATHER_CALL["function"]["arguments"])
    )
    assert [(d.index, d.id, d.name) for d in deltas] == [
        (0, expected_id, "get_weather"),
        (1, "call_from_server", "f"),
    ]
    assert json.loads(deltas[0].arguments_delta) == {"city": "Paris", "days": 2}
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    assert (finish.reason, finish.raw_reason) == (FinishReason.TOOL_CALLS, "stop")


async def test_tool_round_trip_request_shape(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Assistant tool calls are sent as ``{function: {name, arguments: <object>}}`` and a tool
    result carries ``tool_name`` (its own name, else the name of the call whose id it
    answers); tools are sent in the OpenAI function shape."""
    tool = ToolDefinition(name="get_weather", description="Weather.", parameters={"type": "object"})
    request = ChatRequest(
        messages=[
            ChatMessage.user("weather?"),
            ChatMessage.assistant(
                tool_calls=[
                    ToolCall(id="c1", name="get_weather", arguments='{"city": "Paris"}'),
                    ToolCall(id="c2", name="get_time", arguments=""),
                ]
            ),
            ChatMessage.tool("sunny", tool_call_id="c1"),
            ChatMessage.tool("noon", tool_call_id="unknown", name="get_time"),
            ChatMessage.tool("?", tool_call_id="nobody"),
        ],
        tools=[tool],
        tool_choice="auto",
    )
    await make_backend().chat(request)
    sent = server.requests[-1].json
    assert sent["messages"] == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "get_time", "arguments": {}}},
            ],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "tool", "content": "noon", "tool_name": "get_time"},
        {"role": "tool", "content": "?"},
    ]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather.",
                "parameters": {"type": "object"},
            },
        }
    ]
    assert "tool_choice" not in sent


async def test_tool_choice_none_sends_no_tools(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Ollama has no tool_choice; ``none`` is honoured by not offering the tools."""
    request = attrs.evolve(HI, tools=[ToolDefinition(name="f")], tool_choice="none")
    await make_backend().chat(request)
    assert "tools" not in server.requests[-1].json


async def test_invalid_tool_arguments_in_history_fail_before_io(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A history tool call whose arguments are not JSON is a caller error; nothing is sent."""
    bad = ChatMessage.assistant(tool_calls=[ToolCall(id="c", name="f", arguments="{oops")])
    with pytest.raises(InvalidRequestError, match="'f'"):
        await make_backend().chat(ChatRequest(messages=[ChatMessage.user("x"), bad]))
    assert server.requests == []


# --- request shape ------------------------------------------------------------------------------


async def test_chat_body_maps_every_parameter(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Sampling parameters go into ``options`` under Ollama's names (max_tokens ->
    num_predict), ``stream: false`` is explicit, json_object becomes ``format: "json"``,
    and a user ``name`` (unknown to Ollama) is dropped."""
    request = ChatRequest(
        messages=[ChatMessage.system("be brief"), ChatMessage.user("hi", name="ann")],
        temperature=0.2,
        top_p=0.9,
        frequency_penalty=0.1,
        presence_penalty=0.3,
        stop_sequences=["END"],
        response_format={"type": "json_object"},
    )
    response = await make_backend(max_output_tokens=77).chat(request)
    assert (response.content, response.model, response.finish_reason) == (
        "Hello there",
        "llama3",
        FinishReason.STOP,
    )
    recorded = server.requests[-1]
    assert (recorded.method, recorded.path) == ("POST", "/api/chat")
    assert recorded.json == {
        "model": "llama3",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
        "stream": False,
        "options": {
            "temperature": 0.2,
            "num_predict": 77,
            "top_p": 0.9,
            "stop": ["END"],
            "frequency_penalty": 0.1,
            "presence_penalty": 0.3,
        },
        "format": "json",
    }


SCHEMA = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}, SCHEMA),
        (SCHEMA, SCHEMA),
        ({"type": "text"}, None),
    ],
    ids=["json_schema", "bare-schema", "text"],
)
async def test_response_format_becomes_format(
    response_format: dict[str, Any],
    expected: Any,
    server: ReplayServer,
    make_backend: BackendFactory,
) -> None:
    """A JSON schema (OpenAI json_schema shape or bare) is sent as ``format``; text sends none."""
    await make_backend().chat(attrs.evolve(HI, response_format=response_format))
    assert server.requests[-1].json.get("format") == expected


@pytest.mark.parametrize(
    "response_format",
    [{"type": "json_schema", "json_schema": {"name": "p"}}, {"type": "grammar"}],
    ids=["schema-missing", "unknown-type"],
)
async def test_unusable_response_format_fails_before_io(
    response_format: dict[str, Any], server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A response_format Ollama cannot express raises InvalidRequestError; nothing is sent."""
    with pytest.raises(InvalidRequestError):
        await make_backend().chat(attrs.evolve(HI, response_format=response_format))
    assert server.requests == []


def test_default_base_url_and_capabilities(session: aiohttp.ClientSession) -> None:
    """Without base_url the backend talks to http://localhost:11434; every capability is
    declared and there is no default model."""
    backend = OllamaBackend(
        LlmBackendConfig(name="o", type="ollama"), session_factory=lambda: session
    )
    assert backend.url("api/chat") == "http://localhost:11434/api/chat"
    assert backend.model is None
    assert {c.value for c in backend.capabilities} == {
        "chat",
        "streaming",
        "tools",
        "embeddings",
        "models",
    }


# --- embeddings and models ---------------------------------------------------------------------


async def test_embeddings_in_input_order_with_dimensions(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """``/api/embed`` gets the input list (and ``dimensions``); one vector per input comes
    back in order, with ``prompt_eval_count`` as the prompt tokens."""
    backend = make_backend(model_name="nomic-embed-text")
    response = await backend.embed(EmbeddingRequest(inputs=["a b", "cde"], dimensions=4))
    assert response.embeddings == ((3.0, 4.0, 5.0, 6.0), (3.0, 4.0, 5.0, 6.0))
    assert (response.prompt_tokens, response.model, response.backend) == (
        3,
        "nomic-embed-text",
        "ol",
    )
    assert server.requests[-1].json == {
        "model": "nomic-embed-text",
        "input": ["a b", "cde"],
        "dimensions": 4,
    }


@pytest.mark.parametrize(
    "answer",
    [{"embeddings": [[1.0]]}, {"embeddings": [[1.0], ["x"]]}, {"model": "m"}, []],
    ids=["too-few", "not-numbers", "missing", "not-an-object"],
)
async def test_malformed_embeddings_raise_malformed_response(
    answer: Any, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Missing, miscounted or non-numeric vectors raise MalformedResponseError."""
    server.enqueue(json_reply(answer))
    with pytest.raises(MalformedResponseError):
        await make_backend().embed(EmbeddingRequest(inputs=["x", "y"]))


async def test_models_and_availability_use_api_tags(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """``models()`` lists ``models[].name`` from GET /api/tags, which is also the health check;
    a 503 there makes the backend unavailable."""
    backend = make_backend()
    assert await backend.models() == list(MODELS)
    assert (await backend.get_health()).available
    server.enqueue(error_reply(503))
    health = await backend.get_health()
    assert not health.available
    assert health.error is not None
    assert "BackendUnavailableError" in health.error
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/api/tags")] * 3


async def test_malformed_model_list(server: ReplayServer, make_backend: BackendFactory) -> None:
    """A tags answer without a models array raises MalformedResponseError."""
    server.enqueue(json_reply({"tags": []}))
    with pytest.raises(MalformedResponseError):
        await make_backend().models()


# --- errors ------------------------------------------------------------------------------------

OPERATIONS = pytest.mark.parametrize("operation", ["chat", "stream"])


async def call(backend: OllamaBackend, operation: str) -> object:
    if operation == "stream":
        return await collect(backend)
    return await backend.chat(HI)


@OPERATIONS
@pytest.mark.parametrize(
    ("status", "body", "expected", "retryable"),
    [
        (400, {"error": "invalid options"}, InvalidRequestError, False),
        (400, {"error": "model 'x' not found, try pulling it first"}, ModelNotFoundError, False),
        (401, {"error": "unauthorized"}, AuthenticationError, False),
        (403, {"error": "forbidden"}, AuthenticationError, False),
        (404, {"error": "model 'x' not found"}, ModelNotFoundError, False),
        (408, {"error": "timeout"}, BackendUnavailableError, True),
        (500, {"error": "llama runner process has terminated"}, BackendUnavailableError, True),
        (503, "Service Unavailable", BackendUnavailableError, True),
    ],
)
async def test_error_status_mapping(
    operation: str,
    status: int,
    body: Any,
    expected: type[BackendError],
    retryable: bool,
    server: ReplayServer,
    make_backend: BackendFactory,
) -> None:
    """Each HTTP error status maps to its SDK error, with the status and Ollama's message."""
    server.enqueue(error_reply(status, body))
    with pytest.raises(BackendError) as caught:
        await call(make_backend(), operation)
    assert type(caught.value) is expected
    assert (caught.value.status, caught.value.retryable) == (status, retryable)
    assert caught.value.message == (body["error"] if isinstance(body, dict) else body)


@OPERATIONS
async def test_429_retry_after(
    operation: str, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """HTTP 429 raises a retryable RateLimitedError honouring Retry-After (seconds or date)."""
    when = datetime.now(UTC) + timedelta(seconds=120)
    server.enqueue(error_reply(429, headers={"Retry-After": "7"}))
    server.enqueue(
        error_reply(429, headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)})
    )
    backend = make_backend()
    with pytest.raises(RateLimitedError) as seconds:
        await call(backend, operation)
    with pytest.raises(RateLimitedError) as date:
        await call(backend, operation)
    assert (seconds.value.retry_after, seconds.value.retryable) == (7.0, True)
    assert date.value.retry_after is not None
    assert 100.0 < date.value.retry_after <= 120.0


@pytest.mark.parametrize(
    "body", [b"{not json", b"[]", b'{"message": 3}', b'{"message": {"tool_calls": {}}}']
)
async def test_malformed_answer_raises_malformed_response(
    body: bytes, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """An unparsable or wrongly shaped chat answer raises MalformedResponseError."""
    server.enqueue(ScriptedReply(pieces=body))
    with pytest.raises(MalformedResponseError):
        await make_backend().chat(HI)


async def test_error_object_with_200_status_is_mapped(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A non-streamed ``{"error": ...}`` answer with status 200 raises the mapped error."""
    server.enqueue(json_reply({"error": "model 'x' not found"}))
    with pytest.raises(ModelNotFoundError):
        await make_backend().chat(HI)


@OPERATIONS
async def test_connection_refused_is_unavailable(
    operation: str, make_backend: BackendFactory
) -> None:
    """A port nobody listens on raises BackendUnavailableError and fails the health check."""
    async with ReplayServer() as stopped:
        url = stopped.url
    backend = make_backend(base_url=url)
    with pytest.raises(BackendUnavailableError):
        await call(backend, operation)
    assert (await backend.get_health()).available is False


async def test_api_key_is_sent_but_never_leaks(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A configured key goes out as a Bearer token, and never appears in repr(backend) or in
    errors, even when a proxy echoes it back; without a key no Authorization is sent."""
    backend = make_backend(api_key=API_KEY)
    server.enqueue(error_reply(401, {"error": f"bad key {API_KEY}"}))
    server.enqueue(raw({"error": f"bad key {API_KEY}"}))
    errors: list[BaseException] = []
    for operation in ("chat", "stream"):
        with pytest.raises(BackendError) as caught:
            await call(backend, operation)
        errors.append(caught.value)
    assert API_KEY not in repr(backend)
    for error in errors:
        assert API_KEY not in f"{error} {error!r} {error.args}"
    assert all(r.headers["Authorization"] == f"Bearer {API_KEY}" for r in server.requests)
    await make_backend().chat(HI)
    assert "Authorization" not in server.requests[-1].headers
