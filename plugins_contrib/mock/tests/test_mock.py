"""llmbackend-mock: found through its entry point; categories, latency, streaming, usage."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from llmbackend_mock import (
    Category,
    MockBackend,
    MockPlugin,
    answer_for,
    classify,
    estimate_tokens,
)
from llmbackend_mock.answers import ANSWERS

from llmbackend._logging import LoggerFactory
from llmbackend._registry import PluginRegistry
from llmbackend.backends.base import BaseLlmBackend
from llmbackend.errors import PluginError
from llmbackend.models import (
    ChatMessage,
    ChatRequest,
    FinishEvent,
    FinishReason,
    TextDelta,
    Usage,
    UsageEvent,
)
from llmbackend.settings import LlmBackendConfig
from llmbackend.testing._plugins import assert_valid_plugin

pytest_plugins = ["llmbackend.testing.pytest_plugin"]


def _no_session() -> Any:
    raise AssertionError("the mock backend makes no HTTP calls")


def build(registry: PluginRegistry, **headers: str) -> BaseLlmBackend:
    config = LlmBackendConfig(
        name="demo", custom_backend_type="mock", additional_headers=headers or None
    )
    return registry.create_backend(config, LoggerFactory(), _no_session)


@pytest.fixture
def registry(plugin_registry: PluginRegistry) -> PluginRegistry:
    """A registry with the installed entry points loaded."""
    plugin_registry.load_entry_points()
    return plugin_registry


def ask(text: str) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage.system("you are helpful"), ChatMessage.user(text)])


def test_entry_point_registers_the_plugin(plugin_registry: PluginRegistry) -> None:
    """The installed distribution's entry point registers MockPlugin for type mock."""
    assert "mock" in plugin_registry.load_entry_points()
    [info] = [i for i in plugin_registry.get_plugin_info() if i.plugin_id == "mock"]
    assert (info.source, info.backend_types) == ("entry_point:mock", ("mock",))
    assert isinstance(plugin_registry.plugin_for("MOCK"), MockPlugin)


def test_plugin_passes_the_author_checks() -> None:
    """MockPlugin satisfies llmbackend.testing's assert_valid_plugin."""
    assert_valid_plugin(MockPlugin())


@pytest.mark.parametrize(
    ("prompt", "category"),
    [
        ("Hello!", Category.GREETING),
        ("good morning team", Category.GREETING),
        ("Write a Python function that sorts a list", Category.CODE),
        ("There is a bug in my SQL", Category.CODE),
        ("What is the capital of France?", Category.QUESTION),
        ("how do tides work", Category.QUESTION),
        ("Translate 'good night' into German", Category.TRANSLATION),
        ("say thank you in french", Category.TRANSLATION),
        ("Summarize this article for me", Category.SUMMARY),
        ("tl;dr of the meeting notes", Category.SUMMARY),
        ("Hi, can you translate this code?", Category.TRANSLATION),
        ("The weather was nice today.", Category.DEFAULT),
        ("", Category.DEFAULT),
    ],
)
def test_prompts_are_classified_by_keywords(prompt: str, category: Category) -> None:
    """Keywords pick the category; translation beats summary beats code beats greeting."""
    assert classify(prompt) is category


async def test_chat_gives_the_canned_answer_with_usage(registry: PluginRegistry) -> None:
    """A chat answer is the category's canned reply, finish stop, with estimated tokens."""
    backend = build(registry)
    assert isinstance(backend, MockBackend)
    answer = await backend.chat(ask("Write a Python function"))
    category, expected = answer_for("Write a Python function")
    assert category is Category.CODE
    assert answer.content == expected
    assert answer.content in ANSWERS[Category.CODE]
    assert (answer.backend, answer.model) == ("demo", "mock-1")
    assert answer.finish_reason is FinishReason.STOP
    assert answer.usage == Usage.of(
        estimate_tokens("you are helpful") + estimate_tokens("Write a Python function"),
        estimate_tokens(expected),
    )


async def test_same_prompt_same_answer(registry: PluginRegistry) -> None:
    """The choice among a category's answers is deterministic."""
    backend = build(registry)
    first = await backend.chat(ask("hello"))
    second = await backend.chat(ask("hello"))
    assert first.content == second.content


async def test_stream_chunks_add_up_to_the_chat_answer(registry: PluginRegistry) -> None:
    """Streaming sends 3-word chunks joining to the chat answer, then usage, then finish."""
    backend = build(registry, **{"x-mock-delay-ms": "0"})
    answer = await backend.chat(ask("Summarize the report"))
    events = [event async for event in backend.stream(ask("Summarize the report"))]
    chunks = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(chunks) > 1
    assert all(len(chunk.split()) <= 3 for chunk in chunks)
    assert "".join(chunks) == answer.content
    usage, finish = events[-2:]
    assert isinstance(usage, UsageEvent)
    assert usage.usage == answer.usage
    assert finish == FinishEvent(
        reason=FinishReason.STOP, raw_reason="stop", backend="demo", model="mock-1"
    )


async def test_delay_header_sets_the_simulated_latency(registry: PluginRegistry) -> None:
    """x-mock-delay-ms (any case) delays the answer without blocking the event loop."""
    backend = build(registry, **{"X-Mock-Delay-Ms": "60"})
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    await backend.chat(ask("hello"))
    elapsed = time.perf_counter() - started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert elapsed >= 0.055
    assert ticks >= 3  # the loop kept running while the mock "thought"


def test_default_delay_is_20_ms(registry: PluginRegistry) -> None:
    """Without the header the simulated latency is 20 ms."""
    backend = build(registry)
    assert isinstance(backend, MockBackend)
    assert backend.delay_seconds == pytest.approx(0.02)


@pytest.mark.parametrize("raw", ["soon", "-5", "nan"])
def test_an_invalid_delay_is_a_plugin_error(registry: PluginRegistry, raw: str) -> None:
    """A delay that is not a non-negative number fails the build with the backend and header."""
    with pytest.raises(PluginError) as caught:
        build(registry, **{"x-mock-delay-ms": raw})
    assert "backend 'demo': additional_headers['x-mock-delay-ms'] must be a number" in str(
        caught.value
    )
