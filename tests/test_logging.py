"""Logging: the SDK's loggers, content gating and configure_logging for applications."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from llmbackend import open_service
from llmbackend._correlation import correlation_id
from llmbackend._logging import LoggerFactory, configure_logging
from llmbackend._redaction import REDACTED, Redactor
from llmbackend.errors import BackendUnavailableError
from llmbackend.models import ChatMessage, ChatRequest
from llmbackend.service import LlmService
from llmbackend.settings import LlmBackendConfig, LlmSettings
from llmbackend.testing import FakeBackend, FakeBackendPlugin

SECRET = "tok_0123456789abcdef0123"
PROMPT = ChatRequest(messages=[ChatMessage.user("private prompt")])


@pytest.fixture(autouse=True)
def clean_structlog() -> Iterator[None]:
    """Each test starts and ends with structlog as an unconfigured application has it."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def fake(name: str, factory: LoggerFactory | None = None) -> FakeBackend:
    config = LlmBackendConfig(name=name, custom_backend_type="fake")
    return FakeBackend(config, default_reply="private answer", logger_factory=factory)


async def test_configure_logging_writes_json_lines_for_applications() -> None:
    """JSON lines with level, UTC timestamp and correlation id; debug dropped at INFO;
    the application's own credential fields are redacted too."""
    out = io.StringIO()
    configure_logging(json=True, level="INFO", stream=out)
    flaky = fake("flaky")
    flaky.push(BackendUnavailableError("down", backend="flaky"))
    service = LlmService(LlmSettings(retry_delay_ms=0), [flaky, fake("backup")])

    token = correlation_id.set("job-7")
    try:
        await service.chat(PROMPT)
        structlog.get_logger("app").info("app_called", authorization=f"Bearer {SECRET}")
    finally:
        correlation_id.reset(token)

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    events = [line["event"] for line in lines]
    assert events == ["backend_request_failed", "backend_retry_scheduled", "app_called"]
    assert {line["level"] for line in lines} == {"info"}
    assert all(line["timestamp"].endswith("Z") for line in lines)
    assert {line["correlation_id"] for line in lines} == {"job-7"}
    assert lines[-1]["authorization"] == REDACTED


async def test_configure_logging_console_output_is_one_readable_line_per_event() -> None:
    """The console renderer prints the event name and its key/values on one line."""
    out = io.StringIO()
    configure_logging(level=logging.DEBUG, stream=out)
    service = LlmService(LlmSettings(), [fake("a")])

    await service.chat(PROMPT)

    (line,) = out.getvalue().splitlines()
    assert "backend_request_succeeded" in line
    assert "backend=a" in line
    assert "correlation_id=" in line


async def test_sdk_events_keep_ids_and_redaction_under_an_applications_config() -> None:
    """When the application configured structlog, its processors run after the SDK's own:
    events still carry the correlation id and no secret."""
    factory = LoggerFactory(log_prompts=True, redactor=Redactor(secrets=[SECRET]))
    with capture_logs() as events:
        service = LlmService(LlmSettings(), [fake("a", factory)], logger_factory=factory)
        await service.chat(ChatRequest(messages=[ChatMessage.user(f"use {SECRET}")]))

    (event,) = events
    assert event["event"] == "backend_request_succeeded"
    assert event["correlation_id"]
    assert event["prompt"] == [f"use {REDACTED}"]


async def test_content_is_logged_only_when_enabled(caplog: pytest.LogCaptureFixture) -> None:
    """Chat and stream lines hold the prompt and answer only with log_prompts and
    log_responses on."""
    caplog.set_level(logging.DEBUG, logger="llmbackend")
    loud = LoggerFactory(log_prompts=True, log_responses=True)
    quiet_service = LlmService(LlmSettings(), [fake("quiet")])
    loud_service = LlmService(LlmSettings(), [fake("loud", loud)], logger_factory=loud)

    for service in (quiet_service, loud_service):
        await service.chat(PROMPT)
        _ = [event async for event in service.stream(PROMPT)]

    quiet = [r.getMessage() for r in caplog.records if "backend='quiet'" in r.getMessage()]
    noisy = [r.getMessage() for r in caplog.records if "backend='loud'" in r.getMessage()]
    assert len(quiet) == len(noisy) == 2
    assert not any("private" in line for line in quiet)
    assert all("private prompt" in line and "private answer" in line for line in noisy)


async def test_the_library_never_configures_structlog(tmp_path: Path) -> None:
    """Opening a service, calling it and closing it leaves structlog unconfigured."""
    settings = {"backends": [{"name": "a", "custom_backend_type": "fake"}]}
    async with open_service(settings, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        await svc.chat(PROMPT)

    assert not structlog.is_configured()
