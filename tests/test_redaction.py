"""Secret hygiene: the redactor itself, and a known key fed through every path."""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

from llmbackend import open_service
from llmbackend._redaction import REDACTED, Redactor, redactor_for
from llmbackend._telemetry import render_metrics
from llmbackend.errors import (
    AllBackendsFailedError,
    AuthenticationError,
    BackendUnavailableError,
    ContentFilteredError,
    InvalidRequestError,
    LlmBackendError,
    StreamInterruptedError,
)
from llmbackend.models import ChatMessage, ChatRequest, EmbeddingRequest
from llmbackend.service import LlmService
from llmbackend.settings import (
    CachingSettings,
    LlmBackendConfig,
    LlmSettings,
)
from llmbackend.testing import Behavior, FakeProviderServer

#: Shaped like no known provider key: only the configured-secret rule can catch it.
KEY = "tok_4f9d1c8e7b6a5f4e3d2c1b0a9f8e7d6c"
HEADER_SECRET = "hdr_9z8y7x6w5v4u3t2s1r0q"
CONNECTION_SECRET = "pw_0a1b2c3d4e5f6a7b8c9d"
SECRETS = (KEY, HEADER_SECRET, CONNECTION_SECRET)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key {KEY} leaked", f"key {REDACTED} leaked"),
        ("Authorization: Bearer abc.def-ghi_123", f"Authorization: {REDACTED}"),
        ("sent bearer abcdefghij to them", f"sent bearer {REDACTED} to them"),
        ('{"api_key": "plainvalue123"}', f'{{"api_key": "{REDACTED}"}}'),
        ("x-goog-api-key=AbCdEf123456", f"x-goog-api-key={REDACTED}"),
        ("host:6379,password=hunter22,ssl=True", f"host:6379,password={REDACTED},ssl=True"),
        ("api-key: zzz999", f"api-key: {REDACTED}"),
        ("GET /v1/models?key=qwerty123&alt=sse", f"GET /v1/models?key={REDACTED}&alt=sse"),
        ("key sk-proj-abcdefghijklmnop1234 used", f"key {REDACTED} used"),
        ("AIzaSyA1234567890abcdefghijklmnopqrstu", REDACTED),
    ],
)
def test_secrets_and_credential_shapes_are_redacted(text: str, expected: str) -> None:
    """Configured values, bearer tokens, credential headers and parameters and well-known
    key shapes are replaced; the surrounding text stays."""
    assert Redactor(secrets=[KEY]).text(text) == expected


def test_clean_text_is_untouched_and_redaction_is_idempotent() -> None:
    """Text without secrets comes back as the same object; redacting twice changes nothing."""
    redactor = Redactor(secrets=[KEY])
    clean = "gpt-4o-mini answered in 120 ms"
    assert redactor.text(clean) is clean
    once = redactor.text(f"Authorization: Bearer {KEY}")
    assert redactor.text(once) == once


def test_short_values_are_not_secrets_and_the_repr_shows_none() -> None:
    """A configured value too short to be a credential is ignored; reprs hide secrets."""
    redactor = Redactor(secrets=["ab", KEY], patterns=[r"internal-\d+"])
    assert redactor.secrets == frozenset({KEY})
    assert redactor.text("ab internal-42") == f"ab {REDACTED}"
    assert KEY not in repr(redactor)
    assert redactor.including([KEY, None, ""]) is redactor


def test_log_fields_named_like_credentials_are_masked_and_containers_walked() -> None:
    """As a structlog processor it masks credential fields and walks lists and mappings."""
    event = {
        "event": "request_sent",
        "headers": {"Authorization": "whatever", "Accept": "json"},
        "prompt": [f"my key is {KEY}", "hello"],
        "api_key": "x",
        "count": 3,
    }
    assert Redactor(secrets=[KEY])(None, "info", event) == {
        "event": "request_sent",
        "headers": {"Authorization": REDACTED, "Accept": "json"},
        "prompt": [f"my key is {REDACTED}", "hello"],
        "api_key": REDACTED,
        "count": 3,
    }


def test_scrub_rewrites_causes_and_group_members() -> None:
    """An exception, its cause and the members of an ExceptionGroup are all redacted."""
    cause = ValueError(f"upstream said {KEY}")
    error = AuthenticationError(f"bad key {KEY}", backend="a", status=401)
    error.__cause__ = cause
    group = AllBackendsFailedError("chat failed", [error, BackendUnavailableError(KEY)])

    Redactor(secrets=[KEY]).scrub(group)

    texts = [str(group), repr(error), error.message, str(cause)]
    texts.append("".join(traceback.format_exception(group)))
    assert all(KEY not in text for text in texts)
    assert REDACTED in error.message


def test_settings_reprs_hide_secrets_and_the_service_redactor_knows_them() -> None:
    """Keys, credential headers and connection strings never show in reprs, and
    redactor_for collects every one of them."""
    settings = LlmSettings(
        backends=[
            LlmBackendConfig(
                name="a",
                type="openai",
                api_key=KEY,
                additional_headers={"Authorization": f"Bearer {HEADER_SECRET}"},
            )
        ],
        caching=CachingSettings(connection_string=f"redis://u:{CONNECTION_SECRET}@h:6379"),
    )
    assert all(secret not in repr(settings) for secret in SECRETS)
    redactor = redactor_for(settings)
    assert KEY in redactor.secrets
    assert HEADER_SECRET in redactor.secrets
    assert redactor.text(f"{KEY} {HEADER_SECRET} {CONNECTION_SECRET}").count(REDACTED) == 3


# --- the known key through every path ---------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[FakeProviderServer]:
    async with FakeProviderServer(reply=f"the key is {KEY} and that is all") as running:
        running.register("leaky_auth", leak(401, "invalid_api_key"))
        yield running


def leak(status: int, code: str, text: str = "Incorrect API key provided") -> Behavior:
    """An error whose body echoes the credentials back, as careless providers and proxies do.
    (The provider backends mask their own ``api_key`` already; the header secret is left
    to the redactor.)"""
    echoed = f"{text}: {KEY} (Bearer {KEY}, x-api-key {HEADER_SECRET})"
    body = {"error": {"message": echoed, "code": code}}
    return Behavior.error(status, body=body, retry_after=0)


@pytest.fixture
def clean_structlog() -> Iterator[None]:
    """structlog as an application that configured nothing has it (and restored after)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def walk(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack += [e for e in (current.__cause__, current.__context__) if e is not None]
        if isinstance(current, BaseExceptionGroup):
            stack += list(current.exceptions)


async def drive(service: LlmService, server: FakeProviderServer) -> list[BaseException]:
    """Every path: success, retries, failover, each error type, streams, embeddings and
    health checks; returns what the caller caught."""
    prompt = ChatRequest(messages=[ChatMessage.user(f"please use {KEY} for this")])
    caught: list[BaseException] = []

    async def attempt(call: Any) -> None:
        try:
            result = call()
            if hasattr(result, "__aiter__"):
                _ = [event async for event in result]
            else:
                await result
        except LlmBackendError as exc:
            caught.append(exc)

    await attempt(lambda: service.chat(prompt))  # success
    server.enqueue(leak(429, "rate_limit_exceeded"), backend="primary")  # retried, then ok
    await attempt(lambda: service.chat(prompt))
    server.enqueue(leak(500, "server_error"), leak(500, "server_error"), backend="primary")
    await attempt(lambda: service.chat(prompt))  # retries used up, the backup answers
    server.enqueue(leak(401, "invalid_api_key"), backend="primary")
    await attempt(lambda: service.chat(prompt))  # final: AuthenticationError
    server.enqueue(leak(400, "x", "This model's maximum context length is 8"), backend="primary")
    server.enqueue(leak(400, "content_filter"), backend="backup")
    await attempt(lambda: service.chat(prompt))  # context length, then ContentFilteredError
    server.enqueue(leak(404, "model_not_found"), backend="primary")
    server.enqueue(leak(400, "invalid_request"), backend="backup")
    await attempt(lambda: service.chat(prompt))  # model not found, then InvalidRequestError
    server.enqueue(*[leak(503, "unavailable")] * 2, backend="primary")
    server.enqueue(*[leak(502, "bad_gateway")] * 2, backend="backup")
    await attempt(lambda: service.chat(prompt))  # AllBackendsFailedError
    await attempt(lambda: service.stream(prompt))  # a streamed answer
    server.enqueue(leak(500, "server_error"), leak(500, "server_error"), backend="primary")
    await attempt(lambda: service.stream(prompt))  # stream fails over before content
    server.enqueue(Behavior.cut_stream(after_chunks=3), backend="primary")
    await attempt(lambda: service.stream(prompt))  # cut after content
    server.enqueue(Behavior.connection_reset(), Behavior.connection_reset(), backend="primary")
    await attempt(lambda: service.chat(prompt))
    await attempt(lambda: service.embed(EmbeddingRequest(inputs=[f"embed {KEY}"])))
    health = await service.test_backends()
    assert health["leaky"].error is not None
    assert REDACTED in health["leaky"].error
    return caught


@pytest.mark.parametrize("logging_mode", ["stdlib", "structlog"])
async def test_a_known_key_appears_nowhere(
    server: FakeProviderServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    clean_structlog: None,
    logging_mode: str,
) -> None:
    """With debug logs, prompts and responses logged, metrics and tracing on, the key (and
    every other configured secret) appears in no log line, span, metric, exception string,
    traceback or repr, on any path; yet it really was sent, and really was echoed back."""
    caplog.set_level(logging.DEBUG, logger="llmbackend")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def backend(name: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "type": "openai_compatible",
            "base_url": server.url_for(name),
            "model_name": "fake-model",
            "api_key": KEY,
            **extra,
        }

    settings = {
        "backends": [
            backend("primary", priority=1, additional_headers={"x-api-key": HEADER_SECRET}),
            backend("backup", priority=2),
            backend("leaky", enabled=False, additional_headers={"x-fake-behavior": "leaky_auth"}),
        ],
        "max_retries": 1,
        "retry_delay_ms": 0,
        # Every path must reach the primary: it must not be taken out of rotation.
        "circuit_breaker": {"enabled": False},
        "health_check": {"enabled": False},
        "telemetry": {"enable_tracing": True, "log_prompts": True, "log_responses": True},
        "caching": {"connection_string": f"redis://user:{CONNECTION_SECRET}@cache:6379"},
    }
    with capture_logs() if logging_mode == "structlog" else contextlib.nullcontext() as events:
        async with open_service(settings, base_dir=tmp_path, tracer_provider=provider) as service:
            caught = await drive(service, server)
            texts = [
                repr(service.settings),
                repr(service.backends),
                *(repr(b.config) for b in service.backends),
                repr(service.get_statistics()),
                render_metrics(service).decode(),
            ]

    assert {type(error) for error in caught} >= {
        AuthenticationError,
        ContentFilteredError,
        InvalidRequestError,
        AllBackendsFailedError,
        StreamInterruptedError,
    }
    for error in caught:
        texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
        for member in walk(error):
            texts += [str(member), repr(member), str(getattr(member, "message", ""))]
    texts += [caplog.text, *(record.getMessage() for record in caplog.records)]
    texts += [repr(event) for event in events or []]
    for span in exporter.get_finished_spans():
        texts += [span.name, repr(dict(span.attributes or {})), str(span.status.description)]
        texts += [repr(dict(event.attributes or {})) for event in span.events]
    everything = "\n".join(texts)

    assert all(secret not in everything for secret in SECRETS)
    # It was really sent, and really came back: the redaction did the work.
    sent = server.requests_for("primary")[0].headers
    assert sent["Authorization"] == f"Bearer {KEY}"
    assert sent["x-api-key"] == HEADER_SECRET
    assert REDACTED in str(next(e for e in caught if isinstance(e, AuthenticationError)))
    logged = caplog.text if logging_mode == "stdlib" else repr(events)
    assert f"please use {REDACTED}" in logged  # the prompt was logged, redacted
    assert f"the key is {REDACTED}" in logged  # and so was the answer
