"""The `llmbackend` command, run as a real subprocess through its installed entry point."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmbackend.testing import FakeOpenAIServer

CLI = str(Path(sys.executable).parent / "llmbackend")


async def run(*args: str, cwd: Path, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run the CLI without blocking the loop (the fake server lives on this loop)."""
    env = {k: v for k, v in os.environ.items() if k != "LLMBACKEND_CONFIG"}
    env.update({"HOME": str(cwd), "COLUMNS": "120", "NO_COLOR": "1"})
    process = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(reply="forty two") as running:
        yield running


def write_config(directory: Path, base_url: str) -> Path:
    path = directory / "llmbackend.toml"
    path.write_text(
        "[[backends]]\n"
        'name = "local"\n'
        'type = "openai_compatible"\n'
        f'base_url = "{base_url}"\n'
        'model_name = "fake-model"\n'
    )
    return path


async def test_ask_streams_the_answer_from_the_discovered_config(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """`ask` finds ./llmbackend.toml, streams the answer and names who answered."""
    write_config(tmp_path, server.base_url)
    code, out, err = await run("ask", "what is six times seven?", cwd=tmp_path)
    assert (code, err) == (0, "")
    assert out.startswith("forty two\n")
    assert "local · fake-model" in out
    assert server.requests[0].json["stream"] is True


async def test_ask_json_reads_stdin(server: FakeOpenAIServer, tmp_path: Path) -> None:
    """`ask --json` with the prompt on stdin prints the answer and its metadata as JSON."""
    config = write_config(tmp_path, server.base_url)
    code, out, _ = await run(
        "ask", "--json", "--system", "be brief", "--config", str(config), cwd=tmp_path, stdin=b"hi"
    )
    assert code == 0
    assert '"content": "forty two"' in out
    assert '"backend": "local"' in out
    messages = server.requests[0].json["messages"]
    assert messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]


async def test_no_config_says_where_it_looked(tmp_path: Path) -> None:
    """Without a config the CLI exits 1, lists the places searched and shows an example."""
    code, _, err = await run("ask", "hello", cwd=tmp_path)
    assert code == 1
    assert "no configuration file found" in err
    assert "llmbackend.toml" in err
    assert str(tmp_path / ".config" / "llmbackend" / "config.toml") in err
    assert "[[backends]]" in err


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
    """`plugins` shows the built-in plugin and the installed contrib plugins."""
    code, out, _ = await run("plugins", cwd=tmp_path)
    assert code == 0
    for expected in ("builtin", "echo", "mock", "openai_compatible"):
        assert expected in out


async def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """`demo` fails over from the broken primary and every request is answered."""
    code, out, err = await run("demo", cwd=tmp_path)
    assert (code, err) == (0, "")
    assert "answered by fallback (fake-model)" in out
    assert "50 answered" in out
    assert "failed 0" in out


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
