"""AzureOpenAIBackend: recorded-interaction conformance, deployment URLs, api-key and Entra ID
credentials, content-filter handling and the availability check."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from llmbackend.backends.azure_openai import (
    DEFAULT_API_VERSION,
    AzureOpenAIBackend,
    TokenProvider,
)
from llmbackend.backends.openai import OpenAIBackend
from llmbackend.errors import (
    AuthenticationError,
    BackendUnavailableError,
    ContentFilteredError,
    LlmBackendError,
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
    UsageEvent,
)
from llmbackend.settings import LlmBackendConfig
from llmbackend.testing import fold_stream
from llmbackend.testing._replay import (
    ReplayServer,
    awkward_sse,
    json_reply,
    load_wire_fixture,
    sse_body,
    sse_reply,
)

API_KEY = "azure-test-SECRET-0123456789"
HI = ChatRequest(messages=[ChatMessage.user("hi")])
#: Every recording in the shared folder, globbed at collection so new files become cases
#: (the folder is the one tests/conftest.py's ``wire_dir`` names; a test checks they agree).
CASES = sorted(
    path.stem
    for path in (
        Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "wire" / "azure_openai"
    ).glob("*.yaml")
) or ["<no recordings found>"]


# --- the loopback server and the backend under test ----------------------------------------


def completion(
    content: str | None = "Hello!", reason: str = "stop", **choice: Any
) -> dict[str, Any]:
    """A chat-completions answer with one choice."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": reason,
            }
            | choice
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


@pytest.fixture
def server(replay_server: ReplayServer) -> ReplayServer:
    """The loopback server, answering a plain chat completion to whatever is not scripted."""
    replay_server.default = json_reply(completion())
    return replay_server


BackendFactory = Callable[..., AzureOpenAIBackend]


@pytest.fixture
def make_backend(session: aiohttp.ClientSession, server: ReplayServer) -> BackendFactory:
    def build(token_provider: TokenProvider | None = None, **overrides: Any) -> AzureOpenAIBackend:
        options: dict[str, Any] = {
            "name": "azure",
            "type": "azure_openai",
            "api_key": API_KEY,
            "base_url": server.url,
            "deployment_name": "chat-dep",
            "api_version": "2024-10-21",
            "timeout_seconds": 10.0,
        }
        options.update(overrides)
        return AzureOpenAIBackend(
            LlmBackendConfig(**options),
            session_factory=lambda: session,
            token_provider=token_provider,
        )

    return build


async def collect(backend: AzureOpenAIBackend, request: ChatRequest = HI) -> list[StreamEvent]:
    return [event async for event in backend.stream(request)]


def chunk(delta: dict[str, Any], reason: str | None = None, **choice: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": reason} | choice],
    }


#: Azure's first stream chunk: no choices, only the prompt's filter results.
PROMPT_FILTER_CHUNK = {
    "choices": [],
    "created": 0,
    "id": "",
    "model": "",
    "object": "",
    "prompt_filter_results": [
        {"prompt_index": 0, "content_filter_results": {"hate": {"filtered": False}}}
    ],
}


# --- reading the recordings independently of the backend -------------------------------------


def load(wire_dir: Path, case: str) -> dict[str, Any]:
    return load_wire_fixture(wire_dir / "azure_openai" / f"{case}.yaml")


class Target(NamedTuple):
    path: str
    deployment: str
    operation: str
    query: dict[str, str]


def target(url_path: str) -> Target:
    """The deployment, operation and query of a recorded Azure URL path."""
    parts = urlsplit(url_path)
    prefix, _, rest = parts.path.partition("/deployments/")
    deployment, _, operation = rest.partition("/")
    assert prefix == "/openai"
    return Target(parts.path, deployment, operation, dict(parse_qsl(parts.query)))


def chat_request(body: dict[str, Any]) -> ChatRequest:
    """The ChatRequest equivalent to a recorded chat-completions body (text messages)."""
    return ChatRequest(
        messages=[ChatMessage(role=m["role"], content=m["content"]) for m in body["messages"]]
    )


class Expected(NamedTuple):
    text: str
    raw_reason: str | None
    model: str
    usage: tuple[int, int, int, int]  # prompt, completion, total, cached


def usage_tuple(raw: dict[str, Any]) -> tuple[int, int, int, int]:
    cached = (raw.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return raw["prompt_tokens"], raw["completion_tokens"], raw["total_tokens"], cached


def expected_from_sse(body: str) -> Expected:
    """What a recorded stream says, folded by a deliberately naive reader."""
    frames = [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]
    text, reason, model, usage = "", None, "", (0, 0, 0, 0)
    for frame in frames:
        if frame == "[DONE]":
            break
        data = json.loads(frame)
        model = data["model"] or model
        for choice in data["choices"]:
            text += choice["delta"].get("content") or ""
            reason = choice["finish_reason"] or reason
        if data.get("usage"):
            usage = usage_tuple(data["usage"])
    return Expected(text, reason, model, usage)


def assemble(events: list[StreamEvent]) -> Expected:
    """Fold stream events the way a caller would."""
    assert any(isinstance(e, UsageEvent) for e in events), "the stream reports usage"
    r = fold_stream(events)
    usage = (r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cached_prompt_tokens)
    return Expected(r.content, r.raw_finish_reason, r.model, usage)


def decode_float32(value: str) -> tuple[float, ...]:
    raw = base64.b64decode(value)
    return struct.unpack(f"<{len(raw) // 4}f", raw)


# --- (a) conformance with every recorded interaction -------------------------------------------


def test_every_recording_is_a_case(wire_dir: Path) -> None:
    """The conformance cases are exactly the recordings in the shared azure_openai folder."""
    assert sorted(p.stem for p in (wire_dir / "azure_openai").glob("*.yaml")) == CASES
    assert len(CASES) >= 3


@pytest.mark.parametrize("case", CASES)
async def test_recorded_interaction_conformance(
    case: str,
    wire_dir: Path,
    server: ReplayServer,
    session: aiohttp.ClientSession,
) -> None:
    """Replaying each recorded Azure answer yields what it says (content, finish reason,
    tokens, or the base64 vectors), and our request goes to the recorded deployment path and
    api-version with the api-key header and the recorded body's essential fields. Whole
    bodies go through aioresponses at the recorded URL; the stream through a loopback server."""
    recording = load(wire_dir, case)
    recorded_request, recorded_response = recording["request"], recording["response"]
    recorded_body = json.loads(recorded_request["body"])
    where = target(recorded_request["url_path"])
    streamed = bool(recorded_body.get("stream"))
    config = LlmBackendConfig(
        name="azure",
        type="azure_openai",
        api_key=API_KEY,
        base_url=server.url if streamed else recorded_request["base_url"],
        deployment_name=where.deployment,
        api_version=where.query["api-version"],
    )
    backend = AzureOpenAIBackend(config, session_factory=lambda: session)
    if streamed:
        server.enqueue(sse_reply([recorded_response["body"].encode()]))
        events = await collect(backend, chat_request(recorded_body))
        assert assemble(events) == expected_from_sse(recorded_response["body"])
        [received] = server.requests
        assert (received.method, received.path, received.query) == (
            recorded_request["method"],
            where.path,
            where.query,
        )
        assert received.json["messages"] == recorded_body["messages"]
        assert received.json["stream"] is True
        assert received.json["stream_options"] == recorded_body["stream_options"]
        assert received.headers["api-key"] == API_KEY
        return
    url = recorded_request["base_url"] + recorded_request["url_path"]
    answer = json.loads(recorded_response["body"])
    with aioresponses() as mocked:
        mocked.add(url, method=recorded_request["method"], body=recorded_response["body"])
        if where.operation == "embeddings":
            inputs = recorded_body["input"]
            inputs = [inputs] if isinstance(inputs, str) else inputs
            embedded = await backend.embed(EmbeddingRequest(inputs=inputs))
            assert embedded.embeddings == tuple(
                decode_float32(d["embedding"]) for d in answer["data"]
            )
            assert (embedded.prompt_tokens, embedded.model) == (
                answer["usage"]["prompt_tokens"],
                answer["model"],
            )
        else:
            response = await backend.chat(chat_request(recorded_body))
            choice = answer["choices"][0]
            assert response.content == choice["message"]["content"]
            assert (response.raw_finish_reason, response.model) == (
                choice["finish_reason"],
                answer["model"],
            )
            assert usage_tuple(answer["usage"]) == (
                response.prompt_tokens,
                response.completion_tokens,
                response.total_tokens,
                response.cached_prompt_tokens,
            )
        assert mocked.requests is not None
        [sent] = mocked.requests[(recorded_request["method"], URL(url))]
    body = sent.kwargs["json"]
    if where.operation == "embeddings":
        assert body["input"] == inputs
    else:
        assert body["messages"] == recorded_body["messages"]
        assert body.get("stream", False) == recorded_body.get("stream", False)
    assert sent.kwargs["headers"]["api-key"] == API_KEY
    assert "Authorization" not in sent.kwargs["headers"]


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
async def test_recorded_stream_split_at_awkward_offsets(
    crlf: bool, wire_dir: Path, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """The recorded stream (whose first chunk has no choices, only prompt_filter_results),
    cut across many writes at awkward offsets with keep-alive comments (and CRLF line ends),
    parses to what it says."""
    body = load(wire_dir, "chat_completion_stream")["response"]["body"]
    pieces = awkward_sse(body, crlf=crlf)
    assert len(pieces) > 20
    server.enqueue(sse_reply(pieces))
    assert assemble(await collect(make_backend())) == expected_from_sse(body)


# --- (b) URLs and credentials ------------------------------------------------------------------


async def test_deployment_url_api_version_and_api_key_for_every_operation(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Chat, stream and embeddings go to /openai/deployments/<deployment>/... with the
    api-version query and the ``api-key`` header (never Authorization)."""
    backend = make_backend(deployment_name="my dep", api_version="2025-01-01-preview")
    await backend.chat(HI)
    server.enqueue(sse_reply([sse_body(chunk({"content": "a"}), chunk({}, "stop"), "[DONE]")]))
    await collect(backend)
    embedding = {"data": [{"index": 0, "embedding": [0.5]}], "model": "e", "usage": {}}
    server.enqueue(json_reply(embedding))
    await backend.embed(EmbeddingRequest(inputs=["x"]))
    assert [(r.path, r.query) for r in server.requests] == [
        ("/openai/deployments/my dep/chat/completions", {"api-version": "2025-01-01-preview"}),
        ("/openai/deployments/my dep/chat/completions", {"api-version": "2025-01-01-preview"}),
        ("/openai/deployments/my dep/embeddings", {"api-version": "2025-01-01-preview"}),
    ]
    for received in server.requests:
        assert received.headers["api-key"] == API_KEY
        assert "Authorization" not in received.headers
    assert server.requests[1].headers["Accept"] == "text/event-stream"


async def test_defaults_model_name_deployment_and_openai_suffix(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Without deployment_name the model_name is the deployment; without api_version the
    documented GA default is sent; a base URL ending in /openai is not doubled; the
    deployment also names the model in the body."""
    backend = make_backend(
        deployment_name=None, model_name="gpt-4o", api_version=None, base_url=f"{server.url}/openai"
    )
    await backend.chat(HI)
    [received] = server.requests
    assert (received.path, received.query) == (
        "/openai/deployments/gpt-4o/chat/completions",
        {"api-version": DEFAULT_API_VERSION},
    )
    assert DEFAULT_API_VERSION == "2024-10-21"
    assert received.json["model"] == "gpt-4o"
    assert make_backend(model_name=None).model == "chat-dep"


async def test_no_deployment_is_a_clear_error(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """With neither deployment_name nor model_name the call fails naming the setting."""
    with pytest.raises(LlmBackendError, match="deployment_name"):
        await make_backend(deployment_name=None, model_name=None).chat(
            ChatRequest(messages=[ChatMessage.user("hi")], model="gpt-4o")
        )
    assert server.requests == []


async def test_token_provider_sends_a_fresh_bearer_per_request(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """With a token provider every request (chat, stream, embed, health) fetches a token and
    sends ``Authorization: Bearer``; the api-key header is then not sent."""
    issued = itertools.count(1)

    async def provider() -> str:
        return f"entra-token-{next(issued)}"

    backend = make_backend(token_provider=provider)
    await backend.chat(HI)
    server.enqueue(sse_reply([sse_body(chunk({"content": "a"}), chunk({}, "stop"), "[DONE]")]))
    await collect(backend)
    server.enqueue(json_reply({"data": [{"index": 0, "embedding": [1.0]}], "model": "e"}))
    await backend.embed(EmbeddingRequest(inputs=["x"]))
    assert (await backend.get_health()).available
    assert [r.headers.get("Authorization") for r in server.requests] == [
        f"Bearer entra-token-{i}" for i in range(1, 5)
    ]
    assert all("api-key" not in r.headers for r in server.requests)


async def test_concurrent_backends_keep_their_own_credentials(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A token-provider backend and an api-key backend used concurrently each send only their
    own credential (the token never leaks to the other backend's requests)."""

    async def provider() -> str:
        await asyncio.sleep(0)
        return "entra-token"

    with_token = make_backend(token_provider=provider, deployment_name="tok")
    with_key = make_backend(deployment_name="key")
    await asyncio.gather(*(b.chat(HI) for b in (with_token, with_key, with_token, with_key)))
    for received in server.requests:
        if "/tok/" in received.path:
            assert received.headers["Authorization"] == "Bearer entra-token"
            assert "api-key" not in received.headers
        else:
            assert received.headers["api-key"] == API_KEY
            assert "Authorization" not in received.headers
    assert len(server.requests) == 4


@pytest.mark.parametrize("failure", ["raises", "empty"])
async def test_failing_token_provider_is_an_authentication_error(
    failure: str, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A provider that raises (its message may hold secrets: only the type is quoted) or
    returns no token raises AuthenticationError, and nothing is sent."""

    async def provider() -> str:
        if failure == "raises":
            raise RuntimeError("refresh token rt-SECRET expired")
        return ""

    backend = make_backend(token_provider=provider)
    for operation in (backend.chat(HI), collect(backend)):
        with pytest.raises(AuthenticationError) as caught:
            await operation
        assert "rt-SECRET" not in str(caught.value)
    assert server.requests == []


async def test_credentials_never_leak_into_errors(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """An api key or bearer token echoed in an error body appears in no exception or repr."""

    async def provider() -> str:
        return "entra-SECRET-token"

    echo = {"error": {"code": "401", "message": f"Access denied for {API_KEY}"}}
    token_echo = {"error": {"code": "401", "message": "bad token entra-SECRET-token"}}
    server.enqueue(json_reply(echo, status=401), json_reply(token_echo, status=401))
    with pytest.raises(AuthenticationError) as by_key:
        await make_backend().chat(HI)
    with pytest.raises(AuthenticationError) as by_token:
        await collect(make_backend(token_provider=provider))
    for error in (by_key.value, by_token.value):
        text = f"{error} {error!r} {error.args}"
        assert API_KEY not in text
        assert "entra-SECRET-token" not in text
    assert API_KEY not in repr(make_backend())


# --- (c) content filter --------------------------------------------------------------------------


FILTER_RESULTS = {
    "hate": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": True, "severity": "medium"},
    "violence": {"filtered": True, "severity": "high"},
    "protected_material_text": {"filtered": False, "detected": False},
}


async def test_filtered_empty_answer_raises_content_filtered_with_categories(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """finish_reason content_filter with no content raises ContentFilteredError naming the
    categories marked ``filtered: true`` (and not the others)."""
    server.enqueue(
        json_reply(completion(None, "content_filter", content_filter_results=FILTER_RESULTS))
    )
    with pytest.raises(ContentFilteredError) as caught:
        await make_backend().chat(HI)
    assert (caught.value.code, caught.value.retryable) == ("content_filter", False)
    assert "sexual, violence" in caught.value.message
    assert "hate" not in caught.value.message


async def test_partially_filtered_answer_is_returned_with_its_finish_reason(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """An answer cut by the filter after some content is returned, finishing content_filter."""
    server.enqueue(
        json_reply(completion("Once upon", "content_filter", content_filter_results=FILTER_RESULTS))
    )
    response = await make_backend().chat(HI)
    assert response.content == "Once upon"
    assert (response.finish_reason, response.raw_finish_reason) == (
        FinishReason.CONTENT_FILTER,
        "content_filter",
    )


@pytest.mark.parametrize("spelling", ["innererror", "inner_error"])
async def test_filtered_prompt_400_raises_content_filtered_with_categories(
    spelling: str, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """HTTP 400 ``code: content_filter`` (a filtered prompt) raises ContentFilteredError with
    the categories of ``innererror.content_filter_result`` (either spelling Azure uses)."""
    key = "content_filter_result" if spelling == "innererror" else "content_filter_results"
    body = {
        "error": {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
            "content management policy.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            spelling: {
                "code": "ResponsibleAIPolicyViolation",
                key: {
                    "jailbreak": {"filtered": True, "detected": True},
                    "hate": {"filtered": False},
                },
            },
        }
    }
    server.enqueue(json_reply(body, status=400), json_reply(body, status=400))
    for operation in (make_backend().chat(HI), collect(make_backend())):
        with pytest.raises(ContentFilteredError) as caught:
            await operation
        assert (caught.value.status, caught.value.code) == (400, "content_filter")
        assert "prompt (filtered: jailbreak)" in caught.value.message
        assert "content management policy" in caught.value.message


async def test_stream_filtered_before_content_raises_content_filtered(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A stream the filter ends before any content raises ContentFilteredError."""
    body = sse_body(
        PROMPT_FILTER_CHUNK,
        chunk({"role": "assistant", "content": ""}),
        chunk({}, "content_filter", content_filter_results=FILTER_RESULTS),
        "[DONE]",
    )
    server.enqueue(sse_reply([body]))
    with pytest.raises(ContentFilteredError) as caught:
        await collect(make_backend())
    assert caught.value.code == "content_filter"


async def test_stream_filtered_after_content_finishes_content_filter(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A stream the filter cuts after some text ends with FinishEvent(content_filter)."""
    body = sse_body(
        PROMPT_FILTER_CHUNK,
        chunk({"content": "Once "}),
        chunk({"content": "upon"}),
        chunk({}, "content_filter", content_filter_results=FILTER_RESULTS),
        "[DONE]",
    )
    server.enqueue(sse_reply([body]))
    events = await collect(make_backend())
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Once upon"
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    assert (finish.reason, finish.model) == (FinishReason.CONTENT_FILTER, "gpt-4o-mini")


async def test_stream_cut_after_the_prompt_filter_chunk_is_not_a_finish(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A body with the prompt-filter chunk and some text but no finish is interrupted."""
    server.enqueue(sse_reply([sse_body(PROMPT_FILTER_CHUNK, chunk({"content": "Hel"}))]))
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(make_backend())
    assert caught.value.partial_text == "Hel"


# --- (d) errors, models, availability ---------------------------------------------------------


async def test_429_retry_after_ms(server: ReplayServer, make_backend: BackendFactory) -> None:
    """Azure's 429 with ``retry-after-ms`` raises a retryable RateLimitedError for that wait."""
    body = {"error": {"code": "429", "message": "Requests have exceeded token rate limit."}}
    server.enqueue(json_reply(body, status=429, headers={"retry-after-ms": "1500"}))
    with pytest.raises(RateLimitedError) as caught:
        await make_backend().chat(HI)
    assert (caught.value.retry_after, caught.value.retryable) == (1.5, True)


async def test_unknown_deployment_is_model_not_found(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """HTTP 404 DeploymentNotFound raises ModelNotFoundError (another backend may serve)."""
    body = {
        "error": {"code": "DeploymentNotFound", "message": "The API deployment does not exist."}
    }
    server.enqueue(json_reply(body, status=404))
    with pytest.raises(ModelNotFoundError) as caught:
        await make_backend().chat(HI)
    assert caught.value.code == "DeploymentNotFound"


def test_capabilities_reuse_openai_and_omit_models(make_backend: BackendFactory) -> None:
    """The backend is an OpenAIBackend (its wire functions are reused) without model listing."""
    backend = make_backend()
    assert isinstance(backend, OpenAIBackend)
    assert {c.value for c in backend.capabilities} == {"chat", "streaming", "tools", "embeddings"}


async def test_models_are_not_supported(make_backend: BackendFactory) -> None:
    """Azure lists models, not deployments: models() raises NotSupportedError."""
    with pytest.raises(NotSupportedError):
        await make_backend().models()


async def test_health_is_a_one_token_chat_on_the_deployment(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """The availability check is a one-token chat completion on the deployment; a 503 or an
    unknown deployment makes the backend unavailable."""
    backend = make_backend()
    assert (await backend.get_health()).available
    server.enqueue(
        json_reply({"error": {"code": "503", "message": "busy"}}, status=503),
        json_reply({"error": {"code": "DeploymentNotFound", "message": "no"}}, status=404),
    )
    down = await backend.get_health()
    assert not down.available
    assert down.error is not None
    assert "BackendUnavailableError" in down.error
    assert not (await backend.get_health()).available
    probe = server.requests[0]
    assert (probe.method, probe.path) == ("POST", "/openai/deployments/chat-dep/chat/completions")
    assert probe.json == {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}


async def test_connection_refused_is_unavailable(
    session: aiohttp.ClientSession,
) -> None:
    """A port nobody listens on raises a retryable BackendUnavailableError."""
    async with ReplayServer() as stopped:
        url = stopped.url
    backend = AzureOpenAIBackend(
        LlmBackendConfig(name="azure", type="azure_openai", base_url=url, deployment_name="d"),
        session_factory=lambda: session,
    )
    with pytest.raises(BackendUnavailableError):
        await backend.chat(HI)
