"""Prompt builders: the default builder (system message, variables, history, trimming), the
translation builder on an LLM backend and on EasyNMT, per-backend selection, registration and
plugins, configuration errors, the response cache's key, and the token counters."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

from llmbackend import (
    ChatMessage,
    ChatRequest,
    ConfigurationError,
    InvalidRequestError,
    LlmRequest,
    PluginError,
    PromptContext,
    ToolCall,
    ToolDefinition,
    load_settings,
    open_service,
    prompt_builder_names,
    register_prompt_builder,
    unregister_prompt_builder,
)
from llmbackend._prompting import PromptPipeline, prompt_builder_table
from llmbackend._registry import PluginRegistry
from llmbackend._tokens import (
    ESTIMATE,
    TIKTOKEN_ENCODING,
    count_messages,
    default_token_counter,
)
from llmbackend.prompts import (
    DefaultPromptBuilder,
    TranslationPromptBuilder,
    substitute_variables,
)
from llmbackend.settings import LlmBackendConfig, LlmSettings
from llmbackend.state import canonical_request
from llmbackend.testing import FakeBackend, FakeBackendPlugin, ReplayServer
from llmbackend.testing._replay import ReceivedRequest, ScriptedReply, json_reply


class WordCounter:
    """One token per word: limits in tests are easy to compute."""

    name = "words"

    def count(self, text: str) -> int:
        return len(text.split())


WORDS = WordCounter()
DEFAULT = DefaultPromptBuilder()


def context(**extra: Any) -> PromptContext:
    return PromptContext(backend="b", backend_type="openai", **extra)


def user(text: str) -> ChatMessage:
    return ChatMessage.user(text)


def contents(request: ChatRequest) -> list[tuple[str, str | None]]:
    return [(message.role, message.content) for message in request.messages]


def fake(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "custom_backend_type": "fake", "timeout_seconds": 5, **extra}


def settings(*backends: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"backends": list(backends), "health_check": {"enabled": False}, **extra}


def script(service: Any, name: str) -> FakeBackend:
    backend = service.backend(name)
    assert isinstance(backend, FakeBackend)
    return backend


def sent(backend: FakeBackend, index: int = -1) -> ChatRequest:
    request = backend.history[index]
    assert isinstance(request, ChatRequest)
    return request


# --- variables ---------------------------------------------------------------------------------


def test_placeholders_are_filled_and_other_braces_are_text() -> None:
    """`{{ name }}` with or without spaces is replaced; JSON, code and malformed braces stay."""
    text = 'Hi {{ name }}, {{name}}! {"a": {"b": 1}} {{}} {{ 1x }} {{ a-b }} f"{x}"'
    assert substitute_variables(text, {"name": "Ann"}) == (
        'Hi Ann, Ann! {"a": {"b": 1}} {{}} {{ 1x }} {{ a-b }} f"{x}"'
    )


def test_a_value_is_inserted_literally() -> None:
    """A value that itself looks like a placeholder is not substituted again."""
    assert substitute_variables("{{ a }}", {"a": "{{ b }}", "b": "no"}) == "{{ b }}"


def test_unknown_placeholder_names_it_and_where_it_is() -> None:
    """With variables given, a placeholder without a value is a caller error naming it and
    the message it is in."""
    request = ChatRequest(
        messages=[ChatMessage.system("Be {{ tone }}."), user("Hi {{ nmae }}")],
        variables={"tone": "kind", "name": "Ann"},
    )
    with pytest.raises(InvalidRequestError) as raised:
        DEFAULT.build(request, context())
    assert raised.value.message == (
        "messages[1]: no value for placeholder {{ nmae }}; variables given: name, tone"
    )
    assert raised.value.code == "unknown_variable"


def test_without_variables_placeholders_are_left_alone() -> None:
    """A request without variables is not a template: `{{ x }}` reaches the model as text."""
    request = ChatRequest(messages=[user("What does {{ x }} mean in Jinja?")])
    assert DEFAULT.build(request, context()) is request


def test_only_system_and_user_messages_are_templates() -> None:
    """Assistant text and tool results are data: their braces are never substituted."""
    request = ChatRequest(
        messages=[
            ChatMessage.system("Call me {{ name }}"),
            user("{{ name }} here"),
            ChatMessage.assistant("{{ name }} said", tool_calls=[ToolCall(id="1", name="f")]),
            ChatMessage.tool("{{ unknown }}", tool_call_id="1"),
        ],
        variables={"name": "Ann"},
    )
    assert contents(DEFAULT.build(request, context())) == [
        ("system", "Call me Ann"),
        ("user", "Ann here"),
        ("assistant", "{{ name }} said"),
        ("tool", "{{ unknown }}"),
    ]


def test_variables_must_be_strings_and_conversation_ids_non_empty() -> None:
    """Bad request fields fail when the request is made, naming the field."""
    with pytest.raises(TypeError, match="'n' maps to int"):
        ChatRequest(messages=[user("x")], variables={"n": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="conversation_id must be a non-empty string"):
        ChatRequest(messages=[user("x")], conversation_id=" ")


def test_llm_request_carries_conversation_and_variables_to_chat() -> None:
    """`complete()` requests keep their conversation id and variables."""
    chat = LlmRequest(prompt="hi", conversation_id="c", variables={"a": "b"}).to_chat()
    assert (chat.conversation_id, dict(chat.variables)) == ("c", {"a": "b"})


# --- history and trimming ---------------------------------------------------------------------


def test_system_first_then_history_then_new_messages() -> None:
    """The request's system message leads, the conversation's history follows, then the new
    messages, in order."""
    request = ChatRequest(messages=[user("now"), ChatMessage.system("sys")])
    history = (user("before"), ChatMessage.assistant("answer"))
    built = DEFAULT.build(request, context(history=history))
    assert contents(built) == [
        ("system", "sys"),
        ("user", "before"),
        ("assistant", "answer"),
        ("user", "now"),
    ]


def test_trimming_drops_oldest_turns_and_keeps_system_and_newest_user() -> None:
    """Over the limit, whole turns go oldest first; the system message and the newest user
    message stay even when they alone exceed the limit."""
    history = (
        user("one two"),
        ChatMessage.assistant("a b"),
        user("three"),
        ChatMessage.assistant("c"),
    )
    request = ChatRequest(messages=[ChatMessage.system("s y s"), user("newest words here")])
    # Costs (4 framing + words): system 7, turn one 6+6, turn three 5+5, newest 7; request 3.
    fits_all = 3 + 7 + 12 + 10 + 7
    for limit, expected in (
        (fits_all, ["s y s", "one two", "a b", "three", "c", "newest words here"]),
        (fits_all - 1, ["s y s", "three", "c", "newest words here"]),
        (3 + 7 + 7 + 9, ["s y s", "newest words here"]),
        (1, ["s y s", "newest words here"]),
    ):
        built = DEFAULT.build(
            request, context(history=history, token_limit=limit, token_counter=WORDS)
        )
        assert [message.content for message in built.messages] == expected, limit
    assert count_messages(built.messages, WORDS) == 3 + 7 + 7


def test_a_tool_call_and_its_results_are_dropped_together() -> None:
    """A turn with tool calls and their results goes as a whole: no orphan tool message."""
    call = ToolCall(id="call-1", name="weather", arguments='{"city": "Oslo"}')
    history = (
        user("weather?"),
        ChatMessage.assistant(None, tool_calls=[call]),
        ChatMessage.tool("rain", tool_call_id="call-1"),
        ChatMessage.assistant("It rains."),
    )
    request = ChatRequest(messages=[user("and tomorrow?")])
    limit = count_messages([*history[2:], *request.messages], WORDS)  # room for a part only
    built = DEFAULT.build(request, context(history=history, token_limit=limit, token_counter=WORDS))
    assert contents(built) == [("user", "and tomorrow?")]


def test_tool_results_answering_the_last_call_keep_their_call() -> None:
    """When the new messages are tool results, the turn holding their call is the newest
    turn and stays, however small the limit."""
    call = ToolCall(id="call-1", name="weather")
    history = (user("old"), ChatMessage.assistant("x"), user("weather?"))
    history += (ChatMessage.assistant(None, tool_calls=[call]),)
    request = ChatRequest(messages=[ChatMessage.tool("rain", tool_call_id="call-1")])
    built = DEFAULT.build(request, context(history=history, token_limit=1, token_counter=WORDS))
    assert [message.role for message in built.messages] == ["user", "assistant", "tool"]
    assert built.messages[1].tool_calls == (call,)


def test_tools_count_against_the_limit() -> None:
    """Tool schemas are part of the prompt: a large one leaves less room for history."""
    history = (user("old words"), ChatMessage.assistant("reply"))
    plain = ChatRequest(messages=[user("new")])
    with_tool = attrs.evolve(plain, tools=[ToolDefinition(name="t", description="w " * 20)])
    limit = count_messages([*history, *plain.messages], WORDS)
    keep = DEFAULT.build(plain, context(history=history, token_limit=limit, token_counter=WORDS))
    drop = DEFAULT.build(
        with_tool, context(history=history, token_limit=limit, token_counter=WORDS)
    )
    assert (len(keep.messages), len(drop.messages)) == (3, 1)


# --- translation --------------------------------------------------------------------------------


def test_translation_prompt_for_an_llm() -> None:
    """A system prompt asks for a faithful translation, from and into the requested
    languages, answering with the translation only; the caller's own system messages and
    the text follow."""
    request = ChatRequest(
        messages=[ChatMessage.system("Glossary: Welt = world"), user("Hallo Welt")],
        variables={"source_language": "de", "target_language": "en"},
    )
    built = TranslationPromptBuilder().build(request, context())
    instruction = built.messages[0]
    assert instruction.role == "system"
    assert "from de into en" in (instruction.content or "")
    assert "translated text only" in (instruction.content or "")
    assert contents(built)[1:] == [("system", "Glossary: Welt = world"), ("user", "Hallo Welt")]


def test_translation_languages_fall_back_to_metadata() -> None:
    """Like EasyNMT, the builder reads the languages from metadata when variables have none;
    without a source language the model is asked to detect it."""
    request = ChatRequest(messages=[user("Bonjour")], metadata={"target_lang": "en"})
    built = TranslationPromptBuilder().build(request, context())
    text = built.messages[0].content or ""
    assert "into en" in text
    assert " from " not in text


def test_translation_without_target_language_is_a_clear_error() -> None:
    """No target language anywhere: an InvalidRequestError saying where to put it."""
    with pytest.raises(InvalidRequestError) as raised:
        TranslationPromptBuilder().build(ChatRequest(messages=[user("Hallo")]), context())
    assert "variables['target_language']" in raised.value.message
    assert raised.value.code == "missing_target_language"


def test_translation_for_easynmt_sets_the_metadata_it_reads() -> None:
    """For an easynmt backend the messages stay; the languages go into metadata (variables
    win over metadata aliases)."""
    request = ChatRequest(
        messages=[user("Hallo Welt")],
        variables={"target_language": "en"},
        metadata={"target_lang": "fr", "source_lang": "de", "beam_size": 2},
    )
    built = TranslationPromptBuilder().build(
        request, PromptContext(backend="nmt", backend_type="easynmt")
    )
    assert built.messages == request.messages
    assert built.metadata == {
        "target_lang": "fr",
        "source_lang": "de",
        "beam_size": 2,
        "target_language": "en",
        "source_language": "de",
    }


def easynmt(request: ReceivedRequest) -> ScriptedReply:
    """EasyNMT's POST /translate: each text becomes `<target> text`."""
    body = request.json
    translated = [f"<{body['target_lang']}> {text}" for text in body["text"]]
    return json_reply({"translated": translated, "target_lang": body["target_lang"]})


async def test_translation_through_the_service_on_easynmt_and_an_llm(
    replay_server: ReplayServer, tmp_path: Path
) -> None:
    """One translation request works on EasyNMT (languages sent as EasyNMT's fields) and, on
    failover, on an LLM backend (which gets the translation prompt)."""
    replay_server.default = easynmt
    config = settings(
        {
            "name": "nmt",
            "type": "easynmt",
            "base_url": replay_server.url,
            "prompt_builder_type": "translation",
            "timeout_seconds": 5,
        },
        fake("llm", prompt_builder_type="Translation", priority=200),
    )
    request = ChatRequest(
        messages=[user("Hallo Welt")], variables={"target_language": "en", "source_language": "de"}
    )
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        by_nmt = await svc.chat(request)
        by_llm = await svc.chat(attrs.evolve(request, preferred_backend="llm"))
        llm_saw = sent(script(svc, "llm"))

    assert (by_nmt.backend, by_nmt.content) == ("nmt", "<en> Hallo Welt")
    [call] = replay_server.requests
    assert call.json == {"text": ["Hallo Welt"], "target_lang": "en", "source_lang": "de"}
    assert by_llm.backend == "llm"
    assert llm_saw.messages[0].role == "system"
    assert "from de into en" in (llm_saw.messages[0].content or "")
    assert contents(llm_saw)[1:] == [("user", "Hallo Welt")]


# --- per-backend selection, fast path -------------------------------------------------------------


async def test_each_backend_gets_the_prompt_of_its_own_builder(tmp_path: Path) -> None:
    """Fanned out to two backends, the `default` one sees the filled template and the
    `translation` one the translation prompt, from the same request."""
    config = settings(fake("plain"), fake("translator", prompt_builder_type="translation"))
    request = ChatRequest(
        messages=[user("Say {{ word }}")],
        variables={"word": "hello", "target_language": "fr"},
        selection_strategy="simultaneous",
    )
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        await svc.chat(request)
        plain, translator = sent(script(svc, "plain")), sent(script(svc, "translator"))

    assert contents(plain) == [("user", "Say hello")]
    assert [m.role for m in translator.messages] == ["system", "user"]
    assert "into fr" in (translator.messages[0].content or "")
    assert translator.messages[1].content == "Say {{ word }}"


async def test_a_builder_error_fails_the_request_before_the_backend(tmp_path: Path) -> None:
    """A request the builder refuses never reaches the backend, with or without a stream."""
    config = settings(fake("t", prompt_builder_type="translation"))
    request = ChatRequest(messages=[user("Hallo")])
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        with pytest.raises(InvalidRequestError, match="needs the target language"):
            await svc.chat(request)
        with pytest.raises(InvalidRequestError, match="needs the target language"):
            _ = [event async for event in svc.stream(request)]
        calls = script(svc, "t").calls
    assert calls == 0


async def test_a_plain_request_reaches_the_backend_unchanged(tmp_path: Path) -> None:
    """Without variables or a conversation, the default builder does nothing: the backend
    receives the caller's request object itself (the fast path)."""
    request = ChatRequest(messages=[user("hi")])
    async with open_service(settings(fake("a")), plugins=[FakeBackendPlugin()]) as svc:
        assert svc.prompts.needs(request) is False
        await svc.chat(request)
        assert sent(script(svc, "a")) is request
        templated = attrs.evolve(request, variables={"x": "y"})
        assert svc.prompts.needs(templated) is True


# --- registration and plugins -----------------------------------------------------------------


class ShoutBuilder:
    """Upper-cases the user's messages."""

    def build(self, request: ChatRequest, context: PromptContext) -> ChatRequest:
        shouted = [
            attrs.evolve(m, content=(m.content or "").upper()) if m.role == "user" else m
            for m in request.messages
        ]
        return attrs.evolve(request, messages=shouted)


class ShoutPlugin(FakeBackendPlugin):
    """A plugin that also offers a prompt builder."""

    plugin_id = "shout"
    supported_backend_types = ("shouting-fake",)
    prompt_builders: ClassVar[Mapping[str, Any]] = {"Shout": ShoutBuilder}


@pytest.fixture
def registered_builder() -> Iterator[str]:
    """A builder registered at runtime for one test."""
    register_prompt_builder("echo-twice", ShoutBuilder)
    try:
        yield "echo-twice"
    finally:
        unregister_prompt_builder("echo-twice")


async def test_a_registered_builder_can_be_selected(registered_builder: str) -> None:
    """register_prompt_builder makes a name selectable by prompt_builder_type."""
    assert registered_builder in prompt_builder_names()
    config = settings(fake("a", prompt_builder_type=registered_builder))
    async with open_service(config, plugins=[FakeBackendPlugin()]) as svc:
        await svc.chat(ChatRequest(messages=[user("quiet")]))
        assert contents(sent(script(svc, "a"))) == [("user", "QUIET")]
    assert unregister_prompt_builder(registered_builder) is True
    assert registered_builder not in prompt_builder_names()


def test_registration_refuses_built_in_names_and_bad_factories() -> None:
    """Built-in names cannot be replaced; names and factories are checked."""
    with pytest.raises(PluginError, match="'default' is built in"):
        register_prompt_builder("Default", ShoutBuilder)
    with pytest.raises(PluginError, match="is not a name"):
        register_prompt_builder("two words", ShoutBuilder)
    with pytest.raises(PluginError, match="not callable"):
        register_prompt_builder("x", "not a factory")  # type: ignore[arg-type]
    assert prompt_builder_names() == ["default", "translation"]


def test_a_broken_factory_is_reported_when_the_service_is_built() -> None:
    """A factory that raises, or makes something without build(), fails at open time,
    naming the builder and the backend -- not on the first request."""
    configs = [LlmBackendConfig(name="a", type="openai", prompt_builder_type="bad")]

    def explode() -> Any:
        raise RuntimeError("boom")

    for factory, message in (
        (explode, "prompt builder 'bad' of backend 'a' could not be created: RuntimeError: boom"),
        (object, "prompt builder 'bad' of backend 'a' is a object, with no build()"),
    ):
        with pytest.raises(PluginError) as raised:
            PromptPipeline.build(LlmSettings(backends=configs), configs, table={"bad": factory})
        assert str(raised.value).startswith(message)


async def test_a_plugin_provides_a_builder(tmp_path: Path) -> None:
    """A plugin's prompt_builders are selectable (case-insensitively) by the backends of a
    service that loaded it."""
    config = settings(fake("a", prompt_builder_type="shout"), fake("b"))
    request = ChatRequest(messages=[user("hello")], selection_strategy="simultaneous")
    plugins = [FakeBackendPlugin(), ShoutPlugin()]
    async with open_service(config, plugins=plugins, base_dir=tmp_path) as svc:
        await svc.chat(request)
        shouted, plain = sent(script(svc, "a")), sent(script(svc, "b"))
    assert contents(shouted) == [("user", "HELLO")]
    assert contents(plain) == [("user", "hello")]


async def test_a_plugin_file_provides_a_builder(tmp_path: Path) -> None:
    """Plugins loaded from files (specific_plugins) contribute builders the same way."""
    (tmp_path / "polite.py").write_text(
        "import attrs\n"
        "from llmbackend.testing import FakeBackendPlugin\n"
        "class Polite:\n"
        "    def build(self, request, context):\n"
        "        first = request.messages[0]\n"
        "        polite = attrs.evolve(first, content=first.content + ', please')\n"
        "        return attrs.evolve(request, messages=[polite, *request.messages[1:]])\n"
        "class PolitePlugin(FakeBackendPlugin):\n"
        "    plugin_id = 'polite'\n"
        "    supported_backend_types = ('polite-fake',)\n"
        "    prompt_builders = {'polite': Polite}\n"
    )
    config = settings(
        fake("a", prompt_builder_type="polite"),
        plugins={"specific_plugins": ["polite.py"], "plugin_directory": "none"},
    )
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        await svc.chat(ChatRequest(messages=[user("help")]))
        assert contents(sent(script(svc, "a"))) == [("user", "help, please")]


def test_malformed_plugin_builders_are_skipped_not_fatal() -> None:
    """A plugin whose prompt_builders is not a mapping, or that tries to replace a built-in,
    is ignored for that builder; the rest still load."""

    class Broken(FakeBackendPlugin):
        plugin_id = "broken"
        prompt_builders = ("not", "a", "mapping")

    class Greedy(FakeBackendPlugin):
        plugin_id = "greedy"
        prompt_builders: ClassVar[Mapping[str, Any]] = {
            "default": ShoutBuilder,
            "bad name!": ShoutBuilder,
            "ok": ShoutBuilder,
        }

    registry = PluginRegistry()
    registry.register(Broken())
    registry.register(Greedy())
    table = prompt_builder_table(registry)
    assert sorted(table) == ["default", "ok", "translation"]
    assert table["default"] is DefaultPromptBuilder


# --- configuration --------------------------------------------------------------------------------


async def test_unknown_builder_is_a_configuration_error_with_its_path() -> None:
    """An unknown prompt_builder_type stops open_service, naming the backend's path, a
    suggestion and the known builders."""
    config = settings(fake("a"), fake("b", prompt_builder_type="translaton"))
    with pytest.raises(ConfigurationError) as raised:
        async with open_service(config, plugins=[FakeBackendPlugin()]):
            pass
    [problem] = raised.value.problems
    assert problem.path == "backends[1].prompt_builder_type"
    assert problem.message == (
        "unknown prompt builder 'translaton'; did you mean 'translation'? "
        "(known: default, translation; plugins may register more)"
    )


def test_a_malformed_builder_name_is_reported_at_load_time() -> None:
    """load_settings rejects a prompt_builder_type that cannot be a name, with its path."""
    with pytest.raises(ConfigurationError) as raised:
        load_settings(settings(fake("a"), fake("b", prompt_builder_type="my builder")))
    assert [(p.path, p.message) for p in raised.value.problems] == [
        (
            "backends[1].prompt_builder_type",
            "'my builder' is not a prompt builder name (letters, digits, '_', '-', '.')",
        )
    ]


def test_a_service_built_directly_checks_builders_too() -> None:
    """Building the pipeline without open_service reports unknown builders the same way."""
    configs = [LlmBackendConfig(name="a", type="openai", prompt_builder_type="nope")]
    with pytest.raises(ConfigurationError, match=r"backends\[0\]\.prompt_builder_type"):
        PromptPipeline.build(LlmSettings(backends=configs), configs)


# --- the response cache ---------------------------------------------------------------------------


def test_cache_key_includes_variables_only_when_given() -> None:
    """Different variables give different keys; no variables keeps the key it always had."""
    base = ChatRequest(messages=[user("{{ x }}")])
    one = canonical_request(attrs.evolve(base, variables={"x": "1"}))
    two = canonical_request(attrs.evolve(base, variables={"x": "2"}))
    assert len({one, two, canonical_request(base)}) == 3
    assert "variables" not in canonical_request(base)


async def test_cache_never_serves_an_answer_for_other_variables(tmp_path: Path) -> None:
    """With caching on, the same template with other values, or a translation into another
    language given only in metadata, is answered afresh; the same values hit."""
    config = settings(
        fake("a"), fake("t", prompt_builder_type="translation"), caching={"enabled": True}
    )
    template = ChatRequest(messages=[user("Hi {{ name }}")], preferred_backend="a")
    german = ChatRequest(
        messages=[user("Hello")], metadata={"target_language": "de"}, preferred_backend="t"
    )
    french = attrs.evolve(german, metadata={"target_language": "fr"})
    async with open_service(config, plugins=[FakeBackendPlugin()], base_dir=tmp_path) as svc:
        ann = await svc.chat(attrs.evolve(template, variables={"name": "Ann"}))
        bob = await svc.chat(attrs.evolve(template, variables={"name": "Bob"}))
        ann_again = await svc.chat(attrs.evolve(template, variables={"name": "Ann"}))
        de = await svc.chat(german)
        fr = await svc.chat(french)
        seen = [contents(sent(script(svc, "a"), i)) for i in range(2)]
    assert (ann.cached, bob.cached, ann_again.cached, de.cached, fr.cached) == (
        False,
        False,
        True,
        False,
        False,
    )
    assert seen == [[("user", "Hi Ann")], [("user", "Hi Bob")]]


# --- token counters -------------------------------------------------------------------------------


class FakeEncoding:
    """Stands in for a tiktoken encoding: one token per character."""

    def encode(self, text: str, disallowed_special: Any = "all") -> list[int]:
        assert disallowed_special == ()  # special-token text is counted, never refused
        return [ord(c) for c in text]


@pytest.fixture
def fresh_counter() -> Iterator[None]:
    """default_token_counter is cached per process: start and end each test without it."""
    default_token_counter.cache_clear()
    yield
    default_token_counter.cache_clear()


def fake_tiktoken(get_encoding: Any) -> types.ModuleType:
    module = types.ModuleType("tiktoken")
    module.get_encoding = get_encoding  # type: ignore[attr-defined]
    return module


@pytest.mark.usefixtures("fresh_counter")
def test_installed_tiktoken_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """With tiktoken importable, its o200k_base encoding counts."""
    asked: list[str] = []

    def get_encoding(name: str) -> FakeEncoding:
        asked.append(name)
        return FakeEncoding()

    monkeypatch.setitem(sys.modules, "tiktoken", fake_tiktoken(get_encoding))
    counter = default_token_counter()
    assert (counter.name, counter.count("hello"), asked) == (
        f"tiktoken:{TIKTOKEN_ENCODING}",
        5,
        [TIKTOKEN_ENCODING],
    )
    assert default_token_counter() is counter  # loaded once


@pytest.mark.usefixtures("fresh_counter")
def test_without_tiktoken_the_estimate_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken missing, or its encoding unloadable (offline): the estimate, ~4 chars a token."""
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import fails
    assert default_token_counter() is ESTIMATE
    assert ESTIMATE.count("12345678") == 2
    default_token_counter.cache_clear()

    def offline(name: str) -> FakeEncoding:
        raise OSError("no network")

    monkeypatch.setitem(sys.modules, "tiktoken", fake_tiktoken(offline))
    assert default_token_counter() is ESTIMATE


@pytest.mark.usefixtures("fresh_counter")
async def test_open_service_counts_memory_tokens_with_the_installed_tokenizer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With memory on, open_service picks the real tokenizer when it is installed; an
    explicit token_counter wins; with memory off no tokenizer is loaded."""
    monkeypatch.setitem(sys.modules, "tiktoken", fake_tiktoken(lambda name: FakeEncoding()))
    memory_on = settings(fake("a"), memory={"enabled": True})
    async with open_service(memory_on, plugins=[FakeBackendPlugin()]) as svc:
        assert svc.memory is not None
        assert svc.memory.token_counter.name == "tiktoken:o200k_base"
    async with open_service(memory_on, plugins=[FakeBackendPlugin()], token_counter=WORDS) as svc:
        assert svc.memory is not None
        assert svc.memory.token_counter is WORDS
    default_token_counter.cache_clear()
    async with open_service(settings(fake("a")), plugins=[FakeBackendPlugin()]) as svc:
        assert svc.memory is None
    assert default_token_counter.cache_info().currsize == 0
