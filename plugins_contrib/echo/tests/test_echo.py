"""llmbackend-echo: found through its entry point; chat, streaming, embeddings, tokens."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from llmbackend_echo import EchoBackend, EchoPlugin, count_tokens

from llmbackend._logging import LoggerFactory
from llmbackend._registry import PluginRegistry
from llmbackend.backends.base import BaseLlmBackend
from llmbackend.container import open_service
from llmbackend.errors import NotSupportedError
from llmbackend.models import (
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    FinishEvent,
    FinishReason,
    TextDelta,
    ToolDefinition,
    Usage,
    UsageEvent,
)
from llmbackend.settings import LlmBackendConfig
from llmbackend.testing._plugins import assert_valid_plugin

pytest_plugins = ["llmbackend.testing.pytest_plugin"]

CONVERSATION = ChatRequest(
    messages=[
        ChatMessage.system("be brief"),
        ChatMessage.user("first question"),
        ChatMessage.assistant("an answer"),
        ChatMessage.user("say  this back\nplease"),
    ]
)


def _no_session() -> Any:
    raise AssertionError("the echo backend makes no HTTP calls")


@pytest.fixture
def echo(plugin_registry: PluginRegistry) -> BaseLlmBackend:
    """An echo backend built the way a service builds it: entry point -> registry -> plugin."""
    plugin_registry.load_entry_points()
    config = LlmBackendConfig(name="parrot", custom_backend_type="Echo", model_name="echo-1")
    return plugin_registry.create_backend(config, LoggerFactory(), _no_session)


def test_entry_point_registers_the_plugin(plugin_registry: PluginRegistry) -> None:
    """The installed distribution's entry point registers EchoPlugin for type echo."""
    assert "echo" in plugin_registry.load_entry_points()
    [info] = [i for i in plugin_registry.get_plugin_info() if i.plugin_id == "echo"]
    assert (info.source, info.backend_types, info.name) == ("entry_point:echo", ("echo",), "Echo")
    assert isinstance(plugin_registry.plugin_for("echo"), EchoPlugin)


def test_plugin_passes_the_author_checks() -> None:
    """EchoPlugin satisfies llmbackend.testing's assert_valid_plugin."""
    assert_valid_plugin(EchoPlugin())


async def test_chat_answers_with_the_last_user_message(echo: BaseLlmBackend) -> None:
    """The answer is the last user message verbatim, with whitespace-counted usage."""
    assert isinstance(echo, EchoBackend)
    answer = await echo.chat(CONVERSATION)
    assert answer.content == "say  this back\nplease"
    assert (answer.backend, answer.model) == ("parrot", "echo-1")
    assert answer.finish_reason is FinishReason.STOP
    assert answer.raw_finish_reason == "stop"
    assert answer.usage == Usage.of(2 + 2 + 2 + 4, 4)


async def test_model_defaults_to_echo(plugin_registry: PluginRegistry) -> None:
    """Without model_name the reported model is "echo"."""
    backend = EchoPlugin().create_backend(
        "echo", LlmBackendConfig(name="e", custom_backend_type="echo"), LoggerFactory(), _no_session
    )
    answer = await backend.chat(ChatRequest(messages=[ChatMessage.user("x")]))
    assert answer.model == "echo"
    assert await backend.models() == ["echo"]


async def test_max_tokens_truncates_with_finish_reason_length(echo: BaseLlmBackend) -> None:
    """max_tokens=N keeps the first N words and reports finish reason length."""
    request = ChatRequest(messages=[ChatMessage.user("one two three four")], max_tokens=2)
    answer = await echo.chat(request)
    assert answer.content == "one two "
    assert answer.finish_reason is FinishReason.LENGTH
    assert answer.completion_tokens == 2


async def test_stream_sends_one_word_per_delta_then_usage_and_finish(
    echo: BaseLlmBackend,
) -> None:
    """Streaming yields each word as a TextDelta, then UsageEvent, then FinishEvent last."""
    events = [event async for event in echo.stream(CONVERSATION)]
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas == ["say  ", "this ", "back\n", "please"]
    usage, finish = events[-2:]
    assert isinstance(usage, UsageEvent)
    assert usage.usage == Usage.of(10, 4)
    assert finish == FinishEvent(
        reason=FinishReason.STOP, raw_reason="stop", backend="parrot", model="echo-1"
    )


async def test_embeddings_are_deterministic_unit_vectors(echo: BaseLlmBackend) -> None:
    """Equal texts give equal vectors, different texts different ones; all of unit length."""
    response = await echo.embed(EmbeddingRequest(inputs=["cat", "dog", "cat"]))
    cat, dog, cat_again = response.embeddings
    assert cat == cat_again
    assert cat != dog
    assert len(cat) == 64
    assert math.isclose(math.sqrt(sum(v * v for v in cat)), 1.0)
    assert response.prompt_tokens == 3
    sized = await echo.embed(EmbeddingRequest(inputs=["cat"], dimensions=10))
    assert len(sized.embeddings[0]) == 10


async def test_tools_are_not_supported(echo: BaseLlmBackend) -> None:
    """A request carrying tools raises NotSupportedError (echo declares no tool capability)."""
    request = ChatRequest(messages=[ChatMessage.user("x")], tools=[ToolDefinition(name="f")])
    with pytest.raises(NotSupportedError):
        await echo.chat(request)


@pytest.mark.parametrize(("text", "tokens"), [("", 0), (None, 0), ("a b\tc\n d", 4)])
def test_tokens_are_counted_by_whitespace(text: str | None, tokens: int) -> None:
    """count_tokens counts whitespace-separated words."""
    assert count_tokens(text) == tokens


async def test_a_service_selects_echo_by_custom_backend_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: a config with custom_backend_type = "ECHO" gets answered by the plugin."""
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = {"backends": [{"name": "parrot", "custom_backend_type": "ECHO"}]}
    async with open_service(settings, environ={}, base_dir=tmp_path) as service:
        answer = await service.chat(ChatRequest(messages=[ChatMessage.user("hello there")]))
    assert (answer.content, answer.backend) == ("hello there", "parrot")
