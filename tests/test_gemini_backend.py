"""GeminiBackend: recorded-interaction conformance, streaming robustness, Vertex AI and errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import attrs
import pytest
from aioresponses import aioresponses
from yarl import URL

from llmbackend.backends._gemini_stream import JsonArrayDecoder, StreamState
from llmbackend.backends.base import Capability
from llmbackend.backends.gemini import GeminiBackend
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
    ToolDefinition,
)
from llmbackend.settings import LlmBackendConfig
from llmbackend.testing import fold_stream
from llmbackend.testing._replay import (
    ReplayServer,
    ScriptedReply,
    awkward_sse,
    json_reply,
    load_wire_fixture,
    split_awkwardly,
    sse_body,
    sse_reply,
)

API_KEY = "AIza-test-SECRET-0123456789"
TOKEN = "ya29.test-TOKEN-SECRET-9876543210"
HI = ChatRequest(messages=[ChatMessage.user("hi")])
#: Same location as the ``wire_dir`` fixture; read at collection time to parametrize.
_GEMINI_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "wire" / "gemini"
GEMINI_CASES = sorted(path.stem for path in _GEMINI_DIR.glob("*.yaml"))
#: The error each recorded HTTP status must raise, and Google's status name it carries.
ERROR_TYPES: dict[int, type[BackendError]] = {403: AuthenticationError, 429: RateLimitedError}
#: Recordings whose query string we do not reproduce, and why.
QUERY_DIFFERS = {
    # The Go genai client adds its own `$alt=json;enum-encoding=int` transport parameter.
    "error_403_permission_denied": "",
    # That client streamed without alt=sse; this backend always asks for SSE.
    "stream_generate_content_json_array": "alt=sse",
}
#: generationConfig fields this backend sets; recorded extras (topK, thinkingConfig...) are not.
GENERATION_FIELDS = (
    "temperature",
    "topP",
    "maxOutputTokens",
    "stopSequences",
    "responseMimeType",
    "responseSchema",
)


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def server(replay_server: ReplayServer) -> ReplayServer:
    """The loopback server; what is not scripted gets a Google-shaped HTTP 500."""
    error = {"error": {"code": 500, "message": "no scripted reply", "status": "INTERNAL"}}
    replay_server.default = json_reply(error, status=500)
    return replay_server


BackendFactory = Callable[..., GeminiBackend]


@pytest.fixture
def make_backend(session: aiohttp.ClientSession) -> BackendFactory:
    def build(*, token_provider: Any = None, **overrides: Any) -> GeminiBackend:
        options: dict[str, Any] = {
            "name": "gem",
            "type": "gemini",
            "api_key": API_KEY,
            "model_name": "gemini-test",
            "timeout_seconds": 10.0,
        }
        options.update(overrides)
        return GeminiBackend(
            LlmBackendConfig(**options),
            session_factory=lambda: session,
            token_provider=token_provider,
        )

    return build


@pytest.fixture
def local(server: ReplayServer, make_backend: BackendFactory) -> GeminiBackend:
    """An AI Studio backend pointed at the loopback server."""
    return make_backend(base_url=server.url)


def load_case(wire_dir: Path, case: str) -> dict[str, Any]:
    return load_wire_fixture(wire_dir / "gemini" / f"{case}.yaml")


def sse(*chunks: Any) -> bytes:
    """An SSE body from JSON chunks (or raw data strings), with Google's CRLF line ends."""
    return sse_body(*chunks, line_end="\r\n")


def answer(
    *parts: dict[str, Any],
    reason: str | None = "STOP",
    usage: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A GenerateContentResponse with one candidate."""
    candidate: dict[str, Any] = {"content": {"parts": list(parts), "role": "model"}}
    if reason is not None:
        candidate["finishReason"] = reason
    body: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-x", **extra}
    if usage is not None:
        body["usageMetadata"] = usage
    return body


def text_parts(content: dict[str, Any]) -> list[dict[str, Any]]:
    """A recorded content's parts that the SDK's message model can express."""
    return [p for p in content["parts"] if {"text", "functionCall", "functionResponse"} & set(p)]


def request_from_recording(body: dict[str, Any]) -> ChatRequest:
    """The ChatRequest equivalent to a recorded generateContent body."""
    messages = [
        ChatMessage.system(part["text"])
        for part in body.get("systemInstruction", {}).get("parts", [])
    ]
    for content in body["contents"]:
        [part] = text_parts(content)  # every recording sends one text part per turn
        if content.get("role") == "model":
            messages.append(ChatMessage.assistant(part["text"]))
        else:
            messages.append(ChatMessage.user(part["text"]))
    tools = [
        ToolDefinition(
            name=d["name"], description=d.get("description", ""), parameters=d["parameters"]
        )
        for tool in body.get("tools", [])
        for d in tool["functionDeclarations"]
    ]
    config = body.get("generationConfig", {})
    return ChatRequest(
        messages=messages,
        temperature=config.get("temperature"),
        top_p=config.get("topP"),
        max_tokens=config.get("maxOutputTokens"),
        stop_sequences=config.get("stopSequences", ()),
        tools=tools,
    )


def assert_essential_fields(sent: dict[str, Any], recorded: dict[str, Any]) -> None:
    """The body we built carries the recorded request's meaning."""
    assert sent["contents"] == [
        {"role": c.get("role", "user"), "parts": text_parts(c)} for c in recorded["contents"]
    ]
    if "systemInstruction" in recorded:
        assert sent["systemInstruction"]["parts"] == recorded["systemInstruction"]["parts"]
    else:
        assert "systemInstruction" not in sent
    assert sent.get("tools") == recorded.get("tools")
    recorded_config = recorded.get("generationConfig", {})
    expected = {k: recorded_config[k] for k in GENERATION_FIELDS if k in recorded_config}
    assert sent.get("generationConfig", {}) == expected


class Expected(NamedTuple):
    text: str
    tool_calls: list[tuple[str, str, Any]]  # (id, name, parsed arguments)
    raw_reason: str | None
    model: str
    usage: tuple[int, int, int, int]  # prompt, completion, total, cached


def expected_from_chunks(chunks: list[dict[str, Any]]) -> Expected:
    """What recorded GenerateContentResponse objects say, read straight from their JSON."""
    text, reason, model, usage = "", None, "", (0, 0, 0, 0)
    calls: list[tuple[str, str, Any]] = []
    for chunk in chunks:
        model = chunk.get("modelVersion", model)
        for candidate in chunk.get("candidates", [])[:1]:
            for part in candidate.get("content", {}).get("parts", []):
                if "text" in part and not part.get("thought"):
                    text += part["text"]
                if "functionCall" in part:
                    call = part["functionCall"]
                    call_id = call.get("id") or f"call_{len(calls)}"
                    calls.append((call_id, call["name"], call.get("args", {})))
            reason = candidate.get("finishReason", reason)
        if "usageMetadata" in chunk:
            meta = chunk["usageMetadata"]
            usage = (
                meta.get("promptTokenCount", 0),
                meta.get("candidatesTokenCount", 0) + meta.get("thoughtsTokenCount", 0),
                meta["totalTokenCount"],
                meta.get("cachedContentTokenCount", 0),
            )
    return Expected(text, calls, reason, model, usage)


def sse_chunks(body: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")
    ]


def assemble(events: list[StreamEvent]) -> Expected:
    """Fold stream events the way a caller would (tool-call fragments joined by index)."""
    r = fold_stream(events)
    return Expected(
        r.content,
        [(c.id, c.name, json.loads(c.arguments)) for c in r.tool_calls],
        r.raw_finish_reason,
        r.model,
        (r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cached_prompt_tokens),
    )


async def collect(backend: GeminiBackend, request: ChatRequest = HI) -> list[StreamEvent]:
    return [event async for event in backend.stream(request)]


OPERATIONS = pytest.mark.parametrize("operation", ["chat", "stream"])


async def call(backend: GeminiBackend, operation: str) -> object:
    if operation == "stream":
        return await collect(backend)
    return await backend.chat(HI)


# --- (a) conformance with the recorded interactions ---------------------------------------------


def test_recorded_gemini_files_exist(wire_dir: Path) -> None:
    """The conformance parameters below are the files of the shared gemini fixture folder."""
    assert (wire_dir / "gemini") == _GEMINI_DIR
    assert GEMINI_CASES, "no gemini recordings found"


def backend_for(recording: dict[str, Any], make_backend: BackendFactory) -> GeminiBackend:
    """A backend configured like the recorded client (Vertex AI for aiplatform hosts)."""
    request = recording["request"]
    if "aiplatform.googleapis.com" in request["base_url"]:
        # /v1beta1/projects/{project}/locations/{location}/publishers/google/models/...
        _, version, _, project, _, location, *_ = request["url_path"].split("/")
        return make_backend(project_id=project, location=location, api_version=version)
    return make_backend()


def model_of(path: str) -> str:
    return path.rsplit("/models/", 1)[1].partition(":")[0]


@pytest.mark.parametrize("case", GEMINI_CASES)
async def test_recorded_interaction_conformance(
    case: str, wire_dir: Path, make_backend: BackendFactory
) -> None:
    """Replaying a recorded Gemini answer yields what the recording says (content, tool calls,
    finish reason, tokens, vectors, or the exact error), and our request has the recorded
    method, host, path (query as recorded, except where QUERY_DIFFERS says why) and body."""
    recording = load_case(wire_dir, case)
    recorded_request, recorded_response = recording["request"], recording["response"]
    recorded_body = json.loads(recorded_request["body"])
    path, _, query = recorded_request["url_path"].partition("?")
    query = QUERY_DIFFERS.get(case, query)
    url = recorded_request["base_url"] + path + (f"?{query}" if query else "")
    headers = {k.lower(): v for k, v in recorded_response["headers"].items()}
    content_type = headers.get("content-type", "application/json")
    status = recorded_response["status"]
    response_body = recorded_response["body"]
    backend = backend_for(recording, make_backend)
    model = model_of(path)
    sent_body = recorded_body
    with aioresponses() as mocked:
        if path.endswith(":batchEmbedContents"):
            # One input would use embedContent; send the recorded item twice and answer with
            # the recorded embeddings twice, so the batch call itself is exercised.
            answer_json = json.loads(response_body)
            doubled = {"embeddings": answer_json["embeddings"] * 2}
            mocked.post(url, body=json.dumps(doubled), content_type=content_type)
            items = recorded_body["requests"]
            texts = [item["content"]["parts"][0]["text"] for item in items] * 2
            embedded = await backend.embed(
                EmbeddingRequest(
                    inputs=texts, model=model, dimensions=items[0]["outputDimensionality"]
                )
            )
            assert embedded.embeddings == tuple(tuple(e["values"]) for e in doubled["embeddings"])
            sent_body = {"requests": items * 2}
        elif path.endswith(":embedContent"):
            mocked.post(url, body=response_body, content_type=content_type)
            [part] = recorded_body["content"]["parts"]
            embedded = await backend.embed(EmbeddingRequest(inputs=[part["text"]], model=model))
            answer_json = json.loads(response_body)
            assert embedded.embeddings == (tuple(answer_json["embedding"]["values"]),)
            assert embedded.prompt_tokens == answer_json["usageMetadata"]["promptTokenCount"]
            assert embedded.model == model
        elif status >= 400:
            mocked.post(url, status=status, body=response_body, content_type=content_type)
            request = attrs.evolve(request_from_recording(recorded_body), model=model)
            with pytest.raises(BackendError) as caught:
                await backend.chat(request)
            error = json.loads(response_body)["error"]
            assert type(caught.value) is ERROR_TYPES[status]
            assert (caught.value.status, caught.value.code) == (status, error["status"])
            assert caught.value.message == error["message"]
        else:
            mocked.post(url, body=response_body, content_type=content_type)
            request = attrs.evolve(request_from_recording(recorded_body), model=model)
            if ":streamGenerateContent" in path:
                chunks = (
                    sse_chunks(response_body)
                    if "event-stream" in content_type
                    else json.loads(response_body)
                )
                assert assemble(await collect(backend, request)) == expected_from_chunks(chunks)
            else:
                response = await backend.chat(request)
                expected = expected_from_chunks([json.loads(response_body)])
                assert response.content == expected.text
                calls = [(c.id, c.name, c.parsed_arguments()) for c in response.tool_calls]
                assert calls == expected.tool_calls
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
        requests = mocked.requests[(recorded_request["method"], URL(url))]
    assert len(requests) == 1
    sent = requests[0].kwargs["json"]
    if path.endswith(("embedContent", "EmbedContents")):
        assert sent == sent_body
    else:
        assert_essential_fields(sent, recorded_body)
    sent_headers = requests[0].kwargs["headers"]
    if backend.vertex:
        assert sent_headers["Authorization"] == f"Bearer {API_KEY}"
    else:
        assert sent_headers["x-goog-api-key"] == API_KEY
        assert "Authorization" not in sent_headers


async def test_recorded_function_call_is_a_tool_call_finish(
    wire_dir: Path, make_backend: BackendFactory
) -> None:
    """A recorded STOP answer made of a functionCall part normalises to TOOL_CALLS, keeps the
    raw STOP, and gets the stable made-up id ``call_0`` (the API sent none)."""
    recording = load_case(wire_dir, "generate_content_function_call")
    url = recording["request"]["base_url"] + recording["request"]["url_path"]
    with aioresponses() as mocked:
        mocked.post(url, body=recording["response"]["body"])
        response = await make_backend(model_name="gemini-2.0-flash").chat(HI)
    assert (response.finish_reason, response.raw_finish_reason) == (FinishReason.TOOL_CALLS, "STOP")
    assert response.tool_calls == (
        ToolCall(id="call_0", name="get_weather", arguments='{"location": "San Francisco"}'),
    )


# --- (b) streams over a real loopback server ------------------------------------------------------


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
async def test_recorded_sse_stream_split_at_awkward_offsets(
    crlf: bool, wire_dir: Path, server: ReplayServer, local: GeminiBackend
) -> None:
    """The recorded SSE stream cut across many writes at awkward offsets, with keep-alive
    comments (and LF or CRLF line ends) mixed in, parses to exactly what the recording says."""
    body = load_case(wire_dir, "stream_generate_content_sse")["response"]["body"]
    pieces = awkward_sse(body, crlf=crlf)
    assert len(pieces) > 20
    server.enqueue(sse_reply(pieces))
    assert assemble(await collect(local)) == expected_from_chunks(sse_chunks(body))
    assert server.requests[-1].path_qs == "/v1beta/models/gemini-test:streamGenerateContent?alt=sse"
    assert server.requests[-1].headers["Accept"] == "text/event-stream"


async def test_recorded_json_array_stream_split_at_awkward_offsets(
    wire_dir: Path, server: ReplayServer, local: GeminiBackend
) -> None:
    """A server answering with the plain JSON-array stream (application/json) is read too:
    cut at awkward offsets (inside strings, escapes and the CRLF separators) it yields what
    the recording says, thought parts skipped."""
    body = load_case(wire_dir, "stream_generate_content_json_array")["response"]["body"]
    server.enqueue(ScriptedReply(pieces=split_awkwardly(body.encode())))
    result = assemble(await collect(local))
    assert result == expected_from_chunks(json.loads(body))
    assert result.text == "Scoop"


def test_json_array_decoder_on_the_recording(wire_dir: Path) -> None:
    """Parser level: the recorded JSON-array body fed in pieces of every awkward size decodes
    to exactly the recorded elements, and their stream events match the recording."""
    body = load_case(wire_dir, "stream_generate_content_json_array")["response"]["body"]
    for size in (1, 2, 7, 64, len(body)):
        decoder = JsonArrayDecoder("gem")
        found = [
            item for i in range(0, len(body), size) for item in decoder.feed(body[i : i + size])
        ]
        decoder.close()
        assert found == json.loads(body)
    state = StreamState(backend="gem", model="asked")
    events = [event for item in json.loads(body) for event in state.feed(item)]
    assert assemble([*events, state.finish()]) == expected_from_chunks(json.loads(body))


@pytest.mark.parametrize(
    "text",
    ['[{"a": 1}', '[{"a": "]}"}, {"b"', "{}", '[{"a": 1}] x', "[1, 2]"],
    ids=["unclosed", "cut-in-element", "not-an-array", "trailing-data", "not-objects"],
)
def test_json_array_decoder_rejects_broken_bodies(text: str) -> None:
    """A truncated array, a non-array body, trailing data or non-object elements raise
    MalformedResponseError (never a silent partial result)."""
    decoder = JsonArrayDecoder("gem")

    def decode() -> None:
        decoder.feed(text)
        decoder.close()

    with pytest.raises(MalformedResponseError):
        decode()


async def test_json_array_stream_without_closing_bracket_is_interrupted(
    wire_dir: Path, server: ReplayServer, local: GeminiBackend
) -> None:
    """A JSON-array stream whose body ends before ``]`` is not a complete answer, even though
    a finishReason arrived: the caller gets StreamInterruptedError with the text so far."""
    body = load_case(wire_dir, "stream_generate_content_json_array")["response"]["body"]
    server.enqueue(ScriptedReply(pieces=body.rstrip().removesuffix("]")))
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(local)
    assert caught.value.partial_text == "Scoop"


async def test_stream_ending_without_finish_reason_is_interrupted(
    wire_dir: Path, server: ReplayServer, local: GeminiBackend
) -> None:
    """A body that ends cleanly before any chunk carried a finishReason raises
    StreamInterruptedError with the text delivered so far; never a normal end."""
    body = load_case(wire_dir, "stream_generate_content_sse")["response"]["body"]
    first = body.split("\r\n\r\n")[0] + "\r\n\r\n"
    server.enqueue(sse_reply(first))
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(local)
    assert caught.value.partial_text == expected_from_chunks(sse_chunks(first)).text == "The"


async def test_connection_cut_mid_stream_is_interrupted(
    server: ReplayServer, local: GeminiBackend
) -> None:
    """A connection dropped after content (no finish) raises StreamInterruptedError."""
    server.enqueue(
        sse_reply(
            [sse(answer({"text": "Hel"}, reason=None)), b'data: {"candidates": [{"con'],
            cut=True,
        )
    )
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(local)
    assert caught.value.partial_text == "Hel"


async def test_empty_stream_is_a_retryable_failure(
    server: ReplayServer, local: GeminiBackend
) -> None:
    """A 200 stream with no chunks at all is an ordinary failed attempt, worth a retry."""
    server.enqueue(sse_reply(b": keep-alive\r\n\r\n"))
    with pytest.raises(BackendUnavailableError) as caught:
        await collect(local)
    assert caught.value.retryable


@pytest.mark.parametrize(
    "frame",
    [
        '{"candidates": [{"content": ',
        '["a"]',
        '{"candidates": "x"}',
        '{"candidates": [{"content": {"parts": [1]}}]}',
    ],
    ids=["not-json", "not-object", "candidates-not-list", "part-not-object"],
)
async def test_malformed_stream_chunk(
    frame: str, server: ReplayServer, local: GeminiBackend
) -> None:
    """A chunk that is not JSON or has the wrong shape raises MalformedResponseError naming
    the problem, never a KeyError/TypeError."""
    server.enqueue(sse_reply(sse(frame)))
    with pytest.raises(MalformedResponseError) as caught:
        await collect(local)
    assert "KeyError" not in str(caught.value)


async def test_error_chunk_mid_stream_raises_the_mapped_error(
    server: ReplayServer, local: GeminiBackend
) -> None:
    """An ``{"error": ...}`` chunk after the 200 status raises the error it describes."""
    error = {"code": 429, "message": "Resource exhausted.", "status": "RESOURCE_EXHAUSTED"}
    server.enqueue(sse_reply(sse({"error": error})))
    with pytest.raises(RateLimitedError) as caught:
        await collect(local)
    assert (caught.value.status, caught.value.code) == (429, "RESOURCE_EXHAUSTED")


async def test_stream_function_calls_and_cached_tokens(
    server: ReplayServer, local: GeminiBackend
) -> None:
    """Streamed functionCall parts become whole ToolCallDeltas (API id kept, else
    ``call_<index>``), the finish is tool_calls, and cached tokens are reported."""
    usage = {
        "promptTokenCount": 40,
        "candidatesTokenCount": 6,
        "thoughtsTokenCount": 4,
        "totalTokenCount": 50,
        "cachedContentTokenCount": 32,
    }
    server.enqueue(
        sse_reply(
            sse(
                answer({"text": "Let me check. "}, reason=None),
                answer(
                    {"functionCall": {"name": "a", "args": {"x": 1}, "id": "fc-9"}},
                    {"functionCall": {"name": "b", "args": {}}},
                    usage=usage,
                ),
            )
        )
    )
    events = await collect(local)
    result = assemble(events)
    assert result.text == "Let me check. "
    assert result.tool_calls == [("fc-9", "a", {"x": 1}), ("call_1", "b", {})]
    assert result.usage == (40, 10, 50, 32)
    assert isinstance(events[-1], FinishEvent)
    assert events[-1].reason is FinishReason.TOOL_CALLS


# --- safety blocks ----------------------------------------------------------------------------

BLOCKED_PROMPT = {
    "promptFeedback": {
        "blockReason": "SAFETY",
        "safetyRatings": [
            {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True},
            {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
        ],
    },
    "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
}
SAFETY_STOP = {
    "candidates": [
        {
            "finishReason": "SAFETY",
            "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "MEDIUM"}
            ],
        }
    ]
}


@pytest.mark.parametrize("operation", ["chat", "stream"])
@pytest.mark.parametrize(
    ("body", "reason", "category"),
    [
        (BLOCKED_PROMPT, "SAFETY", "HARM_CATEGORY_HARASSMENT"),
        (SAFETY_STOP, "SAFETY", "HARM_CATEGORY_DANGEROUS_CONTENT"),
    ],
    ids=["prompt-blocked", "answer-blocked"],
)
async def test_safety_blocks_raise_content_filtered(
    operation: str,
    body: dict[str, Any],
    reason: str,
    category: str,
    server: ReplayServer,
    local: GeminiBackend,
) -> None:
    """A blocked prompt, or an answer stopped for SAFETY before any content, raises
    ContentFilteredError naming the reason and the blocked category (not an empty answer)."""
    if operation == "stream":
        server.enqueue(sse_reply(sse(body)))
    else:
        server.enqueue(json_reply(body))
    with pytest.raises(ContentFilteredError) as caught:
        await call(local, operation)
    assert caught.value.code == reason
    assert category in str(caught.value)
    assert "NEGLIGIBLE" not in str(caught.value)


async def test_safety_stop_after_content_is_a_content_filter_finish(
    server: ReplayServer, local: GeminiBackend
) -> None:
    """Text followed by a SAFETY stop ends normally with reason content_filter: the caller
    already has the text, and the finish says why it stopped."""
    server.enqueue(sse_reply(sse(answer({"text": "Part one"}, reason=None), SAFETY_STOP)))
    events = await collect(local)
    assert isinstance(events[-1], FinishEvent)
    assert (events[-1].reason, events[-1].raw_reason) == (FinishReason.CONTENT_FILTER, "SAFETY")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("STOP", FinishReason.STOP),
        ("MAX_TOKENS", FinishReason.LENGTH),
        ("RECITATION", FinishReason.CONTENT_FILTER),
        ("PROHIBITED_CONTENT", FinishReason.CONTENT_FILTER),
        ("MALFORMED_FUNCTION_CALL", FinishReason.ERROR),
        ("SOMETHING_NEW", None),
    ],
)
async def test_finish_reason_mapping(
    raw: str, expected: FinishReason | None, server: ReplayServer, local: GeminiBackend
) -> None:
    """finishReason values normalise as documented; unknown ones stay raw with reason None."""
    server.enqueue(json_reply(answer({"text": "x"}, reason=raw)))
    response = await local.chat(HI)
    assert (response.finish_reason, response.raw_finish_reason) == (expected, raw)


async def test_answer_skips_thought_parts_and_reports_thinking_tokens(
    server: ReplayServer, local: GeminiBackend
) -> None:
    """Thought parts are not answer text; thinking tokens count as completion tokens."""
    usage = {
        "promptTokenCount": 3,
        "candidatesTokenCount": 9,
        "thoughtsTokenCount": 20,
        "totalTokenCount": 32,
    }
    server.enqueue(
        json_reply(
            answer(
                {"text": "pondering", "thought": True}, {"text": "Hi"}, {"text": "!"}, usage=usage
            )
        )
    )
    response = await local.chat(HI)
    assert (response.content, response.model) == ("Hi!", "gemini-x")
    assert (response.prompt_tokens, response.completion_tokens, response.total_tokens) == (
        3,
        29,
        32,
    )


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"candidates": []}', b'{"candidates": [{"content": {"parts": "x"}}]}'],
    ids=["not-json", "not-object", "no-candidates", "parts-not-list"],
)
async def test_malformed_answer(body: bytes, server: ReplayServer, local: GeminiBackend) -> None:
    """An unparsable or wrongly shaped answer raises MalformedResponseError."""
    server.enqueue(ScriptedReply(pieces=body))
    with pytest.raises(MalformedResponseError):
        await local.chat(HI)


# --- requests ----------------------------------------------------------------------------------


async def test_chat_body_carries_every_part_of_the_request(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """System messages become systemInstruction; assistant tool calls become functionCall
    parts (API ids echoed, made-up ``call_<n>`` ids not); consecutive tool results become one
    user turn of functionResponse parts named after their call; sampling parameters, tools,
    tool_choice and a JSON-schema response format map to Gemini's fields."""
    tool = ToolDefinition(
        name="lookup",
        description="Find it.",
        parameters={"type": "object", "properties": {"q": {"type": "string"}}},
    )
    bare = ToolDefinition(name="now")
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    request = ChatRequest(
        messages=[
            ChatMessage.system("be brief"),
            ChatMessage.user("hi"),
            ChatMessage.assistant(
                "Checking.",
                tool_calls=[
                    ToolCall(id="fc-1", name="lookup", arguments='{"q": "x"}'),
                    ToolCall(id="call_1", name="now", arguments=""),
                ],
            ),
            ChatMessage.tool('{"hits": 2}', tool_call_id="fc-1"),
            ChatMessage.tool("12:00", tool_call_id="call_1"),
            ChatMessage.system("and polite"),
            ChatMessage.user("thanks"),
        ],
        temperature=0.2,
        top_p=0.9,
        frequency_penalty=0.1,
        presence_penalty=0.3,
        stop_sequences=["END"],
        tools=[tool, bare],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
    )
    server.enqueue(json_reply(answer({"text": "ok"})))
    await make_backend(base_url=server.url, max_output_tokens=77).chat(request)
    assert server.requests[-1].path_qs == "/v1beta/models/gemini-test:generateContent"
    assert server.requests[-1].json == {
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {
                "role": "model",
                "parts": [
                    {"text": "Checking."},
                    {"functionCall": {"name": "lookup", "args": {"q": "x"}, "id": "fc-1"}},
                    {"functionCall": {"name": "now", "args": {}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "lookup", "response": {"hits": 2}, "id": "fc-1"}},
                    {"functionResponse": {"name": "now", "response": {"result": "12:00"}}},
                ],
            },
            {"role": "user", "parts": [{"text": "thanks"}]},
        ],
        "systemInstruction": {"parts": [{"text": "be brief"}, {"text": "and polite"}]},
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "lookup",
                        "description": "Find it.",
                        "parameters": dict(tool.parameters),
                    },
                    {"name": "now"},
                ]
            }
        ],
        "toolConfig": {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}
        },
        "generationConfig": {
            "temperature": 0.2,
            "topP": 0.9,
            "frequencyPenalty": 0.1,
            "presencePenalty": 0.3,
            "stopSequences": ["END"],
            "maxOutputTokens": 77,
            "responseMimeType": "application/json",
            "responseSchema": schema,
        },
    }


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
    ],
)
async def test_tool_choice_modes(
    choice: str, config: dict[str, Any], server: ReplayServer, local: GeminiBackend
) -> None:
    """OpenAI-style tool_choice strings map to functionCallingConfig modes."""
    server.enqueue(json_reply(answer({"text": "ok"})))
    await local.chat(attrs.evolve(HI, tools=[ToolDefinition(name="f")], tool_choice=choice))
    assert server.requests[-1].json["toolConfig"] == {"functionCallingConfig": config}


@pytest.mark.parametrize(
    "messages",
    [
        [ChatMessage.user("hi"), ChatMessage.tool("42", tool_call_id="nowhere")],
        [
            ChatMessage.user("hi"),
            ChatMessage.assistant(tool_calls=[ToolCall(id="c", name="f", arguments="not json")]),
        ],
        [
            ChatMessage.user("hi"),
            ChatMessage.assistant(tool_calls=[ToolCall(id="c", name="f", arguments="[1]")]),
        ],
    ],
    ids=["orphan-tool-result", "arguments-not-json", "arguments-not-object"],
)
async def test_inexpressible_requests_fail_before_sending(
    messages: list[ChatMessage], server: ReplayServer, local: GeminiBackend
) -> None:
    """A tool result answering no known call (Gemini needs the function name) or tool-call
    arguments that are not a JSON object raise InvalidRequestError; nothing is sent."""
    with pytest.raises(InvalidRequestError):
        await local.chat(ChatRequest(messages=messages))
    assert server.requests == []


async def test_tool_result_may_name_its_function(
    server: ReplayServer, local: GeminiBackend
) -> None:
    """A tool message carrying ``name`` needs no earlier assistant call to be encoded."""
    server.enqueue(json_reply(answer({"text": "ok"})))
    await local.chat(ChatRequest(messages=[ChatMessage.tool("[1, 2]", tool_call_id="x", name="f")]))
    part = server.requests[-1].json["contents"][0]["parts"][0]
    assert part == {"functionResponse": {"name": "f", "response": {"result": [1, 2]}, "id": "x"}}


async def test_model_prefix_and_api_version(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A ``models/`` prefix in the model name is not doubled, and api_version replaces the
    path's version."""
    server.enqueue(json_reply(answer({"text": "ok"})))
    backend = make_backend(base_url=server.url, model_name="models/gemini-pro", api_version="v1")
    await backend.chat(HI)
    assert server.requests[-1].path_qs == "/v1/models/gemini-pro:generateContent"


# --- Vertex AI -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "host"),
    [
        (None, "https://us-central1-aiplatform.googleapis.com"),
        ("europe-west4", "https://europe-west4-aiplatform.googleapis.com"),
        ("global", "https://aiplatform.googleapis.com"),
    ],
)
async def test_vertex_urls_and_bearer_token_from_provider(
    location: str | None, host: str, make_backend: BackendFactory
) -> None:
    """With project_id set, calls go to the location's Vertex AI host and path, with a fresh
    token from the token provider per call as Bearer (not the API key, not x-goog-api-key)."""
    tokens = iter([f"{TOKEN}-1", f"{TOKEN}-2"])

    async def provider() -> str:
        return next(tokens)

    backend = make_backend(project_id="proj-1", location=location, token_provider=provider)
    where = location or "us-central1"
    base = f"{host}/v1/projects/proj-1/locations/{where}/publishers/google/models/gemini-test"
    with aioresponses() as mocked:
        mocked.post(f"{base}:generateContent", body=json.dumps(answer({"text": "ok"})))
        mocked.post(
            f"{base}:streamGenerateContent?alt=sse",
            body=sse(answer({"text": "ok"})),
            content_type="text/event-stream",
        )
        assert (await backend.chat(HI)).content == "ok"
        assert assemble(await collect(backend)).text == "ok"
        assert mocked.requests is not None
        sent = [call.kwargs["headers"] for key, calls in mocked.requests.items() for call in calls]
    assert [h["Authorization"] for h in sent] == [f"Bearer {TOKEN}-1", f"Bearer {TOKEN}-2"]
    assert all("x-goog-api-key" not in h for h in sent)


async def test_vertex_uses_api_key_as_bearer_without_provider(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Without a token provider the configured api_key is the Vertex Bearer token; an explicit
    base_url wins over the location's host."""
    server.enqueue(json_reply(answer({"text": "ok"})))
    await make_backend(base_url=server.url, project_id="p", location="asia-east1").chat(HI)
    seen = server.requests[-1]
    assert seen.path_qs == (
        "/v1/projects/p/locations/asia-east1/publishers/google/models/gemini-test:generateContent"
    )
    assert seen.headers["Authorization"] == f"Bearer {API_KEY}"


async def test_failing_token_provider_is_retryable_and_leaks_nothing(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A token provider that raises gives a retryable BackendUnavailableError naming only the
    exception type (its message might hold secrets); nothing is sent."""

    async def provider() -> str:
        raise RuntimeError(f"refresh failed for {TOKEN}")

    backend = make_backend(base_url=server.url, project_id="p", token_provider=provider)
    with pytest.raises(BackendUnavailableError) as caught:
        await backend.chat(HI)
    assert caught.value.retryable
    assert "RuntimeError" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert server.requests == []


async def test_vertex_embeds_each_input_in_order(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Vertex has no batch call: one embedContent per input, vectors returned in input order
    and prompt tokens summed."""
    backend = make_backend(base_url=server.url, project_id="p", model_name="emb")
    for value in (1.0, 2.0, 3.0):
        server.enqueue(
            json_reply({"embedding": {"values": [value]}, "usageMetadata": {"promptTokenCount": 2}})
        )
    response = await backend.embed(EmbeddingRequest(inputs=["a", "b", "c"], dimensions=1))
    texts = [r.json["content"]["parts"][0]["text"] for r in server.requests]
    vectors = {text: (float(i + 1),) for i, text in enumerate(texts)}
    assert response.embeddings == tuple(vectors[t] for t in ("a", "b", "c"))
    assert response.prompt_tokens == 6
    assert all(r.json["outputDimensionality"] == 1 for r in server.requests)
    assert {r.path_qs for r in server.requests} == {
        "/v1/projects/p/locations/us-central1/publishers/google/models/emb:embedContent"
    }


async def test_vertex_embedding_failure_cancels_siblings(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """When one of several Vertex embed calls fails while a sibling is still waiting for its
    answer, the mapped error is raised at once (not an ExceptionGroup, not a timeout) and no
    sibling task is left running."""
    backend = make_backend(base_url=server.url, project_id="p", model_name="emb")
    server.enqueue(
        json_reply(
            {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}, status=400
        )
    )
    server.enqueue(json_reply({}, hang=True))
    with pytest.raises(InvalidRequestError):
        await backend.embed(EmbeddingRequest(inputs=["a", "b"]))
    names = [getattr(task.get_coro(), "__qualname__", "") for task in asyncio.all_tasks()]
    assert [name for name in names if "_embed_each" in name] == []
    assert len(server.requests) == 2


async def test_vertex_has_no_model_listing_and_checks_with_count_tokens(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """On Vertex, models() is NotSupportedError and the health check is a free countTokens
    on the configured model."""
    backend = make_backend(base_url=server.url, project_id="p")
    with pytest.raises(NotSupportedError):
        await backend.models()
    server.enqueue(json_reply({"totalTokens": 1}))
    health = await backend.get_health()
    assert health.available, health.error
    assert server.requests[-1].path_qs.endswith("/models/gemini-test:countTokens")


# --- errors ------------------------------------------------------------------------------------


def google_error(code: int, status: str, message: str, *details: dict[str, Any]) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return {"error": error}


@OPERATIONS
@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            google_error(400, "INVALID_ARGUMENT", "Invalid value at 'contents'"),
            InvalidRequestError,
        ),
        (
            400,
            google_error(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed"
                " (1048576).",
            ),
            ContextLengthExceededError,
        ),
        (
            400,
            google_error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"},
            ),
            AuthenticationError,
        ),
        (403, google_error(403, "PERMISSION_DENIED", "denied"), AuthenticationError),
        (404, google_error(404, "NOT_FOUND", "models/x is not found"), ModelNotFoundError),
        (500, google_error(500, "INTERNAL", "internal error"), BackendUnavailableError),
        (
            503,
            google_error(503, "UNAVAILABLE", "The model is overloaded."),
            BackendUnavailableError,
        ),
    ],
    ids=["invalid", "context-length", "bad-key", "denied", "not-found", "internal", "overloaded"],
)
async def test_error_statuses_map_to_the_error_tree(
    operation: str,
    status: int,
    body: dict[str, Any],
    expected: type[BackendError],
    server: ReplayServer,
    local: GeminiBackend,
) -> None:
    """Each Google error status maps to its SDK error, carrying the HTTP status and Google's
    status name as code; 5xx are retryable, caller errors are not."""
    server.enqueue(json_reply(body, status=status))
    with pytest.raises(BackendError) as caught:
        await call(local, operation)
    assert type(caught.value) is expected
    assert (caught.value.status, caught.value.code) == (status, body["error"]["status"])
    assert caught.value.message == body["error"]["message"]
    assert caught.value.retryable is (status >= 500)


RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17.5s"}


@OPERATIONS
async def test_429_retry_delay_from_error_details(
    operation: str, server: ReplayServer, local: GeminiBackend
) -> None:
    """Without Retry-After, a 429's wait comes from the RetryInfo detail (``17.5s``)."""
    server.enqueue(
        json_reply(google_error(429, "RESOURCE_EXHAUSTED", "slow down", RETRY_INFO), status=429)
    )
    with pytest.raises(RateLimitedError) as caught:
        await call(local, operation)
    assert (caught.value.retry_after, caught.value.retryable) == (17.5, True)


async def test_429_retry_after_header_wins(server: ReplayServer, local: GeminiBackend) -> None:
    """A Retry-After header is preferred to the body's RetryInfo."""
    server.enqueue(
        json_reply(
            google_error(429, "RESOURCE_EXHAUSTED", "slow down", RETRY_INFO),
            status=429,
            headers={"Retry-After": "3"},
        )
    )
    with pytest.raises(RateLimitedError) as caught:
        await local.chat(HI)
    assert caught.value.retry_after == 3.0


async def test_429_per_day_quota_is_not_retryable(
    server: ReplayServer, local: GeminiBackend
) -> None:
    """A 429 naming a per-day quota is a RateLimitedError that waiting seconds cannot fix."""
    quota = {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}],
    }
    server.enqueue(
        json_reply(google_error(429, "RESOURCE_EXHAUSTED", "quota", quota, RETRY_INFO), status=429)
    )
    with pytest.raises(RateLimitedError) as caught:
        await local.chat(HI)
    assert caught.value.retryable is False


async def test_credentials_never_leak_into_repr_or_errors(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Neither the API key nor a Vertex token appears in repr(backend) or in errors, even when
    the server echoes them back."""

    async def provider() -> str:
        return TOKEN

    studio = make_backend(base_url=server.url)
    vertex = make_backend(base_url=server.url, project_id="p", token_provider=provider)
    echo = f"API key not valid: {API_KEY} / token {TOKEN}"
    errors: list[BaseException] = []
    for backend, operation in [(studio, "chat"), (studio, "stream"), (vertex, "chat")]:
        server.enqueue(json_reply(google_error(403, "PERMISSION_DENIED", echo), status=403))
        with pytest.raises(AuthenticationError) as caught:
            await call(backend, operation)
        errors.append(caught.value)
    for backend in (studio, vertex):
        assert API_KEY not in repr(backend)
        assert TOKEN not in repr(backend)
    for error in errors:
        assert API_KEY not in f"{error} {error!r} {error.args}"
    # The token is a credential of the Vertex backend only (AI Studio never had it).
    assert TOKEN not in f"{errors[2]} {errors[2]!r} {errors[2].args}"
    assert server.requests[0].headers["x-goog-api-key"] == API_KEY
    assert server.requests[2].headers["Authorization"] == f"Bearer {TOKEN}"


# --- embeddings, models, health ------------------------------------------------------------


async def test_single_input_uses_embed_content(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """AI Studio embeds one input with ``:embedContent`` (content + outputDimensionality) and
    reads ``embedding.values`` (no recording of this call exists)."""
    server.enqueue(json_reply({"embedding": {"values": [0.5, -0.25, 1]}}))
    backend = make_backend(base_url=server.url, model_name="gemini-embedding-001")
    response = await backend.embed(EmbeddingRequest(inputs=["hello"], dimensions=3))
    assert response.embeddings == ((0.5, -0.25, 1.0),)
    assert (response.model, response.backend) == ("gemini-embedding-001", "gem")
    seen = server.requests[-1]
    assert seen.path_qs == "/v1beta/models/gemini-embedding-001:embedContent"
    assert seen.json == {"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 3}


@pytest.mark.parametrize(
    "body",
    [{"embeddings": [{"values": [1.0]}]}, {"embeddings": [{"values": "x"}, {"values": [1]}]}, {}],
    ids=["too-few", "not-numbers", "missing"],
)
async def test_malformed_batch_embeddings(
    body: dict[str, Any], server: ReplayServer, local: GeminiBackend
) -> None:
    """A batch answer with the wrong count or shape raises MalformedResponseError."""
    server.enqueue(json_reply(body))
    with pytest.raises(MalformedResponseError):
        await local.embed(EmbeddingRequest(inputs=["a", "b"]))


async def test_list_models_follows_pages_and_strips_prefix(
    server: ReplayServer, local: GeminiBackend
) -> None:
    """models() lists every page of GET /v1beta/models, names without ``models/``."""
    server.enqueue(
        json_reply({"models": [{"name": "models/a"}, {"name": "models/b"}], "nextPageToken": "t2"})
    )
    server.enqueue(json_reply({"models": [{"name": "models/c"}]}))
    assert await local.models() == ["a", "b", "c"]
    assert [r.path_qs for r in server.requests] == [
        "/v1beta/models?pageSize=1000",
        "/v1beta/models?pageSize=1000&pageToken=t2",
    ]


async def test_health_gets_the_configured_model(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """The AI Studio health check is GET of the configured model (proves key and model); a
    404 there makes the backend unavailable; without a model it lists models."""
    backend = make_backend(base_url=server.url)
    server.enqueue(json_reply({"name": "models/gemini-test"}))
    assert (await backend.get_health()).available
    server.enqueue(json_reply(google_error(404, "NOT_FOUND", "no such model"), status=404))
    health = await backend.get_health()
    assert not health.available
    assert health.error is not None
    assert "ModelNotFoundError" in health.error
    server.enqueue(json_reply({"models": []}))
    assert (await make_backend(base_url=server.url, model_name=None).get_health()).available
    assert [r.path_qs for r in server.requests] == [
        "/v1beta/models/gemini-test",
        "/v1beta/models/gemini-test",
        "/v1beta/models?pageSize=1000",
    ]


def test_capabilities(make_backend: BackendFactory) -> None:
    """Every capability is declared; AI Studio lists models, Vertex does not."""
    studio = make_backend()
    assert {c.value for c in studio.capabilities} == {
        "chat",
        "streaming",
        "tools",
        "embeddings",
        "models",
    }
    assert studio.supports(Capability.MODELS)
    assert not make_backend(project_id="p").supports(Capability.MODELS)


async def test_bad_frame_amid_a_healthy_stream_is_skipped_and_counted(
    server: ReplayServer, local: GeminiBackend
) -> None:
    """After content has flowed, one undecodable SSE frame is skipped; the finish counts it."""

    def chunk(text: str, reason: str | None = None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
        if reason:
            candidate["finishReason"] = reason
        return {"candidates": [candidate]}

    server.enqueue(sse_reply([sse(chunk("Hel"), '{"candidates": [', chunk("lo", "STOP"))]))
    events = await collect(local)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello"
    assert isinstance(events[-1], FinishEvent)
    assert events[-1].malformed_events == 1
