"""llmbackend-mistral: found through its entry point, recorded-interaction conformance,
streaming over loopback with split frames, tools, embeddings, errors, and a service that
selects it with ``custom_backend_type``."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import attrs
import pytest
from aioresponses import aioresponses
from llmbackend_mistral import MISTRAL_BASE_URL, MistralBackend, MistralPlugin
from yarl import URL

from llmbackend._logging import LoggerFactory
from llmbackend._registry import PluginRegistry
from llmbackend.backends.openai import OpenAIBackend
from llmbackend.container import open_service
from llmbackend.errors import (
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
    ContextLengthExceededError,
    InvalidRequestError,
    MalformedResponseError,
    ModelNotFoundError,
    PluginError,
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
)
from llmbackend.settings import LlmBackendConfig
from llmbackend.testing import (
    ReceivedRequest,
    ReplayServer,
    ScriptedReply,
    assert_valid_plugin,
    awkward_sse,
    fold_stream,
    json_reply,
    load_wire_fixture,
    sse_body,
    sse_reply,
)

pytest_plugins = ["llmbackend.testing.pytest_plugin"]

API_KEY = "mistral-test-SECRET-0123456789"
HI = ChatRequest(messages=[ChatMessage.user("hi")])
#: The shared recordings: ``<checkout>/../shared/fixtures/wire`` (as for the SDK's own tests).
WIRE_FIXTURES = Path(__file__).resolve().parents[4] / "shared" / "fixtures" / "wire"
MISTRAL_CASES = sorted(path.stem for path in (WIRE_FIXTURES / "mistral").glob("*.yaml"))
STREAM_CASES = [case for case in MISTRAL_CASES if "stream" in case]


@pytest.fixture(scope="session")
def wire_dir() -> Path:
    """The directory of recorded wire fixtures (fails loudly if it is missing)."""
    assert WIRE_FIXTURES.is_dir(), f"wire fixtures not found at {WIRE_FIXTURES}"
    return WIRE_FIXTURES


# --- a loopback Mistral server --------------------------------------------------------------


def chunk(delta: dict[str, Any], reason: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": reason}
    return {"id": "c", "model": "mistral-small-latest", "choices": [choice], **extra}


USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def mistral_api(request: ReceivedRequest) -> ScriptedReply:
    """What Mistral answers to chat (a short answer, streamed when asked for), embeddings and
    the model list when nothing is scripted."""
    route = (request.method, request.path)
    if route == ("POST", "/v1/chat/completions"):
        if request.headers.get("Accept") == "text/event-stream":
            return sse_reply(
                sse_body(
                    chunk({"role": "assistant", "content": "Bon"}),
                    chunk({"content": "jour!"}),
                    chunk({"content": ""}, "stop", usage=USAGE),
                    "[DONE]",
                )
            )
        answer = {
            "id": "c",
            "object": "chat.completion",
            "model": "mistral-small-latest",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Bonjour!", "tool_calls": None},
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        }
        return json_reply(answer)
    if route == ("POST", "/v1/embeddings"):
        return json_reply({"data": []})
    if route == ("GET", "/v1/models"):
        return json_reply(
            {"object": "list", "data": [{"id": "mistral-small-latest"}, {"id": "codestral"}]}
        )
    return json_reply({"message": "Not Found"}, status=404)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def server() -> AsyncIterator[ReplayServer]:
    """A loopback Mistral (its API under ``/v1``): scripted replies first, else
    :func:`mistral_api`; every request is recorded."""
    async with ReplayServer(default=mistral_api) as replay:
        yield replay


BackendFactory = Callable[..., MistralBackend]


@pytest.fixture
def make_backend(session: aiohttp.ClientSession, server: ReplayServer) -> BackendFactory:
    def build(**overrides: Any) -> MistralBackend:
        options: dict[str, Any] = {
            "name": "mis",
            "custom_backend_type": "mistral",
            "base_url": f"{server.url}/v1",
            "api_key": API_KEY,
            "model_name": "mistral-small-latest",
            "timeout_seconds": 10.0,
        }
        options.update(overrides)
        return MistralBackend(LlmBackendConfig(**options), session_factory=lambda: session)

    return build


async def collect(backend: MistralBackend, request: ChatRequest = HI) -> list[StreamEvent]:
    return [event async for event in backend.stream(request)]


# --- what a recording says ------------------------------------------------------------------


class Expected(NamedTuple):
    text: str
    tool_calls: list[tuple[str, str, str]]  # (id, name, arguments)
    raw_reason: str | None
    model: str
    usage: tuple[int, int, int]  # prompt, completion, total


def _usage(raw: dict[str, Any]) -> tuple[int, int, int]:
    return raw["prompt_tokens"], raw["completion_tokens"], raw["total_tokens"]


def expected_from_json(body: str) -> Expected:
    answer = json.loads(body)
    choice = answer["choices"][0]
    message = choice["message"]
    calls = [
        (c["id"], c["function"]["name"], c["function"]["arguments"])
        for c in message.get("tool_calls") or []
    ]
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
    text, reason, model, usage = "", None, "", (0, 0, 0)
    calls: dict[int, list[str]] = {}
    for frame in frames[:upto]:
        if frame == "[DONE]":
            break
        data = json.loads(frame)
        model = data["model"]
        for choice in data["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for position, call in enumerate(delta.get("tool_calls") or []):
                entry = calls.setdefault(call.get("index", position), ["", "", ""])
                entry[0] = call.get("id") or entry[0]
                entry[1] = call["function"].get("name") or entry[1]
                entry[2] += call["function"].get("arguments") or ""
            reason = choice["finish_reason"] or reason
        if data.get("usage"):
            usage = _usage(data["usage"])
    return Expected(
        text, [(c[0], c[1], c[2]) for _, c in sorted(calls.items())], reason, model, usage
    )


def assemble(events: list[StreamEvent]) -> Expected:
    """Fold stream events the way a caller would (tool-call fragments joined by index)."""
    r = fold_stream(events)
    return Expected(
        r.content,
        [(c.id, c.name, c.arguments) for c in r.tool_calls],
        r.raw_finish_reason,
        r.model,
        (r.prompt_tokens, r.completion_tokens, r.total_tokens),
    )


def load_case(wire_dir: Path, case: str) -> dict[str, Any]:
    return load_wire_fixture(wire_dir / "mistral" / f"{case}.yaml")


def request_from_recording(body: dict[str, Any]) -> ChatRequest:
    """The ChatRequest equivalent to a recorded Mistral chat body (``tool_choice: any`` is
    asked for with the SDK's ``required``)."""
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
                for c in m.get("tool_calls") or []
            ],
        )
        for m in body["messages"]
    ]
    tools = [
        ToolDefinition(
            name=t["function"]["name"],
            description=t["function"].get("description", ""),
            parameters=t["function"]["parameters"],
        )
        for t in body.get("tools") or []
    ]
    choice = body.get("tool_choice")
    metadata: dict[str, Any] = {k: body[k] for k in ("safe_prompt", "random_seed") if k in body}
    return ChatRequest(
        messages=messages,
        model=body["model"],
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        max_tokens=body.get("max_tokens"),
        stop_sequences=body.get("stop") or (),
        tools=tools,
        tool_choice="required" if choice == "any" else choice,
        metadata=metadata,
    )


def assert_essential_fields(sent: dict[str, Any], recorded: dict[str, Any]) -> None:
    """The body we built carries the recorded request's meaning, in Mistral's dialect."""
    assert sent["model"] == recorded["model"]
    assert sent["messages"] == recorded["messages"]
    assert sent["stream"] is recorded.get("stream", False)
    assert "stream_options" not in sent
    assert "max_completion_tokens" not in sent
    for key in (
        "temperature",
        "top_p",
        "max_tokens",
        "stop",
        "tools",
        "tool_choice",
        "safe_prompt",
        "random_seed",
    ):
        assert sent.get(key) == recorded.get(key), key


# --- the plugin ---------------------------------------------------------------------------------


def _no_session() -> aiohttp.ClientSession:
    raise AssertionError("building a backend must not open HTTP connections")


def test_entry_point_registers_the_plugin(plugin_registry: PluginRegistry) -> None:
    """The installed distribution's entry point registers MistralPlugin for both type names,
    matched case-insensitively."""
    assert "mistral" in plugin_registry.load_entry_points()
    [info] = [i for i in plugin_registry.get_plugin_info() if i.plugin_id == "mistral"]
    assert (info.source, info.backend_types) == ("entry_point:mistral", ("mistral", "mistralai"))
    assert (info.name, info.version) == ("Mistral AI", "0.1.0")
    for name in ("mistral", "MISTRAL", "MistralAI", "mistralai"):
        assert isinstance(plugin_registry.plugin_for(name), MistralPlugin)


def test_plugin_passes_the_author_checks() -> None:
    """MistralPlugin satisfies llmbackend.testing's assert_valid_plugin."""
    assert_valid_plugin(MistralPlugin())


def test_registry_builds_a_mistral_backend(plugin_registry: PluginRegistry) -> None:
    """A config naming ``MistralAI`` gets a MistralBackend (an OpenAIBackend subclass) with the
    default base URL; a configured base_url wins."""
    plugin_registry.load_entry_points()
    config = LlmBackendConfig(name="m", custom_backend_type="MistralAI", model_name="x")
    backend = plugin_registry.create_backend(config, LoggerFactory(), _no_session)
    assert isinstance(backend, MistralBackend)
    assert isinstance(backend, OpenAIBackend)
    assert backend.url("chat/completions") == f"{MISTRAL_BASE_URL}/chat/completions"
    assert MISTRAL_BASE_URL == "https://api.mistral.ai/v1"
    own = attrs.evolve(config, base_url="http://gateway.local/mistral/")
    assert MistralBackend(own).url("models") == "http://gateway.local/mistral/models"


def test_wrong_type_and_failed_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """create_backend refuses a type it does not provide; validate() is False when the
    backend module cannot be imported."""
    plugin = MistralPlugin()
    with pytest.raises(PluginError):
        plugin.create_backend(
            "openai",
            LlmBackendConfig(name="m"),
            LoggerFactory(),
            _no_session,
        )
    assert plugin.validate() is True
    monkeypatch.setitem(sys.modules, "llmbackend_mistral.backend", None)
    assert plugin.validate() is False


# --- (a) conformance with the recorded interactions ---------------------------------------------


def test_recorded_mistral_files_exist(wire_dir: Path) -> None:
    """The conformance parameters below are the files of the shared mistral fixture folder."""
    assert MISTRAL_CASES, "no mistral recordings found"
    assert sorted(p.stem for p in (wire_dir / "mistral").glob("*.yaml")) == MISTRAL_CASES


@pytest.mark.parametrize("case", MISTRAL_CASES)
async def test_recorded_interaction_conformance(
    case: str, wire_dir: Path, session: aiohttp.ClientSession
) -> None:
    """Replaying a recorded Mistral answer (at the default base URL) yields what the recording
    says (content, tool calls, finish reason, tokens, vectors), and our request has the
    recorded method, path and essential body fields."""
    recording = load_case(wire_dir, case)
    recorded_request, recorded_response = recording["request"], recording["response"]
    recorded_body = json.loads(recorded_request["body"])
    url = recorded_request["base_url"] + recorded_request["url_path"]
    headers = {k.lower(): v for k, v in recorded_response["headers"].items()}
    config = LlmBackendConfig(name="mis", custom_backend_type="mistral", api_key=API_KEY)
    backend = MistralBackend(config, session_factory=lambda: session)
    with aioresponses() as mocked:
        mocked.add(
            url,
            method=recorded_request["method"],
            status=recorded_response["status"],
            body=recorded_response["body"],
            content_type=headers.get("content-type", "application/json").split(";")[0],
        )
        if recorded_request["url_path"] == "/v1/embeddings":
            inputs = recorded_body["input"]
            inputs = [inputs] if isinstance(inputs, str) else inputs
            embedded = await backend.embed(
                EmbeddingRequest(inputs=inputs, model=recorded_body["model"])
            )
            answer = json.loads(recorded_response["body"])
            assert embedded.embeddings == tuple(tuple(d["embedding"]) for d in answer["data"])
            assert embedded.prompt_tokens == answer["usage"]["prompt_tokens"]
            assert embedded.model == answer["model"]
        elif recorded_body.get("stream"):
            events = await collect(backend, request_from_recording(recorded_body))
            assert assemble(events) == expected_from_sse(recorded_response["body"])
        else:
            response = await backend.chat(request_from_recording(recorded_body))
            expected = expected_from_json(recorded_response["body"])
            assert response.content == expected.text
            assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == expected.tool_calls
            assert (response.raw_finish_reason, response.model) == (
                expected.raw_reason,
                expected.model,
            )
            usage = response.usage
            assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
                expected.usage
            )
        assert mocked.requests is not None
        calls = mocked.requests[(recorded_request["method"], URL(url))]
    assert len(calls) == 1
    sent = calls[0].kwargs["json"]
    if recorded_request["url_path"] == "/v1/embeddings":
        inputs = recorded_body["input"]
        assert sent == {
            "model": recorded_body["model"],
            "input": [inputs] if isinstance(inputs, str) else inputs,
        }
    else:
        assert_essential_fields(sent, recorded_body)
    assert calls[0].kwargs["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert "OpenAI-Organization" not in calls[0].kwargs["headers"]


# --- (b) streams over a real loopback server ------------------------------------------------------


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("case", STREAM_CASES)
async def test_recorded_stream_split_at_awkward_offsets(
    case: str, crlf: bool, wire_dir: Path, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A recorded stream cut across many TCP writes at awkward offsets, with keep-alive
    comments (and CRLF line ends) mixed in, parses to exactly what the recording says."""
    body = load_case(wire_dir, case)["response"]["body"]
    pieces = awkward_sse(body, crlf=crlf)
    assert len(pieces) > 20
    server.enqueue(sse_reply(pieces))
    events = await collect(make_backend())
    assert assemble(events) == expected_from_sse(body)
    sent = server.requests[-1]
    assert (sent.json["stream"], "stream_options" in sent.json) == (True, False)
    assert sent.headers["Accept"] == "text/event-stream"


async def test_stream_cut_before_finish_raises_stream_interrupted(
    wire_dir: Path, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A recorded stream whose body ends before the finish chunk (no [DONE]) raises
    StreamInterruptedError with the text delivered so far."""
    body = load_case(wire_dir, "chat_completion_stream")["response"]["body"]
    frames = body.split("\n\n")
    cut = next(i for i, f in enumerate(frames) if '"finish_reason":"stop"' in f)
    server.enqueue(sse_reply("\n\n".join(frames[:cut]) + "\n\n"))
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(make_backend())
    expected = expected_from_sse(body, upto=cut).text
    assert expected
    assert caught.value.partial_text == expected


async def test_connection_drop_mid_stream(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A connection dropped mid-answer is a StreamInterruptedError caused by the transport."""
    server.enqueue(sse_reply(sse_body(chunk({"content": "Bon"})), cut=True))
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(make_backend())
    assert caught.value.partial_text == "Bon"
    assert isinstance(caught.value.__cause__, BackendUnavailableError)


@pytest.mark.parametrize(
    ("raw", "reason"), [("model_length", FinishReason.LENGTH), ("error", FinishReason.ERROR)]
)
async def test_mistral_finish_reasons_are_normalised(
    raw: str, reason: FinishReason, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Mistral's own finish reasons map to the SDK's (raw value kept), streamed or not."""
    answer = {
        "model": "m",
        "choices": [{"index": 0, "message": {"content": "cut"}, "finish_reason": raw}],
        "usage": USAGE,
    }
    server.enqueue(
        json_reply(answer),
        sse_reply(sse_body(chunk({"content": "cut"}), chunk({}, raw), "[DONE]")),
    )
    backend = make_backend()
    response = await backend.chat(HI)
    finish = (await collect(backend))[-1]
    assert isinstance(finish, FinishEvent)
    assert (response.finish_reason, response.raw_finish_reason) == (reason, raw)
    assert (finish.reason, finish.raw_reason) == (reason, raw)


# --- tools and request shape ---------------------------------------------------------------------


async def test_recorded_stream_tool_call_assembles(
    wire_dir: Path, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """The recorded tool-call stream (whole call in one delta, no index) yields one ToolCall
    with the recorded id, name and arguments and finish reason tool_calls."""
    body = load_case(wire_dir, "chat_completion_stream_tool_call")["response"]["body"]
    server.enqueue(sse_reply(body))
    events = await collect(make_backend())
    [(call_id, name, arguments)] = assemble(events).tool_calls
    recorded = json.loads(body.split("data: ")[2].split("\n")[0])["choices"][0]["delta"]
    expected = recorded["tool_calls"][0]
    assert (call_id, name) == (expected["id"], expected["function"]["name"])
    assert json.loads(arguments) == json.loads(expected["function"]["arguments"])
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    assert finish.reason is FinishReason.TOOL_CALLS


async def test_tool_call_answer_and_round_trip_body(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A non-streamed tool call is parsed; the follow-up request keeps the tool message's
    name and id, drops the user name, sends ``tool_choice: any`` for ``required`` and the
    tools in function shape."""
    answer = {
        "model": "mistral-small-latest",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "abc123XYZ",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": USAGE,
    }
    server.enqueue(json_reply(answer))
    tool = ToolDefinition(name="get_weather", description="Weather.", parameters={"type": "object"})
    first = await make_backend().chat(attrs.evolve(HI, tools=[tool], tool_choice="required"))
    [call] = first.tool_calls
    assert (call.id, call.name, call.parsed_arguments()) == (
        "abc123XYZ",
        "get_weather",
        {"city": "Paris"},
    )
    assert first.finish_reason is FinishReason.TOOL_CALLS
    follow_up = ChatRequest(
        messages=[
            ChatMessage.user("weather?", name="ann"),
            ChatMessage.assistant(tool_calls=[call]),
            ChatMessage.tool("sunny", tool_call_id="abc123XYZ", name="get_weather"),
        ],
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    await make_backend().chat(follow_up)
    first_sent, second_sent = (r.json for r in server.requests)
    assert first_sent["tool_choice"] == "any"
    assert first_sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather.",
                "parameters": {"type": "object"},
            },
        }
    ]
    assert second_sent["messages"] == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "abc123XYZ",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "abc123XYZ", "name": "get_weather"},
    ]
    assert second_sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


async def test_chat_body_uses_mistral_parameter_names(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Parameters go out under Mistral's names: max_tokens, random_seed and safe_prompt (from
    the metadata), stream false explicitly, response_format passed through."""
    request = ChatRequest(
        messages=[ChatMessage.system("be brief"), ChatMessage.user("hi")],
        temperature=0.2,
        top_p=0.9,
        frequency_penalty=0.1,
        presence_penalty=0.3,
        stop_sequences=["END"],
        response_format={"type": "json_object"},
        metadata={"random_seed": 42, "safe_prompt": True, "trace_id": "not sent"},
    )
    response = await make_backend(max_output_tokens=77).chat(request)
    assert (response.content, response.finish_reason, response.total_tokens) == (
        "Bonjour!",
        FinishReason.STOP,
        7,
    )
    sent = server.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.json == {
        "model": "mistral-small-latest",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "max_tokens": 77,
        "top_p": 0.9,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.3,
        "stop": ["END"],
        "response_format": {"type": "json_object"},
        "stream": False,
        "random_seed": 42,
        "safe_prompt": True,
    }


@pytest.mark.parametrize("metadata", [{"random_seed": "42"}, {"safe_prompt": "yes"}])
async def test_bad_mistral_options_fail_before_io(
    metadata: dict[str, Any], server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A random_seed that is not an int, or a safe_prompt that is not a bool, is a caller
    error raised before anything is sent."""
    with pytest.raises(InvalidRequestError, match=next(iter(metadata))):
        await make_backend().chat(attrs.evolve(HI, metadata=metadata))
    assert server.requests == []


# --- embeddings and models ---------------------------------------------------------------------


async def test_embeddings_send_output_dimension_and_keep_input_order(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """``dimensions`` is sent as ``output_dimension``; vectors listed out of order come back
    in input order with the usage's prompt tokens."""
    data = [{"index": 1, "embedding": [0.5, 0.25]}, {"index": 0, "embedding": [1, -1]}]
    answer = {"model": "mistral-embed", "data": data, "usage": {"prompt_tokens": 4}}
    server.enqueue(json_reply(answer))
    backend = make_backend(model_name="mistral-embed")
    response = await backend.embed(EmbeddingRequest(inputs=["a", "b"], dimensions=2))
    assert response.embeddings == ((1.0, -1.0), (0.5, 0.25))
    assert (response.model, response.prompt_tokens) == ("mistral-embed", 4)
    sent = server.requests[-1]
    assert (sent.path, sent.json) == (
        "/v1/embeddings",
        {"model": "mistral-embed", "input": ["a", "b"], "output_dimension": 2},
    )


@pytest.mark.parametrize(
    "answer",
    [
        {"data": [{"index": 0, "embedding": [1.0]}]},
        {"data": [1, 2]},
        {"data": [{"embedding": "x"}, {}]},
    ],
    ids=["too-few", "not-objects", "not-numbers"],
)
async def test_malformed_embeddings(
    answer: Any, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Miscounted or wrongly shaped embeddings raise MalformedResponseError."""
    server.enqueue(json_reply(answer))
    with pytest.raises(MalformedResponseError):
        await make_backend().embed(EmbeddingRequest(inputs=["x", "y"]))


async def test_models_and_health(server: ReplayServer, make_backend: BackendFactory) -> None:
    """``models()`` lists GET /v1/models ids, which is also the health check."""
    backend = make_backend()
    assert await backend.models() == ["mistral-small-latest", "codestral"]
    assert (await backend.get_health()).available
    server.enqueue(json_reply({"message": "down"}, status=503))
    assert not (await backend.get_health()).available
    assert [r.path for r in server.requests] == ["/v1/models"] * 3


# --- errors ------------------------------------------------------------------------------------

TOO_LONG = "Prompt contains 40000 tokens, too large for model with 32768 maximum context length"


async def call(backend: MistralBackend, operation: str) -> object:
    if operation == "stream":
        return await collect(backend)
    return await backend.chat(HI)


@pytest.mark.parametrize(
    ("status", "body", "expected", "message"),
    [
        (401, {"message": "Unauthorized", "request_id": "r1"}, AuthenticationError, "Unauthorized"),
        (
            400,
            {
                "object": "error",
                "message": TOO_LONG,
                "type": "invalid_request_error",
                "code": "3051",
            },
            ContextLengthExceededError,
            TOO_LONG,
        ),
        (
            404,
            {
                "object": "error",
                "message": "Invalid model: nope",
                "type": "invalid_model",
                "code": "1500",
            },
            ModelNotFoundError,
            "Invalid model: nope",
        ),
        (
            422,
            {
                "object": "error",
                "message": {
                    "detail": [
                        {
                            "type": "extra_forbidden",
                            "loc": ["body", "foo"],
                            "msg": "Extra inputs are not permitted",
                        }
                    ]
                },
                "type": "invalid_request_message_error",
            },
            InvalidRequestError,
            "body.foo: Extra inputs are not permitted",
        ),
        (
            429,
            {"message": "Requests rate limit exceeded"},
            RateLimitedError,
            "Requests rate limit exceeded",
        ),
        (503, {"message": "Service unavailable"}, BackendUnavailableError, "Service unavailable"),
    ],
)
@pytest.mark.parametrize("operation", ["chat", "stream"])
async def test_error_mapping(
    operation: str,
    status: int,
    body: dict[str, Any],
    expected: type[BackendError],
    message: str,
    server: ReplayServer,
    make_backend: BackendFactory,
) -> None:
    """Mistral's error bodies map to the SDK's errors with a readable message and the status;
    Retry-After is honoured on 429."""
    server.enqueue(json_reply(body, status=status, headers={"Retry-After": "3"}))
    backend = make_backend()
    with pytest.raises(BackendError) as caught:
        await call(backend, operation)
    assert type(caught.value) is expected
    assert (caught.value.status, caught.value.message) == (status, message)
    if status == 429:
        assert (caught.value.retry_after, caught.value.retryable) == (3.0, True)


async def test_api_key_never_leaks(server: ReplayServer, make_backend: BackendFactory) -> None:
    """The key appears neither in repr(backend) nor in errors, even when echoed back."""
    backend = make_backend()
    server.enqueue(json_reply({"message": f"bad key {API_KEY}"}, status=401))
    with pytest.raises(AuthenticationError) as caught:
        await backend.chat(HI)
    assert API_KEY not in f"{caught.value} {caught.value!r} {caught.value.args} {backend!r}"


# --- through the service -------------------------------------------------------------------------


async def test_a_service_selects_mistral_by_custom_backend_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ReplayServer
) -> None:
    """End to end: ``custom_backend_type = "Mistral"`` in the settings is served by the
    plugin found through its entry point, for chat and for streaming."""
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = {
        "backends": [
            {
                "name": "le-chat",
                "custom_backend_type": "Mistral",
                "base_url": f"{server.url}/v1",
                "api_key": API_KEY,
                "model_name": "mistral-small-latest",
            }
        ]
    }
    async with open_service(settings, environ={}, base_dir=tmp_path) as service:
        answer = await service.chat(HI)
        events = [event async for event in service.stream(HI)]
    assert (answer.content, answer.backend) == ("Bonjour!", "le-chat")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Bonjour!"
    assert [r.path for r in server.requests if r.method == "POST"] == ["/v1/chat/completions"] * 2
