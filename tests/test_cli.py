"""The `llmbackend` command, run as a real subprocess through its installed entry point."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _cli_support import run, table_rows
from aiohttp import web

from llmbackend import ChatMessage, ChatRequest, add_metrics_route, open_service
from llmbackend.testing import Behavior, FakeOpenAIServer, FakeProviderServer, ReplayServer

SECRET = "sk-test-0123456789abcdefSECRET"


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(reply="forty two") as running:
        yield running


@pytest.fixture
async def dead_url() -> str:
    """A loopback URL on which nothing listens any more (connections are refused)."""
    async with ReplayServer() as stopped:
        pass
    return f"{stopped.url}/v1"


def backend(name: str, base_url: str, **extra: object) -> str:
    lines = [
        "[[backends]]",
        f'name = "{name}"',
        'type = "openai_compatible"',
        f'base_url = "{base_url}"',
        'model_name = "fake-model"',
    ]
    for key, value in extra.items():
        if isinstance(value, dict):  # a TOML inline table
            pairs = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items())
            lines.append(f"{key} = {{ {pairs} }}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def write_config(directory: Path, base_url: str, *sections: str) -> Path:
    path = directory / "llmbackend.toml"
    path.write_text("".join(sections) or backend("local", base_url))
    return path


# --- ask ---------------------------------------------------------------------------------------


async def test_ask_streams_the_answer_from_the_discovered_config(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """`ask` finds ./llmbackend.toml, streams the answer and names who answered."""
    write_config(tmp_path, server.base_url)
    code, out, err = await run("ask", "what is six times seven?", cwd=tmp_path)
    assert (code, err) == (0, "")
    assert out.splitlines() == ["forty two", "local · fake-model"]
    assert server.requests[0].json["stream"] is True


async def test_ask_json_reads_stdin(server: FakeOpenAIServer, tmp_path: Path) -> None:
    """`ask --json` with the prompt on stdin prints the answer and its metadata as JSON."""
    config = write_config(tmp_path, server.base_url)
    code, out, _ = await run(
        "ask", "--json", "--system", "be brief", "--config", str(config), cwd=tmp_path, stdin=b"hi"
    )
    assert code == 0
    answer = json.loads(out)
    assert (answer["content"], answer["backend"], answer["finish_reason"]) == (
        "forty two",
        "local",
        "stop",
    )
    assert answer["completion_tokens"] == 2
    messages = server.requests[0].json["messages"]
    assert messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]


async def test_ask_backend_goes_to_that_backend_first(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    """`ask --backend second` is answered by `second` although `first` comes first."""
    write_config(
        tmp_path,
        "",
        backend("first", server.url_for("first"), priority=1),
        backend("second", server.url_for("second"), priority=2),
    )
    code, out, _ = await run("ask", "--json", "--backend", "second", "hello", cwd=tmp_path)
    assert code == 0
    assert json.loads(out)["backend"] == "second"
    assert server.counts == {"second": 1}


async def test_unknown_backend_lists_the_configured_ones(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """`--backend` with a name not in the config exits 1 naming the configured backends,
    for `ask` and `models` alike, before any request is sent."""
    write_config(tmp_path, server.base_url)
    for command in (("ask", "hello"), ("models",)):
        code, _, err = await run(*command, "--backend", "nope", cwd=tmp_path)
        assert code == 1
        assert "--backend: unknown backend 'nope'; configured: local" in err
    assert server.requests == []


async def test_no_config_says_where_it_looked(tmp_path: Path) -> None:
    """Without a config the CLI exits 1, lists the places searched and shows an example."""
    code, _, err = await run("ask", "hello", cwd=tmp_path)
    assert code == 1
    assert "no configuration file found" in err
    assert "llmbackend.toml" in err
    assert str(tmp_path / ".config" / "llmbackend" / "config.toml") in err
    assert "[[backends]]" in err


# --- API keys ----------------------------------------------------------------------------------


async def test_unset_key_variable_names_the_variable_to_set(tmp_path: Path) -> None:
    """A config whose key is `${OPENAI_API_KEY}`, unset, exits 1 saying to set it."""
    (tmp_path / "llmbackend.toml").write_text(
        '[[backends]]\nname = "openai"\ntype = "openai"\napi_key = "${OPENAI_API_KEY}"\n'
    )
    code, _, err = await run("ask", "hello", cwd=tmp_path)
    assert code == 1
    assert "backends[0].api_key: environment variable OPENAI_API_KEY is not set" in err
    assert "set OPENAI_API_KEY, for example: export OPENAI_API_KEY=..." in err


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            '[[backends]]\nname = "openai"\ntype = "openai"\n',
            "backends[0].api_key: backend 'openai' (openai) has no API key; set OPENAI_API_KEY"
            ' and write api_key = "${OPENAI_API_KEY}" in this backend',
        ),
        (
            '[secrets]\nprovider = "environment_variables"\n'
            '[[backends]]\nname = "main-ai"\ntype = "anthropic"\n',
            "backends[0].api_key: backend 'main-ai' (anthropic) has no API key; "
            "set LLM_MAIN_AI_API_KEY (secrets.provider is 'environment_variables')",
        ),
    ],
    ids=["configuration", "environment_variables"],
)
async def test_missing_key_names_the_variable_before_any_request(
    tmp_path: Path, config: str, expected: str
) -> None:
    """A hosted backend without a key is refused with exit 1 and the variable to set (for
    the secrets provider in use), instead of a provider's 401; `backends` shows the same
    in its row and exits 1."""
    (tmp_path / "llmbackend.toml").write_text(config)
    code, out, err = await run("ask", "hello", cwd=tmp_path)
    assert (code, out) == (1, "")
    assert expected in err
    code, out, _ = await run("backends", "--json", cwd=tmp_path)
    assert code == 1
    (row,) = json.loads(out)
    assert row["available"] is None
    assert expected.endswith(row["error"])


async def test_a_key_is_never_printed(server: FakeProviderServer, tmp_path: Path) -> None:
    """A provider refusing the key (HTTP 401) makes `ask` and `backends` exit 2, and the key
    appears nowhere in what they print."""
    server.register("auth", Behavior.error(401))
    write_config(
        tmp_path,
        "",
        backend(
            "local",
            server.base_url,
            api_key=SECRET,
            additional_headers={"x-fake-behavior": "auth"},
        ),
    )
    code, out, err = await run("ask", "hello", cwd=tmp_path)
    assert code == 2
    assert "AuthenticationError" in err or "401" in err
    assert SECRET not in out + err
    code, out, err = await run("backends", "--json", cwd=tmp_path)
    assert code == 2
    assert json.loads(out)[0]["available"] is False
    assert SECRET not in out + err
    assert server.requests[0].headers["Authorization"] == f"Bearer {SECRET}"


# --- backends, models --------------------------------------------------------------------------


def sqlite_section(directory: Path) -> str:
    return f'[caching]\nprovider = "sqlite"\nconnection_string = "{directory / "state.db"}"\n'


async def test_backends_reports_health_and_the_spend_a_previous_process_made(
    server: FakeProviderServer, dead_url: str, tmp_path: Path
) -> None:
    """`backends` checks every backend now (one up, one refusing connections, a disabled
    one without its key) and shows the spend recorded in SQLite by an earlier `ask`
    process; it exits 2 because a backend is down."""
    budget = {
        "cost_per_million_input_tokens": 100.0,
        "cost_per_million_output_tokens": 100.0,
        "max_spend_usd": 1.0,
    }
    write_config(
        tmp_path,
        "",
        sqlite_section(tmp_path),
        backend("local", server.url_for("local"), **budget),
        backend("dead", dead_url),
        '[[backends]]\nname = "openai"\ntype = "openai"\nenabled = false\n',
    )
    code, out, _ = await run("ask", "--json", "--backend", "local", "hello", cwd=tmp_path)
    assert code == 0
    spent = json.loads(out)["cost_usd"]
    assert spent > 0

    code, out, _ = await run("backends", "--json", cwd=tmp_path)
    assert code == 2
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["local"]["available"] is True
    assert rows["local"]["budget_spent_usd"] == pytest.approx(spent)
    assert rows["local"]["budget_limit_usd"] == 1.0
    assert rows["local"]["circuit_state"] == "closed"
    assert rows["dead"]["available"] is False
    assert "connection failed" in rows["dead"]["error"]
    assert rows["openai"]["available"] is None
    assert "set OPENAI_API_KEY" in rows["openai"]["error"]
    assert [r.path for r in server.requests_for("local")] == [
        "/b/local/v1/chat/completions",
        "/b/local/v1/models",
    ]

    code, out, _ = await run("backends", "--backend", "local", cwd=tmp_path)
    assert code == 0
    cells = table_rows(out)["local"]
    assert cells[:3] == ["openai_compatible", "fake-model", "ok"]
    assert cells[-1] == f"${spent:.4f} / $1.00"


async def test_backends_exits_2_when_a_backend_is_down(dead_url: str, tmp_path: Path) -> None:
    """A backend that cannot be reached makes `backends` exit 2 with its error in the row."""
    write_config(tmp_path, "", backend("dead", dead_url))
    code, out, _ = await run("backends", cwd=tmp_path)
    assert code == 2
    assert table_rows(out)["dead"][2].startswith("down")


async def test_models_lists_each_backend_and_shows_failures(
    server: FakeProviderServer, dead_url: str, tmp_path: Path
) -> None:
    """`models` lists what each backend's API lists; a failing backend shows its error and
    the command still exits 0 because another backend answered."""
    write_config(tmp_path, "", backend("local", server.base_url), backend("dead", dead_url))
    code, out, _ = await run("models", "--json", cwd=tmp_path)
    assert code == 0
    listing = json.loads(out)
    assert listing["local"] == {"models": ["fake-embedding", "fake-model"], "error": None}
    assert listing["dead"]["models"] is None
    assert "BackendUnavailableError" in listing["dead"]["error"]

    code, out, _ = await run("models", "--backend", "local", cwd=tmp_path)
    assert code == 0
    assert table_rows(out) == {"local": ["fake-embedding, fake-model"]}


async def test_models_exits_2_when_every_backend_fails(dead_url: str, tmp_path: Path) -> None:
    """With no backend able to list its models, `models` exits 2."""
    write_config(tmp_path, "", backend("dead", dead_url))
    code, out, _ = await run("models", "--json", cwd=tmp_path)
    assert code == 2
    assert json.loads(out)["dead"]["models"] is None


# --- stats -------------------------------------------------------------------------------------


async def test_stats_without_url_reads_budgets_from_the_store(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    """`stats` shows the spend two earlier processes recorded in SQLite, and what is left."""
    write_config(
        tmp_path,
        "",
        sqlite_section(tmp_path),
        backend(
            "local",
            server.base_url,
            cost_per_million_input_tokens=100.0,
            cost_per_million_output_tokens=100.0,
            max_spend_usd=2.0,
            spend_reset_period="monthly",
        ),
        backend("free", server.base_url),
    )
    costs = []
    for prompt in ("one", "two"):
        code, out, _ = await run("ask", "--json", prompt, cwd=tmp_path)
        assert code == 0
        costs.append(json.loads(out)["cost_usd"])

    code, out, _ = await run("stats", "--json", cwd=tmp_path)
    assert code == 0
    stats = json.loads(out)
    assert (stats["store"], stats["persistent"]) == ("sqlite", True)
    local = stats["backends"]["local"]
    assert local["spent_usd"] == pytest.approx(sum(costs))
    assert local["remaining_usd"] == pytest.approx(2.0 - sum(costs))
    assert local["reserved_usd"] == 0
    assert local["period"] == "monthly"
    assert local["period_end"] is not None
    assert stats["backends"]["free"] == {"budget": False}

    code, out, _ = await run("stats", cwd=tmp_path)
    assert code == 0
    assert table_rows(out)["local"][:4] == ["monthly", f"{sum(costs):.6f}", "0.000000", "2.00"]


async def test_stats_url_shows_a_running_services_metrics(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    """`stats --url` scrapes a service's /metrics: per backend the served and failed
    counts, fallbacks, tokens, cost and breaker, and the cache hits, equal to what the
    service itself reports."""
    settings = {
        "backends": [
            {
                "name": "primary",
                "type": "openai_compatible",
                "base_url": server.url_for("primary"),
                "model_name": "m",
                "max_retries": 0,
                "additional_headers": {"x-fake-behavior": "error_503"},
            },
            {
                "name": "fallback",
                "type": "openai_compatible",
                "base_url": server.url_for("fallback"),
                "model_name": "m",
                "cost_per_million_input_tokens": 1.0,
                "cost_per_million_output_tokens": 2.0,
            },
        ],
        "caching": {"enabled": True},
    }
    async with open_service(settings) as service:
        for prompt in ("a", "b", "a"):
            await service.chat(ChatRequest(messages=[ChatMessage.user(prompt)]))
        app = web.Application()
        add_metrics_route(app, service)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            port = runner.addresses[0][1]
            url = f"http://127.0.0.1:{port}/metrics"
            code, out, _ = await run("stats", "--url", url, "--json", cwd=tmp_path)
            table_code, table, _ = await run("stats", "--url", url, cwd=tmp_path)
        finally:
            await runner.cleanup()
        expected = service.get_statistics().backends["fallback"]
    assert (code, table_code) == (0, 0)
    live = json.loads(out)
    assert live["cache_hits"] == 1
    primary, fallback = live["backends"]["primary"], live["backends"]["fallback"]
    assert (primary["served"], primary["attempts_failed"], primary["attempts_ok"]) == (0, 2, 0)
    assert (fallback["served"], fallback["fallbacks"], fallback["attempts_ok"]) == (2, 2, 2)
    assert fallback["input_tokens"] == expected.prompt_tokens
    assert fallback["output_tokens"] == expected.completion_tokens
    assert fallback["cost_usd"] == pytest.approx(expected.total_cost_usd)
    assert fallback["circuit_state"] == "closed"
    assert fallback["p95_latency_ms"] > 0
    rows = table_rows(table)
    assert rows["fallback"][:3] == ["2", "0", "2"]
    assert rows["primary"][:4] == ["0", "0", "0", "2"]


async def test_stats_url_that_answers_nothing_exits_2(dead_url: str, tmp_path: Path) -> None:
    """A metrics URL nobody answers on is reported with exit 2."""
    code, _, err = await run("stats", "--url", dead_url, cwd=tmp_path)
    assert code == 2
    assert f"could not read metrics from {dead_url}" in err


# --- config, plugins, display ------------------------------------------------------------------


async def test_config_validate_prints_every_problem(tmp_path: Path) -> None:
    """`config validate` exits 1 and prints each problem with its path."""
    bad = tmp_path / "bad.toml"
    bad.write_text('timeout_seconds = "soon"\n[[backends]]\nname = "a"\ntype = "opnai"\n')
    code, _, err = await run("config", "validate", str(bad), cwd=tmp_path)
    assert code == 1
    assert "timeout_seconds: expected a number, got 'soon'" in err
    assert "backends[0].type: unknown backend type 'opnai'; did you mean 'openai'?" in err

    good = write_config(tmp_path, "http://127.0.0.1:9/v1")
    code, out, _ = await run("config", "validate", str(good), cwd=tmp_path)
    assert code == 0
    assert "valid" in out


async def test_plugins_lists_builtin_and_installed_plugins(tmp_path: Path) -> None:
    """`plugins` shows the built-in plugin and the installed contrib plugins with their
    backend types."""
    code, out, _ = await run("plugins", cwd=tmp_path)
    assert code == 0
    rows = table_rows(out)
    assert "openai_compatible" in rows["builtin"][3]
    assert {"echo", "mock"} <= set(rows)


async def test_restarted_stream_shows_no_duplicated_text() -> None:
    """After StreamRestarted the discarded text is gone from what the user sees."""
    import io

    from rich.console import Console

    from llmbackend.cli import stream_to_console
    from llmbackend.models import FinishEvent, StreamEvent, StreamRestarted, TextDelta

    async def events() -> AsyncIterator[StreamEvent]:
        yield TextDelta(text="one ")
        yield TextDelta(text="two")
        yield StreamRestarted(failed_backend="a", next_backend="b", discard_chars=7, error="cut")
        yield TextDelta(text="fresh answer")
        yield FinishEvent(reason=None, raw_reason=None, backend="b", model="m")

    screen = io.StringIO()
    await stream_to_console(events(), Console(file=screen, width=80))
    assert screen.getvalue().rstrip("\n") == "fresh answer\nb · m"


# --- chat --------------------------------------------------------------------------------------


async def test_chat_keeps_history_and_obeys_its_commands(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    """`chat` driven through a pipe: each turn carries the history (and the system prompt),
    `/save` writes the session, `/clear` forgets the history, `/exit` ends it before the
    next line is sent."""
    write_config(tmp_path, server.base_url)
    server.enqueue("first answer", "second answer", "third answer")
    script = "hello\nwhat did I say?\n/save one.json\n/clear\nagain\n/save two.json\n/exit\nnever\n"
    code, out, err = await run("chat", "--system", "be brief", cwd=tmp_path, stdin=script.encode())
    assert (code, err) == (0, "")
    assert out.splitlines()[:2] == ["first answer", "local · fake-model"]
    sent = [request.json["messages"] for request in server.requests]
    assert len(sent) == 3
    system = {"role": "system", "content": "be brief"}
    assert sent[1] == [
        system,
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "what did I say?"},
    ]
    assert sent[2] == [system, {"role": "user", "content": "again"}]
    one = json.loads((tmp_path / "one.json").read_text())
    assert [m["content"] for m in one["messages"]] == [
        "hello",
        "first answer",
        "what did I say?",
        "second answer",
    ]
    assert one["system"] == "be brief"
    assert one["totals"]["turns"] == 2
    two = json.loads((tmp_path / "two.json").read_text())
    assert [m["content"] for m in two["messages"]] == ["again", "third answer"]


async def test_chat_reports_a_failed_turn_and_goes_on(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    """A turn the provider fails is reported on stderr and left out of the history; the
    next turn is answered, the end of input ends the chat, and the exit code is 2."""
    write_config(tmp_path, "", backend("local", server.base_url, max_retries=0))
    server.enqueue(Behavior.error(503), "recovered")
    code, out, err = await run("chat", "--backend", "local", cwd=tmp_path, stdin=b"doomed\nfine\n")
    assert code == 2
    assert "error: stream failed on every backend" in err
    assert out.splitlines() == ["recovered", "local · fake-model"]
    assert server.requests[1].json["messages"] == [{"role": "user", "content": "fine"}]
