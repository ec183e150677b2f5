"""`llmbackend demo`: run through the installed entry point, and its provider detection."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from _cli_support import run, table_rows

from llmbackend._demo_detect import LLAMACPP_URL_VAR, OLLAMA_URL_VAR, detect_providers
from llmbackend.testing import FakeOpenAIServer, FakeProviderServer, ReplayServer, json_reply

#: Nothing local is looked for unless a test says where.
NO_PROBES = {OLLAMA_URL_VAR: "", LLAMACPP_URL_VAR: ""}
TOTALS = re.compile(
    r"requests (\d+), answered (\d+), failed (\d+), cache hits (\d+), failovers (\d+), "
    r"retries (\d+)"
)


def numbers(row: list[str]) -> dict[str, str]:
    """A row of the demo's table by column name."""
    columns = (
        "served", "failed", "retries", "breaker", "skipped", "cost $", "budget $", "p50 ms",
    )  # fmt: skip
    return dict(zip(columns, row, strict=True))


async def test_demo_answers_every_request_despite_the_faults(tmp_path: Path) -> None:
    """The demo exits 0 with every request answered: the dead backend's breaker opened,
    the flaky backend's failures were retried, its budget held, and repeats hit the cache."""
    code, out, err = await run("demo", cwd=tmp_path, env=NO_PROBES)
    assert (code, err) == (0, "")
    totals = TOTALS.search(out)
    assert totals is not None, out
    requests, answered, failed, cache_hits, failovers, retries = map(int, totals.groups())
    assert (requests, answered, failed) == (301, 301, 0)
    assert cache_hits > 0
    assert failovers > 0
    rows = {name: numbers(row) for name, row in table_rows(out).items()}
    assert set(rows) == {"gpt-down", "gpt-flaky", "claude"}
    down, flaky, claude = rows["gpt-down"], rows["gpt-flaky"], rows["claude"]
    assert down["served"] == "0"
    assert int(down["failed"]) > 0
    assert down["breaker"] == "open"
    assert int(down["skipped"]) > 0
    assert int(flaky["failed"]) > 0
    assert int(flaky["retries"]) > 0
    assert int(flaky["served"]) > 0
    spent, limit = (float(part) for part in flaky["budget $"].split("/"))
    assert 0 < spent <= limit == 0.03
    assert int(claude["served"]) > 0
    assert int(claude["failed"]) == 0
    batch = sum(int(row["served"]) for row in rows.values())
    assert batch + cache_hits == 300  # the streamed answer is not in "served"
    assert retries == sum(int(row["retries"]) for row in rows.values())


async def test_demo_adds_a_local_llamacpp_server_it_finds(tmp_path: Path) -> None:
    """A llama.cpp server answering its /health (played by a fake) joins the run as the
    last backend and answers the one question sent to it; the demo still exits 0."""
    async with FakeOpenAIServer(reply="local llama here") as local:
        env = {**NO_PROBES, LLAMACPP_URL_VAR: local.root_url}
        code, out, err = await run("demo", "--requests", "30", cwd=tmp_path, env=env)
    assert (code, err) == (0, "")
    assert (
        f"added real provider local-llamacpp: a llama.cpp server answers at {local.root_url}"
        in (out)
    )
    rows = table_rows(out)
    assert list(rows) == ["gpt-down", "gpt-flaky", "claude", "local-llamacpp"]
    assert numbers(rows["local-llamacpp"])["served"] == "1"
    chats = [r for r in local.requests if r.path == "/v1/chat/completions"]
    assert len(chats) == 1
    assert chats[0].json["model"] == "fake-model"  # the first model its /v1/models lists
    assert [r.path for r in local.requests][:2] == ["/health", "/v1/models"]


async def test_demo_offline_looks_for_nothing(tmp_path: Path) -> None:
    """`demo --offline` does not probe a local server even when told where one is."""
    async with FakeOpenAIServer() as local:
        env = {**NO_PROBES, LLAMACPP_URL_VAR: local.root_url}
        code, out, _ = await run("demo", "--offline", "--requests", "10", cwd=tmp_path, env=env)
        assert local.requests == []
    assert code == 0
    assert "local-llamacpp" not in table_rows(out)


async def test_detection_adds_keyed_providers_without_touching_the_key() -> None:
    """A provider key in the environment adds that provider with a tiny budget; its config
    refers to the variable, so the key itself never enters the demo's settings."""
    found = await detect_providers({**NO_PROBES, "ANTHROPIC_API_KEY": "sk-ant-secret"})
    assert [provider.name for provider in found] == ["real-anthropic"]
    assert found[0].key_variable == "ANTHROPIC_API_KEY"
    config = found[0].config
    assert config["type"] == "anthropic"
    assert config["api_key"] == "${ANTHROPIC_API_KEY}"
    assert config["max_spend_usd"] == 0.01
    assert config["cost_per_million_output_tokens"] > 0
    assert "sk-ant-secret" not in repr(found)


async def test_detection_finds_ollama_and_its_first_model() -> None:
    """An Ollama server listing a model at /api/tags is added with that model."""
    async with ReplayServer() as ollama:
        ollama.enqueue(json_reply({"models": [{"name": "llama3.2:latest"}, {"name": "qwen"}]}))
        found = await detect_providers({OLLAMA_URL_VAR: ollama.url, LLAMACPP_URL_VAR: ""})
    assert [provider.config for provider in found] == [
        {
            "name": "local-ollama",
            "type": "ollama",
            "base_url": ollama.url,
            "model_name": "llama3.2:latest",
        }
    ]
    assert [request.path for request in ollama.requests] == ["/api/tags"]


async def test_detection_gives_up_quickly_when_nothing_answers() -> None:
    """A closed port and a server too slow to answer are both passed over, within the
    probe bound rather than the slow server's delay."""
    async with ReplayServer() as stopped:
        pass
    async with FakeProviderServer(latency=30) as slow:
        environ = {OLLAMA_URL_VAR: stopped.url, LLAMACPP_URL_VAR: slow.root_url}
        async with asyncio.timeout(3):
            found = await detect_providers(environ, probe_seconds=0.2)
        assert len(slow.requests) == 1  # it was asked, and not waited for
    assert found == []
