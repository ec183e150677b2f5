"""Correlation ids: one per request, from the caller when it has one, on every log line."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator

import pytest
import structlog

from llmbackend._correlation import correlation_id
from llmbackend.errors import AllBackendsFailedError, BackendUnavailableError
from llmbackend.models import ChatMessage, ChatRequest
from llmbackend.service import LlmService
from llmbackend.settings import LlmBackendConfig, LlmSettings
from llmbackend.testing import FakeBackend, FakeReply

HELLO = ChatRequest(messages=[ChatMessage.user("hello")])
_ID = re.compile(r"correlation_id='([^']+)'")


@pytest.fixture(autouse=True)
def clean_structlog(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Unconfigured structlog (so events reach ``logging``) with debug events captured."""
    structlog.reset_defaults()
    caplog.set_level(logging.DEBUG, logger="llmbackend")
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def make(*backends: FakeBackend) -> LlmService:
    async def no_sleep(_delay: float) -> None:
        return None

    return LlmService(LlmSettings(max_retries=1), list(backends), sleep=no_sleep)


def fake(name: str) -> FakeBackend:
    return FakeBackend(LlmBackendConfig(name=name, custom_backend_type="fake"))


def ids(caplog: pytest.LogCaptureFixture) -> list[str | None]:
    found = []
    for record in caplog.records:
        match = _ID.search(record.getMessage())
        found.append(match.group(1) if match else None)
    return found


async def test_the_callers_id_is_on_every_line_of_its_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Set ``correlation_id`` around a call: the retry, failover and success lines of the
    backends and the service all carry it, and the caller's value is left as it was."""
    a, b = fake("a"), fake("b")
    a.push(BackendUnavailableError("down", backend="a"), BackendUnavailableError("down"))
    service = make(a, b)

    token = correlation_id.set("req-42")
    try:
        await service.chat(HELLO)
        assert correlation_id.get() == "req-42"
    finally:
        correlation_id.reset(token)

    assert len(caplog.records) >= 5  # 2 failures, a retry, a fallback, a success
    assert set(ids(caplog)) == {"req-42"}


async def test_an_id_bound_in_structlog_contextvars_is_used(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An application that binds ``correlation_id`` with structlog gets it in SDK lines."""
    service = make(fake("a"))
    structlog.contextvars.bind_contextvars(correlation_id="from-structlog")

    await service.chat(HELLO)

    assert set(ids(caplog)) == {"from-structlog"}


async def test_each_request_gets_its_own_id_even_when_concurrent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without a caller id every request makes one; concurrent requests never mix them,
    and nothing is left set afterwards."""
    a = fake("a")
    service = make(a)

    async def one(text: str) -> None:
        a.push(FakeReply(text=text))
        await service.chat(ChatRequest(messages=[ChatMessage.user(text)]))

    await asyncio.gather(*(one(f"q{n}") for n in range(5)))

    found = ids(caplog)
    assert None not in found
    assert len(set(found)) == 5
    assert correlation_id.get() is None


async def test_a_stream_keeps_its_id_until_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    """While a stream is read its id is current; once it ends, the caller's context is
    clean again."""
    service = make(fake("a"))

    seen = {correlation_id.get() async for _ in service.stream(HELLO)}

    (during,) = seen
    assert during is not None
    assert set(ids(caplog)) == {during}
    assert correlation_id.get() is None


async def test_a_failed_request_logs_its_failure_under_its_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The service's ``request_failed`` line carries the id of the request that failed."""
    down = fake("down")
    down.default_reply = BackendUnavailableError("down", backend="down")
    service = make(down)

    token = correlation_id.set("failing-one")
    try:
        with pytest.raises(AllBackendsFailedError):
            await service.chat(HELLO)
    finally:
        correlation_id.reset(token)

    failed = [r.getMessage() for r in caplog.records if "event='request_failed'" in r.getMessage()]
    assert len(failed) == 1
    assert "correlation_id='failing-one'" in failed[0]
    assert "error='AllBackendsFailedError'" in failed[0]
