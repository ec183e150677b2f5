"""The plugin guide (plugins_contrib/README.md), followed by a new user: a backend class and
a plugin object in one file dropped in a plugin folder (steps 1, 2 and 3b), selected with
``custom_backend_type`` (step 4) and checked with the testing helpers (step 5).

The entry-point route (step 3) is proven by the echo plugin's own tests.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from llmbackend import (
    ChatMessage,
    ChatRequest,
    ConfigurationError,
    FinishEvent,
    TextDelta,
    get_plugin_info,
    load_plugin,
    open_service,
)
from llmbackend.testing import (
    FakeProviderServer,
    assert_valid_plugin,
    isolated_default_registry,
)

#: What a user writes after reading the guide: hooks on BaseLlmBackend, a plain plugin class.
PLUGIN = """
from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import ClassVar

from llmbackend import (
    BaseLlmBackend, Capability, ChatRequest, FinishEvent, FinishReason, LlmResponse,
    StreamEvent, TextDelta, Usage, UsageEvent,
)


class ShoutBackend(BaseLlmBackend):
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.CHAT, Capability.STREAMING}
    )
    default_model: ClassVar[str | None] = "shout-1"

    async def _chat(self, request: ChatRequest) -> LlmResponse:
        answer = self._answer(request)
        usage = self._usage(request, answer)
        return LlmResponse(
            content=answer,
            backend=self.name,
            model=self.resolve_model(request),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            finish_reason=FinishReason.STOP,
            raw_finish_reason="stop",
        )

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        answer = self._answer(request)
        for word in answer.split(" "):
            yield TextDelta(text=word + " ")
            await asyncio.sleep(0)
        yield UsageEvent(usage=self._usage(request, answer))
        yield FinishEvent(
            reason=FinishReason.STOP,
            raw_reason="stop",
            backend=self.name,
            model=self.resolve_model(request),
        )

    def _answer(self, request: ChatRequest) -> str:
        return (request.messages[-1].content or "").upper()

    @staticmethod
    def _usage(request: ChatRequest, answer: str) -> Usage:
        prompt = sum(len((m.content or "").split()) for m in request.messages)
        return Usage.of(prompt, len(answer.split()))


class ShoutPlugin:
    plugin_id: str = "shout"
    plugin_name: str = "Shout"
    version: str = "0.1.0"
    author: str = "a new user"
    description: str = "Answers with the last message in capitals."
    supported_backend_types: Sequence[str] = ("shout",)

    def create_backend(self, backend_type, config, logger_factory, session_factory):
        return ShoutBackend(
            config, logger_factory=logger_factory, session_factory=session_factory
        )

    def validate(self) -> bool:
        return True
"""


@pytest.fixture
def plugin_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``my_plugins/shout.py`` plus a ``_helpers.py`` the loader must leave alone; the working
    directory and HOME are empty, so no other folder plugin can interfere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = tmp_path / "my_plugins"
    folder.mkdir()
    (folder / "shout.py").write_text(textwrap.dedent(PLUGIN))
    (folder / "_helpers.py").write_text("raise RuntimeError('helpers are not plugins')\n")
    return folder


@pytest.fixture
async def fake() -> AsyncIterator[FakeProviderServer]:
    async with FakeProviderServer() as server:
        yield server


def settings(folder: Path, fake: FakeProviderServer, plugin_type: str) -> dict[str, Any]:
    """A broken HTTP primary, then the plugin's backend selected as in step 4."""
    return {
        "plugins": {"plugin_directory": str(folder)},
        "backends": [
            {
                "name": "primary",
                "type": "openai_compatible",
                "base_url": fake.url_for("primary"),
                "model_name": "error_500",
                "max_retries": 0,
                "priority": 1,
            },
            {
                "name": "loud",
                "custom_backend_type": plugin_type,
                "priority": 2,
                "cost_per_million_input_tokens": 1.0,
                "cost_per_million_output_tokens": 2.0,
            },
        ],
    }


async def test_folder_plugin_gets_failover_streaming_metrics_and_cost(
    plugin_folder: Path, fake: FakeProviderServer
) -> None:
    """The plugin from the folder, chosen as ``custom_backend_type = "Shout"`` (case does not
    matter), is failed over to from a broken primary for chat and stream; the SDK records its
    calls and prices its tokens; ``_helpers.py`` is never imported."""
    request = ChatRequest(messages=[ChatMessage.user("hello there")])
    with capture_logs() as logs:
        async with open_service(settings(plugin_folder, fake, "Shout")) as service:
            answer = await service.chat(request)
            events = [event async for event in service.stream(request)]
            stats = service.get_statistics()
    assert (answer.content, answer.backend, answer.model) == ("HELLO THERE", "loud", "shout-1")
    assert answer.cost_usd == pytest.approx((2 * 1.0 + 2 * 2.0) / 1e6)
    text = "".join(event.text for event in events if isinstance(event, TextDelta))
    assert text == "HELLO THERE "
    assert isinstance(events[-1], FinishEvent)
    assert events[-1].backend == "loud"
    assert stats.failovers == 2
    assert stats.backends["loud"].successful_requests == 2
    assert stats.backends["loud"].total_tokens == 8
    assert fake.counts == {"primary": 2}
    assert not [entry for entry in logs if entry["event"] == "plugin_load_failed"]


async def test_misspelt_plugin_type_is_refused_naming_what_is_loaded(
    plugin_folder: Path, fake: FakeProviderServer
) -> None:
    """A type no loaded plugin provides stops the service before it starts, with the path
    and the loaded plugins (the folder plugin among them), as the guide shows."""
    with pytest.raises(ConfigurationError) as caught:
        async with open_service(settings(plugin_folder, fake, "shuot")):
            pass
    [problem] = caught.value.problems
    assert problem.path == "backends[1].custom_backend_type"
    assert problem.message.startswith("no loaded plugin provides backend type 'shuot'")
    assert "shout (shout)" in problem.message
    assert fake.counts == {}


def test_load_plugin_and_the_guide_s_checks(plugin_folder: Path) -> None:
    """``load_plugin(path)`` registers the file's plugin (source ``file:<path>``) and it
    passes ``assert_valid_plugin``, the check step 5 recommends."""
    path = plugin_folder / "shout.py"
    with isolated_default_registry() as registry:
        assert load_plugin(path) == ["shout"]
        plugin = registry.plugin_for("shout")
        assert_valid_plugin(plugin)
        [info] = [info for info in get_plugin_info() if info.plugin_id == "shout"]
    assert (info.name, info.backend_types, info.source) == ("Shout", ("shout",), f"file:{path}")
