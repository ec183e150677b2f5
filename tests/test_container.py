"""open_service and the container: validation before start, one shared session, clean shutdown."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmbackend import open_service
from llmbackend.backends.base import BaseLlmBackend
from llmbackend.errors import ConfigurationError, LlmBackendError, PluginError
from llmbackend.models import (
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    FinishEvent,
    LlmRequest,
    TextDelta,
)
from llmbackend.testing import FakeBackend, FakeBackendPlugin, FakeOpenAIServer


class RecordingPlugin(FakeBackendPlugin):
    """A fake plugin that counts how many backends it was asked to build."""

    def __init__(self) -> None:
        self.created = 0

    def create_backend(self, *args: Any, **kwargs: Any) -> FakeBackend:
        self.created += 1
        return super().create_backend(*args, **kwargs)


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(reply="hello from the fake") as running:
        yield running


def fake_backend(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "custom_backend_type": "fake", **extra}


async def test_chat_through_a_plugin_backend_with_global_defaults(tmp_path: Path) -> None:
    """Backends receive the global defaults where their own config says nothing."""
    settings = {
        "backends": [fake_backend("a"), fake_backend("b", temperature=0.1, timeout_seconds=3)],
        "default_temperature": 0.4,
        "default_max_tokens": 123,
        "timeout_seconds": 30,
        "max_retries": 2,
    }
    async with open_service(settings, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as service:
        response = await service.complete(LlmRequest(prompt="hi"))
        a, b = service.backend("a").config, service.backend("b").config

    assert response.backend == "a"
    assert (a.temperature, a.max_output_tokens, a.timeout_seconds, a.max_retries) == (
        0.4,
        123,
        30,
        2,
    )
    assert (b.temperature, b.timeout_seconds) == (0.1, 3)


async def test_bad_config_starts_nothing(tmp_path: Path) -> None:
    """An unknown type and a misspelt key are reported together; no backend is ever built."""
    plugin = RecordingPlugin()
    settings = {
        "backends": [fake_backend("good"), {"name": "bad", "custom_backend_type": "nosuch"}],
        "max_retrys": 1,
    }
    with pytest.raises(ConfigurationError) as raised:
        async with open_service(settings, plugins=[plugin], base_dir=tmp_path):
            pytest.fail("the service must not start")

    messages = [str(problem) for problem in raised.value.problems]
    assert messages == ["max_retrys: unknown key; did you mean 'max_retries'?"]
    assert plugin.created == 0


async def test_unknown_plugin_type_names_the_loaded_plugins(tmp_path: Path) -> None:
    """A custom_backend_type no plugin provides is an error naming what is loaded."""
    plugin = RecordingPlugin()
    settings = {"backends": [fake_backend("good"), {"name": "x", "custom_backend_type": "nosuch"}]}
    with pytest.raises(ConfigurationError) as raised:
        async with open_service(settings, plugins=[plugin], base_dir=tmp_path):
            pytest.fail("the service must not start")

    (problem,) = raised.value.problems
    assert problem.path == "backends[1].custom_backend_type"
    assert "no loaded plugin provides backend type 'nosuch'" in problem.message
    assert "fake (fake)" in problem.message
    assert "builtin (" in problem.message
    assert plugin.created == 0


async def test_missing_specific_plugin_is_a_plugin_error(tmp_path: Path) -> None:
    """A plugin named in specific_plugins that cannot load stops the start with PluginError."""
    settings = {
        "backends": [fake_backend("a")],
        "plugins": {"specific_plugins": [str(tmp_path / "missing_plugin.py")]},
    }
    with pytest.raises(PluginError, match=r"missing_plugin\.py"):
        async with open_service(settings, plugins=[FakeBackendPlugin()], base_dir=tmp_path):
            pytest.fail("the service must not start")


async def test_entry_point_plugin_selected_case_insensitively(tmp_path: Path) -> None:
    """custom_backend_type 'ECHO' selects the installed echo plugin via its entry point."""
    settings = {"backends": [{"name": "e", "custom_backend_type": "ECHO"}]}
    async with open_service(settings, base_dir=tmp_path) as service:
        response = await service.complete(LlmRequest(prompt="ping pong"))
    assert response.backend == "e"
    assert "ping pong" in response.content


async def test_openai_backend_end_to_end_over_one_shared_session(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Chat, stream, embed and health go over HTTP through one shared aiohttp session."""
    backend = {"type": "openai_compatible", "base_url": server.base_url, "model_name": "fake-model"}
    settings = {"backends": [{"name": "one", **backend}, {"name": "two", **backend}]}
    async with open_service(settings, base_dir=tmp_path) as service:
        one, two = service.backends
        assert one.session is two.session
        chat = await service.chat(ChatRequest(messages=[ChatMessage.user("hi")]))
        events = [e async for e in service.stream(ChatRequest(messages=[ChatMessage.user("hi")]))]
        vectors = await service.embed(EmbeddingRequest(inputs=["x", "y"]))
        health = await service.test_backends()
        session = one.session

    assert chat.content == "hello from the fake"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "hello from the fake"
    assert isinstance(events[-1], FinishEvent)
    assert len(vectors.embeddings) == 2
    assert all(h.available for h in health.values())
    assert session.closed
    with pytest.raises(LlmBackendError, match="the service is not open"):
        _ = one.session
    assert [r.path for r in server.requests[:2]] == ["/v1/chat/completions"] * 2


async def test_backend_build_failure_is_a_plugin_error(tmp_path: Path) -> None:
    """A plugin that raises while building a backend yields PluginError; nothing leaks."""

    class Broken(FakeBackendPlugin):
        def create_backend(self, *args: Any, **kwargs: Any) -> BaseLlmBackend:
            raise RuntimeError("cannot build")

    with pytest.raises(PluginError, match="cannot build"):
        async with open_service(
            {"backends": [fake_backend("a")]}, plugins=[Broken()], base_dir=tmp_path
        ):
            pytest.fail("the service must not start")


async def test_config_file_path(tmp_path: Path) -> None:
    """open_service accepts a TOML file path."""
    path = tmp_path / "llmbackend.toml"
    path.write_text('[[backends]]\nname = "a"\ncustom_backend_type = "fake"\n')
    async with open_service(path, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as service:
        assert [b.name for b in service.backends] == ["a"]


class PreloadingPlugin(FakeBackendPlugin):
    """A fake plugin with the optional ``preload`` hook, recording the thread it ran on."""

    def __init__(self) -> None:
        self.preloaded: list[tuple[str, int]] = []

    def preload(self, backend_type: str) -> None:
        self.preloaded.append((backend_type, threading.get_ident()))


async def test_provider_imports_happen_in_the_worker_thread_not_on_the_loop(
    tmp_path: Path,
) -> None:
    """open_service asks each enabled backend's plugin to preload (import) its provider in
    the validation thread, so building the backends never imports on the event loop; a
    disabled backend is not preloaded."""
    plugin = PreloadingPlugin()
    settings = {"backends": [fake_backend("a"), fake_backend("off", enabled=False)]}
    async with open_service(settings, plugins=[plugin], base_dir=tmp_path):
        pass

    assert [kind for kind, _ in plugin.preloaded] == ["fake"]
    assert plugin.preloaded[0][1] != threading.get_ident()


def test_the_builtin_plugin_preloads_the_provider_module_of_a_type() -> None:
    """BuiltinPlugin.preload imports the module a backend type lives in (a fresh
    interpreter, so nothing else imported it first)."""
    code = (
        "import sys; from llmbackend.backends._builtin import BuiltinPlugin\n"
        "before = 'llmbackend.backends.anthropic' in sys.modules\n"
        "BuiltinPlugin().preload('anthropic')\n"
        "print(before, 'llmbackend.backends.anthropic' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["False", "True"]
