"""Chat sessions: ``achat()`` / ``AsyncChatSession`` and ``chat()`` / ``ChatSession``.

History, the system prompt on every turn, streamed turns, tool calls and their results,
totals, failed turns, and the JSON file form. The requests a fake provider received show
what was really sent.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmbackend import (
    AsyncChatSession,
    ChatMessage,
    ChatSession,
    FinishEvent,
    InvalidRequestError,
    SelectionStrategy,
    StreamInterruptedError,
    TextDelta,
    ToolCall,
    ToolDefinition,
    achat,
    chat,
    configure,
    open_service,
)
from llmbackend.quick import close_default_service
from llmbackend.testing import Behavior, FakeBackend, FakeBackendPlugin, FakeOpenAIServer, FakeReply

FIRST, SECOND, THIRD = "Ahoy there.", "Ye said hello.", "The sum be five."
INPUT_PRICE, OUTPUT_PRICE = 2.0, 6.0  # USD per million tokens
ADD = ToolDefinition(
    name="add",
    description="Add two numbers.",
    parameters={"type": "object", "properties": {"a": {"type": "number"}}},
)
CALL = ToolCall(id="call_1", name="add", arguments='{"a": 2, "b": 3}')


def words(text: str) -> int:
    """The fake server's token count."""
    return len(text.split())


def write_config(path: Path, base_url: str) -> Path:
    path.write_text(
        "max_retries = 0\n"
        "[[backends]]\n"
        'name = "local"\n'
        'type = "openai_compatible"\n'
        f'base_url = "{base_url}"\n'
        'model_name = "fake-model"\n'
        f"cost_per_million_input_tokens = {INPUT_PRICE}\n"
        f"cost_per_million_output_tokens = {OUTPUT_PRICE}\n"
    )
    return path


def sent_messages(server: FakeOpenAIServer, index: int = -1) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = server.requests[index].json["messages"]
    return messages


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No real config is found; the sync forms' loop is closed after each test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("LLMBACKEND_CONFIG", raising=False)
    monkeypatch.chdir(home)
    yield
    close_default_service()
    configure(None)


@pytest.fixture
async def server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[FakeOpenAIServer]:
    """A fake provider found through ./llmbackend.toml in the working directory."""
    async with FakeOpenAIServer(reply=FIRST) as running:
        write_config(Path("llmbackend.toml"), running.base_url)
        yield running


# --- history and totals ----------------------------------------------------------------------


async def test_the_system_prompt_and_the_history_are_sent_on_every_turn(
    server: FakeOpenAIServer,
) -> None:
    """Turn two sends the system prompt first, then turn one's prompt and answer; the
    history holds those without the system prompt."""
    server.enqueue(FIRST, SECOND)
    async with achat("You are a pirate.", temperature=0.3) as session:
        first = await session.send("Hello")
        second = await session.send("What did I say?")

    assert (first, second) == (FIRST, SECOND)
    system = {"role": "system", "content": "You are a pirate."}
    assert sent_messages(server, 0) == [system, {"role": "user", "content": "Hello"}]
    assert sent_messages(server, 1) == [
        system,
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": FIRST},
        {"role": "user", "content": "What did I say?"},
    ]
    assert [request.json["temperature"] for request in server.requests] == [0.3, 0.3]
    assert session.history == (
        ChatMessage.user("Hello"),
        ChatMessage.assistant(FIRST),
        ChatMessage.user("What did I say?"),
        ChatMessage.assistant(SECOND),
    )
    assert session.system == "You are a pirate."


async def test_totals_add_up_over_the_turns(server: FakeOpenAIServer) -> None:
    """Tokens and cost per session are the sums over its answers; turns counts them."""
    server.enqueue(FIRST, SECOND)
    session = achat("Be brief.")
    answers = [await session.send("one"), await session.send("two")]

    assert session.turns == 2
    assert session.prompt_tokens == sum(answer.prompt_tokens for answer in answers)
    assert session.completion_tokens == words(FIRST) + words(SECOND)
    assert session.total_tokens == session.prompt_tokens + session.completion_tokens
    expected = (
        session.prompt_tokens * INPUT_PRICE + session.completion_tokens * OUTPUT_PRICE
    ) / 1e6
    assert session.cost_usd == pytest.approx(expected)
    # Turn two was charged for the whole history: "Be brief." + "one" + FIRST + "two".
    assert answers[1].prompt_tokens == words("Be brief. one two") + words(FIRST)


async def test_clear_forgets_the_history_but_keeps_system_prompt_and_totals(
    server: FakeOpenAIServer,
) -> None:
    """After clear() the next turn sends only the system prompt and the new prompt."""
    session = achat("Be brief.")
    await session.send("one")
    spent = session.total_tokens
    session.clear()
    await session.send("two")

    assert sent_messages(server) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "two"},
    ]
    assert session.history == (ChatMessage.user("two"), ChatMessage.assistant(FIRST))
    assert session.total_tokens > spent
    assert session.turns == 2


# --- streamed turns --------------------------------------------------------------------------


async def test_a_streamed_turn_joins_the_history_when_it_completes(
    server: FakeOpenAIServer,
) -> None:
    """stream() yields the raw events; the answer joins the history only at the end, and
    stream_text() gives the text of the next turn, sent with the whole history."""
    server.enqueue(FIRST, SECOND)
    async with achat("Be brief.") as session:
        events = session.stream("Hello")
        seen = []
        async for event in events:
            seen.append(event)
            assert session.history == ()  # nothing is added before the answer is complete
        text = "".join([chunk async for chunk in session.stream_text("And?")])

    assert isinstance(seen[-1], FinishEvent)
    assert "".join(e.text for e in seen if isinstance(e, TextDelta)) == FIRST
    assert events.answer == FIRST
    assert events.answer.cost_usd is not None
    assert text == SECOND
    assert session.history[1:] == (
        ChatMessage.assistant(FIRST),
        ChatMessage.user("And?"),
        ChatMessage.assistant(SECOND),
    )
    assert sent_messages(server)[1:3] == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": FIRST},
    ]
    assert session.turns == 2


# --- failed turns ----------------------------------------------------------------------------


async def test_a_failed_turn_leaves_the_history_unchanged(server: FakeOpenAIServer) -> None:
    """A rejected call, a cut stream and an abandoned stream add nothing to the history
    (not even the prompt) and no totals; the next turn is sent without them."""
    session = achat("Be brief.")
    await session.send("one")
    before = (session.history, session.total_tokens, session.turns)

    server.enqueue(Behavior.error(400))
    with pytest.raises(InvalidRequestError):
        await session.send("rejected")
    server.enqueue(Behavior.cut_stream(after_chunks=1))
    with pytest.raises(StreamInterruptedError):
        async for _ in session.stream("cut"):
            pass
    async with session.stream_text("abandoned") as chunks:
        await anext(chunks)

    assert (session.history, session.total_tokens, session.turns) == before
    await session.send("two")
    assert [m["content"] for m in sent_messages(server)] == ["Be brief.", "one", FIRST, "two"]


async def test_two_turns_at_once_do_not_interleave(server: FakeOpenAIServer) -> None:
    """Of two turns started on the same history, the first to finish is kept and the other
    raises instead of stitching the conversation together."""
    session = achat()
    results = await asyncio.gather(session.send("a"), session.send("b"), return_exceptions=True)

    errors = [result for result in results if isinstance(result, BaseException)]
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)
    assert "the conversation changed" in str(errors[0])
    assert len(session.history) == 2
    assert session.turns == 1


# --- tool calls ------------------------------------------------------------------------------


async def test_tool_calls_and_results_are_kept_and_the_model_continues(
    server: FakeOpenAIServer,
) -> None:
    """An answer asking for a tool is kept with its call; the result is sent back as a tool
    message with its call id; resume() gets the final answer."""
    server.enqueue(Behavior.ok(tool_calls=[CALL]), THIRD)
    session = achat("Use tools.", tools=[ADD])
    asked = await session.send("What is 2 + 3?")

    assert asked.tool_calls == (CALL,)
    assert session.pending_tool_calls == (CALL,)
    with pytest.raises(ValueError, match="have no result yet"):
        await session.send("never mind")
    with pytest.raises(ValueError, match="no pending tool call 'call_9'"):
        session.add_tool_result("call_9", "5")
    session.add_tool_result("call_1", {"sum": 5})
    assert session.pending_tool_calls == ()
    final = await session.resume()

    assert final == THIRD
    assert sent_messages(server)[-2:] == [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                }
            ],
        },
        {"role": "tool", "content": '{"sum": 5}', "tool_call_id": "call_1"},
    ]
    assert server.requests[-1].json["tools"][0]["function"]["name"] == "add"
    assert [message.role for message in session.history] == [
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert session.turns == 2
    with pytest.raises(ValueError, match="nothing to resume"):
        await session.resume()


async def test_an_explicit_service_is_used_instead_of_the_default() -> None:
    """achat(service=...) talks to that service; here a scripted FakeBackend that asks for
    a tool, streamed, then answers."""
    config = {"backends": [{"name": "fake", "custom_backend_type": "fake"}]}
    async with open_service(config, plugins=[FakeBackendPlugin()]) as service:
        fake = service.backend("fake")
        assert isinstance(fake, FakeBackend)
        fake.push(FakeReply(text="", tool_calls=[CALL]), FakeReply(text="five"))
        async with achat(service=service, tools=[ADD]) as session:
            events = [event async for event in session.stream("2 + 3?")]
            session.add_tool_result("call_1", "5")
            final = await session.resume()

    assert isinstance(events[-1], FinishEvent)
    assert session.history[1] == ChatMessage.assistant(None, tool_calls=[CALL])
    assert (final, final.backend) == ("five", "fake")
    last = fake.history[-1]
    assert [message.role for message in last.messages] == ["user", "assistant", "tool"]  # type: ignore[union-attr]


# --- files -----------------------------------------------------------------------------------


async def test_save_and_load_round_trip_the_whole_session(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A saved session (tool call and result included) loads back equal, and its next turn
    sends the same history with the same parameters."""
    server.enqueue(Behavior.ok(tool_calls=[CALL]), THIRD, SECOND)
    session = achat(
        "Use tools.",
        model="fake-model",
        tools=[ADD],
        temperature=0.2,
        selection_strategy="failover",
        stop_sequences=["END"],
    )
    await session.send("What is 2 + 3?")
    session.add_tool_result("call_1", "5")
    await session.resume()
    path = tmp_path / "session.json"
    await session.save(path)

    saved = json.loads(path.read_text())
    assert (saved["version"], saved["system"], saved["model"]) == (1, "Use tools.", "fake-model")
    assert saved["params"]["temperature"] == 0.2
    assert saved["params"]["selection_strategy"] == "failover"
    assert saved["messages"][2] == {"role": "tool", "content": "5", "tool_call_id": "call_1"}
    assert saved["totals"]["turns"] == 2

    loaded = await AsyncChatSession.load(path)
    assert loaded.history == session.history
    assert loaded.params == session.params
    assert loaded.params["selection_strategy"] is SelectionStrategy.FAILOVER
    assert loaded.params["tools"] == (ADD,)
    totals = ("prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "turns")
    assert [getattr(loaded, name) for name in totals] == [getattr(session, name) for name in totals]
    assert loaded.to_dict() == session.to_dict()

    await loaded.send("Thanks")
    assert sent_messages(server)[:-1] == [
        *sent_messages(server, 1),
        {"role": "assistant", "content": THIRD},
    ]
    assert server.requests[-1].json["stop"] == ["END"]


@pytest.mark.parametrize(
    ("content", "problems"),
    [
        ("{not json", ["not valid JSON"]),
        ('["a list"]', ["expected a JSON object"]),
        ('{"version": 2}', ["version 2", "it reads version 1"]),
        (
            json.dumps(
                {
                    "version": 1,
                    "system": 7,
                    "messages": [{"role": "robot", "content": "hi"}, {"role": "user", "txt": 1}],
                    "params": {"temprature": 0.1, "max_tokens": "many"},
                    "extra": True,
                }
            ),
            [
                "system: expected a string, got int",
                "messages[0].role: expected one of system, user, assistant, tool",
                "messages[1].txt: unknown key",
                "params.temprature: not a chat parameter; did you mean 'temperature'?",
                "params.max_tokens: expected an integer, got str",
                "extra: unknown key",
            ],
        ),
    ],
)
async def test_loading_a_bad_file_names_the_file_and_every_problem(
    tmp_path: Path, content: str, problems: list[str]
) -> None:
    """A file that is not a valid session raises ValueError naming the file and each
    problem with its path."""
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"bad\.json") as caught:
        await AsyncChatSession.load(path)
    for problem in problems:
        assert problem in str(caught.value)


async def test_closing_a_session_closes_its_unfinished_stream(server: FakeOpenAIServer) -> None:
    """Leaving `async with achat()` closes a stream still being read (the turn is dropped)
    and the session: a later turn is a clear error."""
    server.enqueue(FIRST, Behavior.stream_stall(after_chunks=2))
    async with achat() as session:
        await session.send("hi")
        chunks = session.stream_text("and?")
        await anext(chunks)

    assert chunks.finished
    assert len(session.history) == 2
    with pytest.raises(RuntimeError, match="the chat session is closed"):
        await session.send("again")


async def test_session_keywords_are_checked_when_the_session_is_made() -> None:
    """Unknown keywords and bad values fail in achat(), before any turn."""
    with pytest.raises(
        TypeError, match="achat\\(\\) got an unexpected keyword argument 'tempreture'"
    ):
        achat(tempreture=0.1)
    with pytest.raises(ValueError, match="not a valid SelectionStrategy"):
        achat(selection_strategy="fastest")
    with pytest.raises(TypeError, match="system prompt must be a str"):
        achat(42)  # type: ignore[arg-type]


# --- the sync session ------------------------------------------------------------------------


def test_a_sync_session_works_from_a_plain_function(tmp_path: Path) -> None:
    """chat() keeps history across send() and stream_text() without any loop of the
    caller's, and saves/loads synchronously."""
    ready, stop = threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        async with FakeOpenAIServer(reply=FIRST) as running:
            running.enqueue(FIRST, SECOND, THIRD)
            box["server"] = running
            ready.set()
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        server: FakeOpenAIServer = box["server"]
        write_config(Path("llmbackend.toml"), server.base_url)
        with chat("Be brief.") as session:
            assert session.send("one") == FIRST
            chunks = session.stream_text("two")
            assert "".join(chunks) == SECOND
            assert chunks.answer.backend == "local"
            events = list(session.stream("three"))
        assert isinstance(events[-1], FinishEvent)
        assert [m["content"] for m in sent_messages(server)] == [
            "Be brief.",
            "one",
            FIRST,
            "two",
            SECOND,
            "three",
        ]
        assert session.turns == 3
        session.save(tmp_path / "sync.json")
        loaded = ChatSession.load(tmp_path / "sync.json")
        assert loaded.history == session.history
        assert loaded.total_tokens == session.total_tokens
    finally:
        stop.set()
        thread.join(10)
