"""EasyNmtBackend: translation of the last user message through a loopback server speaking
EasyNMT's REST API; languages from the request, error mapping, models and health."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp
import attrs
import pytest
from yarl import URL

from llmbackend.backends.easynmt import EasyNmtBackend
from llmbackend.errors import (
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
    InvalidRequestError,
    MalformedResponseError,
    NotSupportedError,
    RateLimitedError,
)
from llmbackend.models import (
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    FinishReason,
    LlmRequest,
    ToolDefinition,
)
from llmbackend.settings import LlmBackendConfig
from llmbackend.testing._replay import ReceivedRequest, ReplayServer, ScriptedReply, json_reply

GERMAN = {"target_language": "en", "source_language": "de"}


def reply(answer: Any, status: int = 200) -> ScriptedReply:
    """``answer`` as JSON (bytes and text are sent as they are)."""
    if isinstance(answer, bytes | str):
        return ScriptedReply(pieces=answer, status=status)
    return json_reply(answer, status=status)


# --- a loopback server that behaves like the EasyNMT Docker API --------------------------------

MODEL_NAME = "opus-mt"
PAIRS = (("de", "en"), ("en", "de"), ("fr", "en"))
#: The phrase book: anything else "translates" to ``<target> text``.
PHRASES = {("de", "en", "Hallo Welt"): "Hello world", ("fr", "en", "Bonjour"): "Hello"}
DETECT = {"Hallo Welt": "de", "Bonjour": "fr"}


def translate_answer(params: dict[str, Any]) -> ScriptedReply:
    """EasyNMT's translation of ``params``: languages detected from the phrase book, HTTP 403
    ``{"detail": "Error: ..."}`` for an unsupported pair, FastAPI's 422 without target_lang."""
    target = params.get("target_lang")
    if not target:
        missing = [{"loc": ["query", "target_lang"], "msg": "field required"}]
        return json_reply({"detail": missing}, status=422)
    texts = params["text"]
    single = isinstance(texts, str)
    items = [texts] if single else list(texts)
    source = params.get("source_lang") or None
    output: dict[str, Any] = {"target_lang": target, "source_lang": source}
    detected = [DETECT.get(text, "en") for text in items]
    if source is None:
        output["detected_langs"] = detected
    translated = []
    for text, language in zip(items, detected, strict=True):
        pair = (source or language, target)
        if pair not in PAIRS:
            detail = f"Error: no model for {pair[0]}-{pair[1]}"
            return json_reply({"detail": detail}, status=403)
        translated.append(PHRASES.get((*pair, text), f"<{target}> {text}"))
    output["translated"] = translated[0] if single else translated
    output["translation_time"] = 0.01
    return json_reply(output)


def easynmt_api(request: ReceivedRequest) -> ScriptedReply:
    """What EasyNMT answers to POST and GET ``/translate``, ``/model_name``, ``/lang_pairs``
    and ``/get_languages`` when nothing is scripted."""
    route = (request.method, request.path)
    if route == ("POST", "/translate"):
        return translate_answer(request.json)
    if route == ("GET", "/translate"):
        params: dict[str, Any] = dict(request.query)
        params["text"] = URL(request.path_qs).query.getall("text", [])
        return translate_answer(params)
    if route == ("GET", "/model_name"):
        return json_reply(MODEL_NAME)
    if route == ("GET", "/lang_pairs"):
        return json_reply([f"{a}-{b}" for a, b in PAIRS])
    if route == ("GET", "/get_languages"):
        return json_reply(sorted({lang for pair in PAIRS for lang in pair}))
    return json_reply({"detail": "Not Found"}, status=404)


@pytest.fixture
def server(replay_server: ReplayServer) -> ReplayServer:
    """The loopback EasyNMT: scripted replies first, else what EasyNMT answers."""
    replay_server.default = easynmt_api
    return replay_server


BackendFactory = Callable[..., EasyNmtBackend]


@pytest.fixture
def make_backend(session: aiohttp.ClientSession, server: ReplayServer) -> BackendFactory:
    def build(**overrides: Any) -> EasyNmtBackend:
        options: dict[str, Any] = {
            "name": "nmt",
            "type": "easynmt",
            "base_url": server.url,
            "timeout_seconds": 10.0,
        }
        options.update(overrides)
        return EasyNmtBackend(LlmBackendConfig(**options), session_factory=lambda: session)

    return build


def translate(text: str, **metadata: Any) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage.user(text)], metadata=metadata)


# --- translation ---------------------------------------------------------------------------------


async def test_translates_the_last_user_message(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """The last user message is translated between the languages the request names; the
    request is ``POST /translate`` with a one-text list; usage is zero and finish is stop."""
    request = ChatRequest(
        messages=[
            ChatMessage.system("ignored"),
            ChatMessage.user("Bonjour"),
            ChatMessage.assistant("Hello"),
            ChatMessage.user("Hallo Welt"),
        ],
        metadata=GERMAN,
        temperature=0.3,
    )
    response = await make_backend().chat(request)
    assert response.content == "Hello world"
    assert (response.backend, response.model) == ("nmt", "easynmt")
    assert (response.finish_reason, response.raw_finish_reason) == (FinishReason.STOP, None)
    assert (response.prompt_tokens, response.completion_tokens, response.total_tokens) == (0, 0, 0)
    [sent] = server.requests
    assert (sent.method, sent.path) == ("POST", "/translate")
    assert sent.json == {"text": ["Hallo Welt"], "target_lang": "en", "source_lang": "de"}


async def test_languages_come_from_the_request_not_the_backend(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """The same backend translates to whatever each request asks for; both metadata spellings
    (``*_language`` and ``*_lang``) work."""
    backend = make_backend()
    to_german = await backend.chat(translate("Hello", target_lang="de", source_lang="en"))
    to_english = await backend.chat(translate("Bonjour", target_language="en", source_lang="fr"))
    assert (to_german.content, to_english.content) == ("<de> Hello", "Hello")
    assert [r.json["target_lang"] for r in server.requests] == ["de", "en"]
    assert [r.json["source_lang"] for r in server.requests] == ["en", "fr"]


async def test_without_source_language_the_service_detects_it(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Without a source language none is sent, and EasyNMT's detection is used."""
    response = await make_backend().chat(translate("Hallo Welt", target_language="en"))
    assert response.content == "Hello world"
    assert server.requests[-1].json == {"text": ["Hallo Welt"], "target_lang": "en"}


async def test_beam_size_and_sentence_splitting_are_passed_through(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """``beam_size`` and ``perform_sentence_splitting`` from the metadata reach the service."""
    request = translate("Hallo Welt", beam_size=3, perform_sentence_splitting=False, **GERMAN)
    await make_backend().chat(request)
    sent = server.requests[-1].json
    assert (sent["beam_size"], sent["perform_sentence_splitting"]) == (3, False)


async def test_complete_carries_the_metadata(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """``complete()`` (a single prompt) translates the prompt with the request's languages;
    a configured ``model_name`` is reported as the answer's model."""
    request = LlmRequest(prompt="Hallo Welt", system_prompt="x", metadata=GERMAN)
    response = await make_backend(model_name="opus-mt").complete(request)
    assert (response.content, response.model) == ("Hello world", "opus-mt")


async def test_a_string_translation_is_accepted(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """EasyNMT answers a single string when given one; that shape is read too."""
    answer = {"translated": "Hi", "target_lang": "en", "source_lang": "de"}
    server.enqueue(reply(json.dumps(answer).encode()))
    assert (await make_backend().chat(translate("Hallo", **GERMAN))).content == "Hi"


# --- caller errors, raised before any I/O -------------------------------------------------------


async def test_missing_target_language_fails_before_io(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """A request without a target language raises InvalidRequestError naming the metadata
    key to set; nothing is sent."""
    with pytest.raises(InvalidRequestError, match="target_language") as caught:
        await make_backend().chat(translate("Hallo Welt", source_language="de"))
    assert caught.value.backend == "nmt"
    assert server.requests == []


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (ChatRequest(messages=[ChatMessage.system("x")], metadata=GERMAN), "user message"),
        (translate("", **GERMAN), "user message"),
        (translate("x", target_language=" "), "target_language"),
        (translate("x", target_language="en", source_lang=5), "source_lang"),
        (translate("x", beam_size=0, **GERMAN), "beam_size"),
        (translate("x", perform_sentence_splitting="yes", **GERMAN), "perform_sentence"),
    ],
    ids=["no-user", "empty-user", "blank-target", "numeric-source", "beam-0", "split-str"],
)
async def test_unusable_requests_fail_before_io(
    request_: ChatRequest, match: str, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """Requests that cannot be translated raise InvalidRequestError naming the problem."""
    with pytest.raises(InvalidRequestError, match=match):
        await make_backend().chat(request_)
    assert server.requests == []


async def test_streaming_tools_and_embeddings_are_not_supported(
    make_backend: BackendFactory,
) -> None:
    """EasyNMT cannot stream, call tools or embed: each raises NotSupportedError."""
    backend = make_backend()
    assert {c.value for c in backend.capabilities} == {"chat", "models"}
    with pytest.raises(NotSupportedError):
        _ = [event async for event in backend.stream(translate("x", **GERMAN))]
    with pytest.raises(NotSupportedError):
        await backend.chat(attrs.evolve(translate("x", **GERMAN), tools=[ToolDefinition(name="f")]))
    with pytest.raises(NotSupportedError):
        await backend.embed(EmbeddingRequest(inputs=["x"]))


# --- provider errors ---------------------------------------------------------------------------


async def test_unsupported_language_pair_is_an_invalid_request(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """EasyNMT's 403 ``{"detail": "Error: ..."}`` for a failed translation is a caller problem
    (InvalidRequestError, code translation_failed), not an authentication failure."""
    with pytest.raises(InvalidRequestError) as caught:
        await make_backend().chat(translate("Hallo", target_language="ja", source_language="de"))
    assert type(caught.value) is InvalidRequestError
    assert (caught.value.status, caught.value.code) == (403, "translation_failed")
    assert caught.value.message == "Error: no model for de-ja"
    assert not caught.value.retryable


@pytest.mark.parametrize(
    ("status", "body", "expected", "message"),
    [
        (
            422,
            {"detail": [{"loc": ["body", "target_lang"], "msg": "field required"}]},
            InvalidRequestError,
            "body.target_lang: field required",
        ),
        (401, {"detail": "Not authenticated"}, AuthenticationError, "Not authenticated"),
        (403, {"detail": "Forbidden"}, AuthenticationError, "Forbidden"),
        (429, {"detail": "slow down"}, RateLimitedError, "slow down"),
        (500, "Internal Server Error", BackendUnavailableError, "Internal Server Error"),
        (503, {"detail": "loading model"}, BackendUnavailableError, "loading model"),
    ],
)
async def test_error_status_mapping(
    status: int,
    body: Any,
    expected: type[BackendError],
    message: str,
    server: ReplayServer,
    make_backend: BackendFactory,
) -> None:
    """HTTP errors map to the SDK's errors with FastAPI's ``detail`` as the message; a 403
    that is not a translation failure (an authenticating proxy) stays AuthenticationError."""
    server.enqueue(reply(body, status))
    with pytest.raises(BackendError) as caught:
        await make_backend().chat(translate("Hallo Welt", **GERMAN))
    assert type(caught.value) is expected
    assert (caught.value.status, caught.value.message) == (status, message)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"translated": []}',
        b'{"translated": [1]}',
        b'{"translated": ["a", "b"]}',
    ],
    ids=["not-json", "not-object", "empty", "not-text", "two-texts"],
)
async def test_malformed_answer_raises_malformed_response(
    body: bytes, server: ReplayServer, make_backend: BackendFactory
) -> None:
    """An answer without exactly one translated text raises MalformedResponseError."""
    server.enqueue(reply(body))
    with pytest.raises(MalformedResponseError):
        await make_backend().chat(translate("Hallo Welt", **GERMAN))


# --- models and health -------------------------------------------------------------------------


async def test_models_and_health_use_model_name(
    server: ReplayServer, make_backend: BackendFactory
) -> None:
    """``models()`` is the loaded model from GET /model_name, which is also the health check;
    a 503 there (or a non-name answer) makes the backend unavailable / malformed."""
    backend = make_backend()
    assert await backend.models() == ["opus-mt"]
    assert (await backend.get_health()).available
    server.enqueue(reply({"detail": "starting"}, 503))
    health = await backend.get_health()
    assert not health.available
    assert health.error is not None
    assert "BackendUnavailableError" in health.error
    server.enqueue(reply(b"{}"))
    with pytest.raises(MalformedResponseError):
        await backend.models()
    assert {(r.method, r.path) for r in server.requests} == {("GET", "/model_name")}


async def test_connection_refused_is_unavailable(make_backend: BackendFactory) -> None:
    """A port nobody listens on raises BackendUnavailableError and fails the health check."""
    async with ReplayServer() as stopped:
        url = stopped.url
    backend = make_backend(base_url=url)
    with pytest.raises(BackendUnavailableError):
        await backend.chat(translate("Hallo Welt", **GERMAN))
    assert (await backend.get_health()).available is False


def test_default_base_url(session: aiohttp.ClientSession) -> None:
    """Without base_url the backend talks to the Docker image's default port 24080."""
    backend = EasyNmtBackend(
        LlmBackendConfig(name="n", type="easynmt"), session_factory=lambda: session
    )
    assert backend.url("translate") == "http://localhost:24080/translate"


async def test_fake_server_speaks_the_get_api(
    server: ReplayServer, session: aiohttp.ClientSession
) -> None:
    """The loopback server answers the documented GET endpoints like EasyNMT does (so the
    backend is tested against a faithful peer)."""
    url = server.url
    async with session.get(
        f"{url}/translate", params={"target_lang": "en", "text": "Hallo Welt"}
    ) as r:
        answer = await r.json()
    assert answer["translated"] == ["Hello world"]
    assert answer["detected_langs"] == ["de"]
    async with session.get(f"{url}/lang_pairs") as r:
        assert "de-en" in await r.json()
    async with session.get(f"{url}/get_languages") as r:
        assert await r.json() == ["de", "en", "fr"]
