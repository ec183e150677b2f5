"""The quick API: ``ask`` / ``aask``, ``stream`` / ``astream``, ``Answer``, the default service.

Async tests run a ``FakeOpenAIServer`` on their own loop. Tests of the sync forms are plain
functions (no running loop, like a script); their server runs on a loop in a thread of its
own, and the background loop of the sync forms is closed after each test.
"""

from __future__ import annotations

import asyncio
import gc
import json
import pickle
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmbackend import (
    Answer,
    AuthenticationError,
    ConfigurationError,
    FinishEvent,
    FinishReason,
    LlmResponse,
    StreamRestarted,
    TextDelta,
    ToolCall,
    ToolDefinition,
    aask,
    aclose_default_service,
    ask,
    astream,
    chat,
    configure,
    stream,
)
from llmbackend import _default_service as internals
from llmbackend.quick import close_default_service, default_service
from llmbackend.testing import Behavior, FakeOpenAIServer

REPLY = "The sky is blue because of Rayleigh scattering."
INPUT_PRICE = 1.5  # USD per million tokens
OUTPUT_PRICE = 4.0
#: Tasks of the SDK that live as long as a default service does.
SERVICE_TASKS = {"llmbackend-default-service", "llmbackend-health-checks"}


def words(text: str) -> int:
    """The fake server's token count."""
    return len(text.split())


def write_config(path: Path, base_url: str, *, name: str = "local", extra: str = "") -> Path:
    """A config with one OpenAI-compatible backend at ``base_url``, with prices."""
    path.write_text(
        "max_retries = 0\n"
        f"{extra}"
        "[[backends]]\n"
        f'name = "{name}"\n'
        'type = "openai_compatible"\n'
        f'base_url = "{base_url}"\n'
        'model_name = "fake-model"\n'
        f"cost_per_million_input_tokens = {INPUT_PRICE}\n"
        f"cost_per_million_output_tokens = {OUTPUT_PRICE}\n"
    )
    return path


def sdk_task_names() -> set[str]:
    """Names of the running tasks whose coroutine is SDK code (not tests, not fakes)."""
    names = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        filename = code.co_filename if code is not None else ""
        if "/llmbackend/" in filename and "/testing/" not in filename:
            names.add(task.get_name())
    return names


class ServerThread:
    """A FakeOpenAIServer on an event loop in its own thread: the tests of the sync forms
    have no loop, and the sync forms run on a background loop of their own."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.server: FakeOpenAIServer | None = None

    async def _main(self) -> None:
        async with FakeOpenAIServer(**self._options) as server:
            self.server, self._loop, self._stop = (
                server,
                asyncio.get_running_loop(),
                asyncio.Event(),
            )
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        assert self._ready.wait(10), "the fake server did not start"
        assert self.server is not None
        return self.server

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No real config is found (HOME and cwd are empty dirs); afterwards the sync forms'
    background loop is closed and the default source is back to discovery."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("LLMBACKEND_CONFIG", raising=False)
    monkeypatch.chdir(home)
    yield
    close_default_service()
    configure(None)


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(reply=REPLY) as running:
        yield running


@pytest.fixture
def configured(server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config file named by LLMBACKEND_CONFIG, pointing at ``server``."""
    path = write_config(tmp_path / "quick.toml", server.base_url)
    monkeypatch.setenv("LLMBACKEND_CONFIG", str(path))
    return path


@pytest.fixture
def threaded_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    """A server in its own thread, and a config file naming it through LLMBACKEND_CONFIG."""
    with ServerThread(reply=REPLY) as running:
        path = write_config(tmp_path / "quick.toml", running.base_url)
        monkeypatch.setenv("LLMBACKEND_CONFIG", str(path))
        yield running


def expected_cost(prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * INPUT_PRICE + completion_tokens * OUTPUT_PRICE) / 1_000_000


# --- Answer ----------------------------------------------------------------------------------


def test_answer_behaves_as_its_text_and_carries_the_metadata(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Answer prints, compares, measures, formats and JSON-encodes as the text, keeps the
    response's metadata (also through pickle) and shows backend/model in its repr."""
    call = ToolCall(id="c1", name="f")
    response = LlmResponse(
        content="forty two",
        backend="local",
        model="m-1",
        prompt_tokens=3,
        completion_tokens=2,
        total_tokens=5,
        cost_usd=0.25,
        duration_ms=12.5,
        finish_reason=FinishReason.STOP,
        cached=True,
        tool_calls=[call],
    )
    answer = Answer(response)

    print(answer)
    assert capsys.readouterr().out == "forty two\n"
    assert answer == "forty two"
    assert len(answer) == 9
    assert f"<{answer}>" == "<forty two>"
    assert json.dumps({"a": answer}) == '{"a": "forty two"}'
    assert answer.upper() == "FORTY TWO"
    assert type(str(answer)) is str
    assert {answer: 1}["forty two"] == 1
    assert repr(answer) == "Answer('forty two', backend='local', model='m-1')"
    metadata = (
        answer.backend,
        answer.model,
        answer.prompt_tokens,
        answer.completion_tokens,
        answer.total_tokens,
        answer.cost_usd,
        answer.duration_ms,
        answer.finish_reason,
        answer.cached,
        answer.tool_calls,
    )
    assert metadata == ("local", "m-1", 3, 2, 5, 0.25, 12.5, FinishReason.STOP, True, (call,))
    assert answer.response is response
    restored = pickle.loads(pickle.dumps(answer))
    assert (restored, restored.response) == ("forty two", response)
    with pytest.raises(AttributeError):
        answer.backend = "other"  # type: ignore[misc]


def test_answer_wraps_only_a_response() -> None:
    """Answer("text") is a mistake with a clear message, not an Answer without metadata."""
    with pytest.raises(TypeError, match="Answer wraps an LlmResponse, not str"):
        Answer("text")  # type: ignore[arg-type]


# --- aask, discovery, parameters -------------------------------------------------------------


async def test_aask_uses_the_file_named_by_llmbackend_config(
    server: FakeOpenAIServer, configured: Path
) -> None:
    """aask finds the config through LLMBACKEND_CONFIG; the Answer is the server's text and
    its metadata are the server's usage and the configured prices."""
    answer = await aask("why is the sky blue?", system="Be brief.")

    assert answer == REPLY
    prompt_tokens = words("why is the sky blue?") + words("Be brief.")
    completion_tokens = words(REPLY)
    assert (answer.backend, answer.model) == ("local", "fake-model")
    assert (answer.prompt_tokens, answer.completion_tokens, answer.total_tokens) == (
        prompt_tokens,
        completion_tokens,
        prompt_tokens + completion_tokens,
    )
    assert answer.cost_usd == pytest.approx(expected_cost(prompt_tokens, completion_tokens))
    assert answer.finish_reason is FinishReason.STOP
    assert answer.cached is False
    assert answer.duration_ms > 0
    assert server.requests[-1].json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "why is the sky blue?"},
    ]


async def test_llmbackend_config_wins_over_the_file_in_the_working_directory(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """./llmbackend.toml is used when LLMBACKEND_CONFIG is unset; when it is set, it wins."""
    workdir = tmp_path / "project"
    workdir.mkdir()
    write_config(workdir / "llmbackend.toml", server.base_url, name="from-cwd")
    monkeypatch.chdir(workdir)
    assert (await aask("hi")).backend == "from-cwd"

    await aclose_default_service()  # the next call opens a service from the current source
    named = write_config(tmp_path / "named.toml", server.base_url, name="from-env")
    monkeypatch.setenv("LLMBACKEND_CONFIG", str(named))
    assert (await aask("hi")).backend == "from-env"


async def test_without_a_config_the_error_says_where_it_looked(tmp_path: Path) -> None:
    """No config anywhere: a ConfigurationError listing the places searched; the failure is
    not remembered, so creating the file makes the next call work."""
    with pytest.raises(ConfigurationError, match="no configuration file found") as caught:
        await aask("hi")
    assert "llmbackend.toml" in str(caught.value)
    assert str(tmp_path / "home" / ".config" / "llmbackend" / "config.toml") in str(caught.value)

    async with FakeOpenAIServer(reply="now it works") as server:
        write_config(Path("llmbackend.toml"), server.base_url)
        assert await aask("hi") == "now it works"


async def test_keywords_map_onto_the_request(server: FakeOpenAIServer, configured: Path) -> None:
    """Named and extra keywords reach the provider as the matching request fields."""
    tool = ToolDefinition(name="add", description="adds", parameters={"type": "object"})
    await aask(
        "hi",
        model="other-model",
        temperature=0.25,
        max_tokens=7,
        tools=[tool],
        top_p=0.5,
        stop_sequences=["END"],
        tool_choice="auto",
        response_format={"type": "json_object"},
    )

    body = server.requests[-1].json
    assert body["model"] == "other-model"
    assert (body["temperature"], body["max_tokens"], body["top_p"]) == (0.25, 7, 0.5)
    assert body["stop"] == ["END"]
    assert body["tools"][0]["function"]["name"] == "add"
    assert (body["tool_choice"], body["response_format"]) == ("auto", {"type": "json_object"})


async def test_an_unknown_keyword_is_a_type_error_naming_it_and_the_accepted_ones() -> None:
    """A misspelt keyword fails before any service is opened, with a suggestion and the list
    of accepted keywords; preferred_backend points to backend=; tools must be definitions."""
    with pytest.raises(TypeError) as caught:
        await aask("hi", temprature=0.2)
    message = str(caught.value)
    assert "aask() got an unexpected keyword argument 'temprature'" in message
    assert "did you mean 'temperature'?" in message
    for accepted in ("system", "backend", "top_p", "stop_sequences", "timeout_seconds"):
        assert accepted in message

    with pytest.raises(TypeError, match="use backend="):
        await aask("hi", preferred_backend="x")
    with pytest.raises(TypeError, match=r"tools\[0\] is a dict, not a ToolDefinition"):
        await aask("hi", tools=[{"name": "add"}])
    with pytest.raises(TypeError, match="the prompt must be a str, not int"):
        await aask(42)  # type: ignore[arg-type]


async def test_an_unknown_backend_lists_the_configured_ones(
    server: FakeOpenAIServer, configured: Path
) -> None:
    """backend= naming no configured backend: a ConfigurationError naming it, listing the
    configured backends and suggesting the close one; nothing is sent."""
    with pytest.raises(ConfigurationError) as caught:
        await aask("hi", backend="lcoal")
    assert "backend: no backend is called 'lcoal' (configured: local); did you mean 'local'?" in (
        str(caught.value)
    )
    assert server.counts[None] == 0
    assert (await aask("hi", backend="local")).backend == "local"


# --- the default service ---------------------------------------------------------------------


async def test_concurrent_first_calls_open_one_default_service(
    server: FakeOpenAIServer, configured: Path
) -> None:
    """Ten callers asking for the default service at once, and five questions at once, all
    use one service."""
    services = await asyncio.gather(*(default_service() for _ in range(10)))
    answers = await asyncio.gather(*(aask(f"question {n}") for n in range(5)))

    assert len({id(service) for service in services}) == 1
    assert services[0] is await default_service()
    assert answers == [REPLY] * 5
    assert services[0].get_statistics().requests == 5


@pytest.mark.parametrize("runner", ["asyncio.run", "asyncio.Runner"])
def test_the_default_service_closes_when_its_loop_shuts_down(
    runner: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After asyncio.run() / asyncio.Runner, the loop's default service and its HTTP session
    are closed without the caller doing anything, and no ResourceWarning is left."""
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with FakeOpenAIServer(reply=REPLY) as server:
            monkeypatch.setenv(
                "LLMBACKEND_CONFIG", str(write_config(tmp_path / "c.toml", server.base_url))
            )
            seen["answer"] = await aask("hi")
            service = await default_service()
            seen["session"] = service.backends[0].session

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if runner == "asyncio.run":
            asyncio.run(main())
        else:
            with asyncio.Runner() as loop_runner:
                loop_runner.run(main())
        gc.collect()

    assert seen["answer"] == REPLY
    assert seen["session"].closed
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert internals._slots == {}


async def test_aclose_default_service_closes_it_and_the_next_call_opens_another(
    server: FakeOpenAIServer, configured: Path
) -> None:
    """aclose_default_service() closes the loop's service now; the next call opens a new one."""
    first = await default_service()
    session = first.backends[0].session
    await aclose_default_service()

    assert session.closed
    second = await default_service()
    assert second is not first
    assert await aask("hi") == REPLY
    await aclose_default_service()
    await aclose_default_service()  # nothing open: a no-op


async def test_configure_replaces_the_source_and_closes_open_default_services(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """configure(dict) serves without any file and closes the service opened before;
    configure() checks its argument at once."""
    first_config = write_config(tmp_path / "first.toml", server.base_url, name="first")
    configure(first_config)
    session = (await default_service()).backends[0].session
    assert (await aask("hi")).backend == "first"
    keeper = next(t for t in asyncio.all_tasks() if t.get_name() == "llmbackend-default-service")

    backend = {
        "name": "second",
        "type": "openai_compatible",
        "base_url": server.base_url,
        "model_name": "fake-model",
    }
    configure({"backends": [backend]})
    assert (await aask("hi")).backend == "second"
    await asyncio.wait([keeper], timeout=5)  # the old service's keeper closes it
    assert session.closed

    with pytest.raises(ConfigurationError, match="does not exist"):
        configure(tmp_path / "missing.toml")
    with pytest.raises(ConfigurationError, match=r"backends\[0\]\.temprature"):
        configure({"backends": [backend | {"temprature": 1}]})
    with pytest.raises(TypeError, match="not int"):
        configure(42)  # type: ignore[arg-type]


# --- astream ---------------------------------------------------------------------------------


async def test_astream_gives_text_chunks_then_the_whole_answer(
    server: FakeOpenAIServer, configured: Path
) -> None:
    """Text chunks add up to the reply; afterwards .answer carries usage and cost; .answer
    before the end is a clear error."""
    chunks_stream = astream("why?", system="Be brief.")
    with pytest.raises(RuntimeError, match="has not been read to its end"):
        _ = chunks_stream.answer
    chunks = [chunk async for chunk in chunks_stream]

    assert "".join(chunks) == REPLY
    assert len(chunks) > 1
    answer = chunks_stream.answer
    assert answer == REPLY
    prompt_tokens, completion_tokens = words("why? Be brief."), words(REPLY)
    assert (answer.backend, answer.prompt_tokens, answer.completion_tokens) == (
        "local",
        prompt_tokens,
        completion_tokens,
    )
    assert answer.cost_usd == pytest.approx(expected_cost(prompt_tokens, completion_tokens))
    assert server.requests[-1].json["stream"] is True


async def test_an_answer_streamed_from_the_cache_says_so_and_costs_nothing(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With caching on, a streamed repeat of an answered question is replayed from the
    cache: its Answer is marked cached, costs nothing and no HTTP call was made."""
    config = write_config(
        tmp_path / "cached.toml", server.base_url, extra="[caching]\nenabled = true\n"
    )
    monkeypatch.setenv("LLMBACKEND_CONFIG", str(config))
    first = await aask("why?")
    calls = len(server.requests)
    repeat = astream("why?")
    assert "".join([chunk async for chunk in repeat]) == REPLY

    assert (first.cached, repeat.answer.cached) == (False, True)
    assert (first.cost_usd or 0.0) > 0
    assert repeat.answer.cost_usd == 0.0
    assert len(server.requests) == calls


async def test_astream_events_give_the_raw_stream(
    server: FakeOpenAIServer, configured: Path
) -> None:
    """.events() yields the typed events, ending with FinishEvent; the answer is built too.
    Once the text is being read, events() is refused."""
    answer_stream = astream("hi")
    events = [event async for event in answer_stream.events()]

    assert isinstance(events[-1], FinishEvent)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == REPLY
    assert answer_stream.answer == REPLY

    reading = astream("hi")
    async with reading:
        await anext(reading)
        with pytest.raises(RuntimeError, match="before the stream is read"):
            reading.events()


async def test_a_stream_closed_early_leaves_no_task_and_no_request_in_flight(
    configured: Path, server: FakeOpenAIServer
) -> None:
    """Leaving `async with astream(...)` after one chunk closes the request: no SDK task
    but the default service's own remains and in-flight requests are back to 0."""
    server.enqueue(Behavior.stream_stall(after_chunks=2))
    async with astream("hi") as chunks:
        first = await anext(chunks)

    assert first
    assert sdk_task_names() <= SERVICE_TASKS
    service = await default_service()
    assert service.metrics_registry is not None
    in_flight = service.metrics_registry.get_sample_value(
        "llmbackend_in_flight_requests", {"backend": "local"}
    )
    assert in_flight == 0
    with pytest.raises(RuntimeError, match="the stream did not complete"):
        _ = chunks.answer


async def test_a_restarted_stream_starts_its_text_again_and_the_answer_is_the_final_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stream_recovery = "restart", the text chunks carry on with the next backend's
    whole answer; the StreamRestarted event says how much to erase and .answer holds only
    the final text (as documented on AnswerStream)."""
    async with FakeOpenAIServer(reply=REPLY, chunk_size=5) as server:
        server.enqueue(Behavior.cut_stream(after_chunks=2), backend="primary")
        config = tmp_path / "restart.toml"
        config.write_text(
            'stream_recovery = "restart"\nmax_retries = 0\n'
            + "".join(
                f'[[backends]]\nname = "{name}"\ntype = "openai_compatible"\n'
                f'base_url = "{server.url_for(name)}"\nmodel_name = "fake-model"\n'
                f"priority = {priority}\n"
                for name, priority in (("primary", 1), ("fallback", 2))
            )
        )
        monkeypatch.setenv("LLMBACKEND_CONFIG", str(config))

        events = astream("hi").events()
        seen = [event async for event in events]

    restarts = [event for event in seen if isinstance(event, StreamRestarted)]
    assert len(restarts) == 1
    assert restarts[0].discard_chars == len(REPLY[:10])
    text = "".join(event.text for event in seen if isinstance(event, TextDelta))
    assert text == REPLY[:10] + REPLY
    assert events.answer == REPLY
    assert events.answer.backend == "fallback"


# --- the sync forms --------------------------------------------------------------------------


def test_ask_and_stream_work_from_a_plain_function(threaded_server: FakeOpenAIServer) -> None:
    """ask() and stream() run without any event loop of the caller's; the stream's .answer
    carries the usage."""
    answer = ask("why?", temperature=0.5)
    assert answer == REPLY
    assert answer.completion_tokens == words(REPLY)
    assert threaded_server.requests[-1].json["temperature"] == 0.5

    chunks = stream("again")
    assert "".join(chunks) == REPLY
    assert chunks.answer.total_tokens == words("again") + words(REPLY)
    assert [type(event).__name__ for event in stream("hi").events()][-1] == "FinishEvent"


def test_a_sync_stream_closed_early_stops_its_task(threaded_server: FakeOpenAIServer) -> None:
    """Leaving `with stream(...)` after one chunk cancels the request on the background
    loop: only the default service's own tasks remain there."""
    threaded_server.enqueue(Behavior.stream_stall(after_chunks=2))
    with stream("hi") as chunks:
        first = next(chunks)
    assert first
    assert list(chunks) == []

    async def task_names() -> set[str]:
        return sdk_task_names()

    loop = internals.background_loop()
    remaining = asyncio.run_coroutine_threadsafe(task_names(), loop).result(5)
    assert remaining <= {*SERVICE_TASKS, "llmbackend-quick-api"}  # the loop's own main task


def test_a_dropped_sync_stream_cancels_its_request(threaded_server: FakeOpenAIServer) -> None:
    """`break` out of `for chunk in stream(...)` drops the iterator: its request on the
    background loop is cancelled (a stalled stream would otherwise run for 30 s)."""
    threaded_server.enqueue(Behavior.stream_stall(after_chunks=2))
    for _chunk in stream("hi"):
        break

    async def settle() -> set[str]:
        lasting = {*SERVICE_TASKS, "llmbackend-quick-api"}
        others = [
            task
            for task in asyncio.all_tasks()
            if task is not asyncio.current_task() and task.get_name() not in lasting
        ]
        if others:
            await asyncio.wait(others, timeout=5)
        return sdk_task_names() - lasting

    loop = internals.background_loop()
    assert asyncio.run_coroutine_threadsafe(settle(), loop).result(10) == set()


def test_errors_of_the_sync_forms_reach_the_caller(threaded_server: FakeOpenAIServer) -> None:
    """A provider error and a bad backend name raise in the calling thread, as themselves."""
    with pytest.raises(ConfigurationError, match="no backend is called 'nope'"):
        ask("hi", backend="nope")
    threaded_server.enqueue(Behavior.error(401))
    with pytest.raises(AuthenticationError) as caught:
        ask("hi")
    assert (caught.value.backend, caught.value.status) == ("local", 401)


def test_close_default_service_closes_it_and_stops_the_thread(
    threaded_server: FakeOpenAIServer,
) -> None:
    """close_default_service() closes the sync forms' service and ends their thread; the
    next sync call starts them again."""
    assert ask("hi") == REPLY
    service = internals.run_sync(default_service, call="test", instead="-")
    session = service.backends[0].session
    thread_names = {thread.name for thread in threading.enumerate()}
    assert "llmbackend-quick-api" in thread_names

    close_default_service()

    assert session.closed
    assert "llmbackend-quick-api" not in {thread.name for thread in threading.enumerate()}
    assert ask("hi") == REPLY


SCRIPT = """
import atexit

seen = {}
# Registered first, so it runs after the SDK's own exit hook (atexit runs in reverse).
atexit.register(lambda: print("closed at exit:", seen["session"].closed))

from llmbackend import ask, chat, stream
from llmbackend._default_service import run_sync
from llmbackend.quick import default_service

print(ask("hi"))
seen["session"] = run_sync(default_service, call="-", instead="-").backends[0].session
for chunk in stream("story"):
    break  # left early: the request is cancelled, nothing is left open
with chat("Be brief.") as session:
    print(session.send("one").total_tokens)
"""


async def test_a_plain_script_exits_cleanly_after_using_the_sync_forms(
    server: FakeOpenAIServer, configured: Path, tmp_path: Path
) -> None:
    """A script using ask/stream/chat ends by itself: the exit hook has closed the
    service's HTTP session, and nothing is on stderr (no unclosed session, no warning)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        "-c",
        SCRIPT,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)

    assert (process.returncode, err.decode()) == (0, "")
    total_tokens = words("Be brief. one") + words(REPLY)
    assert out.decode().splitlines() == [REPLY, str(total_tokens), "closed at exit: True"]


async def test_the_sync_forms_refuse_to_run_inside_a_running_loop() -> None:
    """Inside async code, ask/stream/chat raise a RuntimeError naming the async form."""
    with pytest.raises(RuntimeError, match=r"ask\(\) cannot be used while an event loop"):
        ask("hi")
    with pytest.raises(RuntimeError, match=r"await aask\(\.\.\.\)"):
        ask("hi")
    with pytest.raises(RuntimeError, match=r"async for chunk in astream\(\.\.\.\)"):
        stream("hi")
    with pytest.raises(RuntimeError, match=r"async with achat\(\.\.\.\)"):
        chat("be brief")
