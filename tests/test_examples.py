"""The scripts in examples/: imported by path and driven against loopback fakes, and run
as documented (``python examples/x.py``) in a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib.util
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from llmbackend import (
    AllBackendsFailedError,
    ChatMessage,
    ChatRequest,
    LlmBackendError,
    LlmResponse,
    load_settings,
    open_service,
)
from llmbackend.testing import FakeOpenAIServer, FakeProviderServer, ReplayServer, json_reply

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` by path (examples/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"llmbackend_example_{name}", EXAMPLES / name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # attrs and dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


web_service = load_example("web_service.py")
translator = load_example("translator.py")
compare = load_example("compare.py")


def words(text: str) -> int:
    """The fake servers' token count."""
    return len(text.split())


async def run_script(*args: str) -> tuple[int, str, str]:
    """``python examples/<args>`` from the repository root, without blocking the loop."""
    env = os.environ | {"COLUMNS": "160", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=EXAMPLES.parent,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# --- web_service.py --------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(reply="forty two") as server:
        yield server


def web_settings(fake: FakeOpenAIServer, *broken: str, **per_backend: Any) -> dict[str, Any]:
    """The example's demo settings; ``broken`` backends answer HTTP 500 and are not retried."""
    settings = copy.deepcopy(web_service.demo_settings(fake))
    for backend in settings["backends"]:
        backend.update(per_backend)
        if backend["name"] in broken:
            backend.update(model_name="error_500", max_retries=0)
    return settings


@contextlib.asynccontextmanager
async def web_client(
    settings: Mapping[str, Any], create_app: Callable[[Any], web.Application] | None = None
) -> AsyncIterator[TestClient[Any, Any]]:
    """A client of the app built by ``create_app`` (the example's), served on loopback."""
    app = (create_app or web_service.create_app)(settings)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def metric(text: str, sample: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == sample and found.labels == labels:
                return float(found.value)
    return 0.0


async def test_ask_answers_with_backend_model_tokens_and_cost(fake: FakeOpenAIServer) -> None:
    """POST /ask sends the system and user messages and answers with who answered, the
    tokens and the cost at the configured prices."""
    async with web_client(web_settings(fake)) as client:
        response = await client.post(
            "/ask", json={"prompt": "six times seven?", "system": "Be brief."}
        )
        body = await response.json()
    assert response.status == 200
    prompt_tokens, completion_tokens = words("six times seven? Be brief."), words("forty two")
    assert body == {
        "answer": "forty two",
        "backend": "primary",
        "model": "fake-model",
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": pytest.approx((prompt_tokens * 0.15 + completion_tokens * 0.60) / 1e6),
        "duration_ms": body["duration_ms"],
        "finish_reason": "stop",
    }
    [sent] = fake.requests_for("primary")
    assert sent.json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "six times seven?"},
    ]


async def test_ask_backend_field_chooses_the_backend(fake: FakeOpenAIServer) -> None:
    """``"backend": "backup"`` is served by backup, and only backup is called."""
    async with web_client(web_settings(fake)) as client:
        response = await client.post("/ask", json={"prompt": "hi", "backend": "backup"})
        body = await response.json()
    assert (response.status, body["backend"]) == (200, "backup")
    assert fake.counts == {"backup": 1}


async def test_failover_shows_in_the_answer_and_in_the_metrics(fake: FakeOpenAIServer) -> None:
    """With the primary broken every answer names backup, and /metrics counts the primary's
    failed attempts, the fallbacks and backup's successful requests."""
    async with web_client(web_settings(fake, "primary")) as client:
        answers = [
            await (await client.post("/ask", json={"prompt": f"q{n}"})).json() for n in range(3)
        ]
        scraped = await client.get("/metrics")
        text = await scraped.text()
    assert [answer["backend"] for answer in answers] == ["backup"] * 3
    assert scraped.status == 200
    assert scraped.content_type == "text/plain"
    requests = "llmbackend_requests_total"
    assert metric(text, requests, backend="backup", outcome="success", reason="") == 3
    assert metric(text, requests, backend="primary", outcome="success", reason="") == 0
    attempts = "llmbackend_attempts_total"
    failed = {"backend": "primary", "outcome": "failure", "reason": "BackendUnavailableError"}
    assert metric(text, attempts, **failed) == 3
    assert metric(text, "llmbackend_fallbacks_total", backend="backup") == 3
    assert fake.counts == {"primary": 3, "backup": 3}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b'["a list"]', 'the body must be a JSON object like {"prompt": "..."}'),
        (b"{}", "prompt: required, a non-empty string"),
        (b'{"prompt": "  "}', "prompt: required, a non-empty string"),
        (b'{"prompt": 7}', "prompt: required, a non-empty string"),
        (b'{"prompt": "hi", "system": ["x"]}', "system: must be a string"),
        (
            b'{"prompt": "hi", "backend": "gpt5"}',
            "backend: unknown backend 'gpt5'; configured: primary, backup",
        ),
        (b'{"promt": "hi"}', "unknown field(s) promt; expected prompt, system, backend"),
    ],
)
async def test_bad_input_is_a_400_naming_the_problem(
    fake: FakeOpenAIServer, body: bytes, message: str
) -> None:
    """Malformed requests get a 400 JSON error saying what is wrong, and reach no provider."""
    async with web_client(web_settings(fake)) as client:
        response = await client.post("/ask", data=body)
        answer = await response.json()
    assert (response.status, answer) == (400, {"error": "bad_request", "message": message})
    assert fake.counts == {}


async def test_every_backend_failing_is_a_502_listing_each_failure(fake: FakeOpenAIServer) -> None:
    """When every backend was tried and failed, the answer is 502 with each backend's error."""
    async with web_client(web_settings(fake, "primary", "backup")) as client:
        response = await client.post("/ask", json={"prompt": "hi"})
        body = await response.json()
    assert response.status == 502
    assert body["error"] == "AllBackendsFailedError"
    assert [(f["backend"], f["error"]) for f in body["failed"]] == [
        ("primary", "BackendUnavailableError"),
        ("backup", "BackendUnavailableError"),
    ]
    assert body["skipped"] == {}


async def test_prompt_refused_by_the_provider_is_a_400(fake: FakeOpenAIServer) -> None:
    """A content-filter refusal is the caller's problem: 400 with the error class, and no
    other backend is asked."""
    settings = web_settings(fake)
    settings["backends"][0]["model_name"] = "content_filter_error"
    async with web_client(settings) as client:
        response = await client.post("/ask", json={"prompt": "hi"})
        body = await response.json()
    assert (response.status, body["error"]) == (400, "ContentFilteredError")
    assert "content management policy" in body["message"]
    assert fake.counts == {"primary": 1}


async def test_spent_budgets_are_a_503_saying_which_backends(fake: FakeOpenAIServer) -> None:
    """When no backend may be tried (every budget is spent), the answer is 503 and names
    each skipped backend with its budget reason; no provider is called."""
    # The worst case of one call (2000 output tokens at $0.60/M) is over this budget.
    settings = web_settings(fake, max_spend_usd=0.0001, spend_reset_period="daily")
    async with web_client(settings) as client:
        response = await client.post("/ask", json={"prompt": "hi"})
        body = await response.json()
    assert response.status == 503
    assert (body["error"], body["failed"]) == ("AllBackendsFailedError", [])
    assert sorted(body["skipped"]) == ["backup", "primary"]
    assert all(why.startswith("spend limit $") for why in body["skipped"].values())
    assert fake.counts == {}


def sse_events(text: str) -> list[tuple[str, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], fields["data"]))
    return events


async def test_stream_sends_server_sent_events_ending_with_done(fake: FakeOpenAIServer) -> None:
    """POST /ask?stream=1 streams the answer as SSE deltas, then usage and done naming
    the backend that answered (backup: the primary is broken)."""
    async with web_client(web_settings(fake, "primary")) as client:
        response = await client.post("/ask?stream=1", json={"prompt": "hi"})
        text = await response.text()
    assert (response.status, response.content_type) == (200, "text/event-stream")
    events = sse_events(text)
    deltas = [json.loads(data)["text"] for name, data in events if name == "delta"]
    assert "".join(deltas) == "forty two"
    assert len(deltas) > 1  # really streamed, not one blob
    names = [name for name, _ in events]
    assert names[-2:] == ["usage", "done"]
    assert json.loads(events[-1][1]) == {"backend": "backup", "model": "fake-model"}


async def test_stream_failing_before_any_content_is_a_json_error(fake: FakeOpenAIServer) -> None:
    """A stream nobody can serve fails before the headers: a 502 JSON error, not SSE."""
    async with web_client(web_settings(fake, "primary", "backup")) as client:
        response = await client.post("/ask?stream=1", json={"prompt": "hi"})
        body = await response.json()
    assert (response.status, body["error"]) == (502, "AllBackendsFailedError")


async def test_one_service_for_the_app_closed_on_shutdown(fake: FakeOpenAIServer) -> None:
    """Requests share the one service opened at startup; once the app stops it is closed."""
    async with web_client(web_settings(fake)) as client:
        for _ in range(2):
            assert (await client.post("/ask", json={"prompt": "hi"})).status == 200
        service = client.app[web_service.SERVICE]
        assert service.get_statistics().requests == 2
    with pytest.raises(LlmBackendError, match="the service is not open"):
        await service.backends[0].chat(ChatRequest(messages=[ChatMessage.user("hi")]))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_web_service_script_serves_and_shuts_down_cleanly() -> None:
    """``python examples/web_service.py`` starts its own fakes, answers /ask and /metrics,
    and exits 0 on SIGTERM without leaking a session or a traceback."""
    port = free_port()
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "examples/web_service.py",
        "--port",
        str(port),
        cwd=EXAMPLES.parent,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    answer: dict[str, Any] = {}
    metrics = ""
    try:
        async with asyncio.timeout(30):
            # b"" at EOF (the script died): readline then returns at once, so stop there.
            while (line := await process.stdout.readline()) and b"Running on" not in line:
                pass
        if line:
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", timeout=timeout) as http:
                async with http.post("/ask", json={"prompt": "Why is the sky blue?"}) as response:
                    answer = await response.json()
                async with http.get("/metrics") as response:
                    metrics = await response.text()
    finally:
        if process.returncode is None:
            process.terminate()
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert line, f"the script exited before serving: {err.decode()}"
    assert answer["backend"] == "primary"
    assert answer["answer"].startswith("The sky is blue")
    requests = "llmbackend_requests_total"
    assert metric(metrics, requests, backend="primary", outcome="success", reason="") == 1
    assert process.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    assert "Unclosed" not in err.decode()


def readme_embedding_snippet() -> str:
    """The code block of the README's "Embedding in an aiohttp app" section, without its
    last line (``web.run_app(...)``, which would serve forever)."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    section = readme.split("### Embedding in an aiohttp app", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    *body, last = code.rstrip().splitlines()
    assert last.startswith("web.run_app(create_app(")
    return "\n".join(body)


async def test_readme_embedding_snippet_works_as_written(fake: FakeOpenAIServer) -> None:
    """The README's aiohttp snippet, run as written against the fake server, answers /ask
    and serves the metrics of that answer."""
    namespace: dict[str, Any] = {"__name__": "readme_snippet"}
    exec(compile(readme_embedding_snippet(), "README.md", "exec"), namespace)
    async with web_client(web_settings(fake), namespace["create_app"]) as client:
        response = await client.post("/ask", json={"prompt": "hi"})
        answer = await response.json()
        text = await (await client.get("/metrics")).text()
    assert answer == {"answer": "forty two", "backend": "primary"}
    requests = "llmbackend_requests_total"
    assert metric(text, requests, backend="primary", outcome="success", reason="") == 1


# --- translator.py ---------------------------------------------------------------------------


@pytest.fixture
async def providers() -> AsyncIterator[tuple[FakeProviderServer, FakeProviderServer]]:
    async with (
        FakeProviderServer(reply="Bonjour") as free,
        FakeProviderServer(reply="Bonjour tout le monde") as paid,
    ):
        yield free, paid


Providers = tuple[FakeProviderServer, FakeProviderServer]


def cloud_limit(free: FakeProviderServer, paid: FakeProviderServer) -> float:
    """The paid backend's daily budget in the example's settings."""
    [cloud] = [b for b in translator.demo_settings(free, paid)["backends"] if b["name"] == "cloud"]
    return float(cloud["max_spend_usd"])


async def test_free_backend_translates_everything_for_nothing(providers: Providers) -> None:
    """While the free backend is up it translates the whole batch at cost 0 (known, not
    unknown); the paid backend is never called. Each call carries a system prompt with the
    languages (the translation prompt builder) and bounds its output."""
    free, paid = providers
    texts = ["Good morning", "Thank you", "See you tomorrow"]
    async with open_service(translator.demo_settings(free, paid)) as service:
        results = await translator.translate_batch(
            service, texts, target="German", source="English"
        )
    assert [(r.backend, r.content, r.cost_usd) for r in results] == [("local", "Bonjour", 0.0)] * 3
    assert paid.counts == {}
    sent = [request.json for request in free.requests]
    # The translation prompt builder made the system prompt from the request's languages.
    assert all([m["role"] for m in body["messages"]] == ["system", "user"] for body in sent)
    assert all("from English into German" in body["messages"][0]["content"] for body in sent)
    assert sorted(body["messages"][1]["content"] for body in sent) == sorted(texts)
    assert {(body["temperature"], body["max_tokens"]) for body in sent} == {(0.0, 16)}


async def test_paid_backend_answers_when_the_free_one_is_down(providers: Providers) -> None:
    """With the free backend down the paid one answers, and its cost is tracked as the
    day's spend against its daily limit (which resets at the next UTC midnight)."""
    free, paid = providers
    async with open_service(translator.demo_settings(free, paid)) as service:
        await free.aclose()
        answer = await translator.translate(service, "Good morning", target="French")
        cloud = service.get_statistics().backends["cloud"]
    [sent] = paid.requests
    prompt_words = sum(words(message["content"]) for message in sent.json["messages"])
    output_words = words("Bonjour tout le monde")
    expected = (prompt_words * 150.0 + output_words * 600.0) / 1e6
    assert (answer.backend, answer.content) == ("cloud", "Bonjour tout le monde")
    assert answer.cost_usd == pytest.approx(expected)
    assert cloud.budget_spent_usd == pytest.approx(expected)
    assert cloud.budget_limit_usd == cloud_limit(free, paid)
    now = datetime.now(UTC)
    assert cloud.budget_period_end is not None
    assert cloud.budget_period_end.time() == datetime.min.time()
    assert timedelta(0) < cloud.budget_period_end - now <= timedelta(days=1)


async def test_spent_daily_budget_refuses_instead_of_overspending(providers: Providers) -> None:
    """Translating one at a time with the free backend down: the paid backend answers
    until its budget cannot cover another call, then every text fails with the budget as
    the reason; spend stays within the limit and no call is made past it."""
    free, paid = providers
    texts = [f"sentence number {n}" for n in range(8)]
    async with open_service(translator.demo_settings(free, paid)) as service:
        await free.aclose()
        results = await translator.translate_batch(service, texts, target="French", concurrency=1)
        cloud = service.get_statistics().backends["cloud"]
    answered = [r for r in results if isinstance(r, LlmResponse)]
    refused = results[len(answered) :]
    assert 1 <= len(answered) < len(texts)
    assert {r.backend for r in answered} == {"cloud"}
    assert all(isinstance(r, AllBackendsFailedError) for r in refused)  # answers came first
    limit = cloud_limit(free, paid)
    assert all(r.skipped["cloud"].startswith("spend limit $") for r in refused)
    spent = sum(r.cost_usd for r in answered)
    assert cloud.budget_spent_usd == pytest.approx(spent)
    assert spent <= limit
    assert paid.counts[None] == len(answered)


async def test_concurrent_batch_cannot_overspend(providers: Providers) -> None:
    """Twenty translations at once against the paid backend: reservations are atomic, so
    the spend stays within the daily limit and every call made was paid for."""
    free, paid = providers
    texts = [f"text {n}" for n in range(20)]
    async with open_service(translator.demo_settings(free, paid)) as service:
        await free.aclose()
        results = await translator.translate_batch(service, texts, target="French", concurrency=20)
        cloud = service.get_statistics().backends["cloud"]
    answered = [r for r in results if isinstance(r, LlmResponse)]
    assert answered
    assert len(answered) < len(texts)
    assert cloud.budget_spent_usd == pytest.approx(sum(r.cost_usd for r in answered))
    assert (cloud.budget_spent_usd or 0) <= cloud_limit(free, paid)
    assert paid.counts[None] == len(answered)


async def test_translate_gives_easynmt_its_languages(replay_server: ReplayServer) -> None:
    """An EasyNMT backend with the translation prompt builder (the free tier of
    translator.toml) gets the target and source languages as the fields EasyNMT reads, and
    its answer comes back as the translation."""
    replay_server.enqueue(
        json_reply({"translated": ["Guten Morgen"], "target_lang": "de", "source_lang": "en"})
    )
    nmt = {"name": "nmt", "type": "easynmt", "prompt_builder_type": "translation"}
    settings = {"backends": [nmt | {"base_url": replay_server.url}]}
    async with open_service(settings) as service:
        answer = await translator.translate(service, "Good morning", target="de", source="en")
    assert (answer.backend, answer.content) == ("nmt", "Guten Morgen")
    [sent] = replay_server.requests
    assert sent.path == "/translate"
    assert sent.json == {"text": ["Good morning"], "target_lang": "de", "source_lang": "en"}


async def test_translator_toml_puts_free_backends_first_and_budgets_the_paid_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/translator.toml is a valid configuration: free backends (price 0) first, the
    paid one last with a daily budget kept in a SQLite file so it survives restarts."""
    monkeypatch.chdir(tmp_path)
    path = EXAMPLES / "translator.toml"
    settings = load_settings(path, environ={"OPENAI_API_KEY": "sk-test-key"})
    async with open_service(settings) as service:
        order = [backend.name for backend in service.backends]
    assert order == ["nmt", "local", "cloud"]
    prices = {
        b.name: (b.cost_per_million_input_tokens, b.cost_per_million_output_tokens)
        for b in settings.backends
    }
    assert prices["nmt"] == prices["local"] == (0.0, 0.0)
    cloud = settings.backend("cloud")
    assert (cloud.max_spend_usd, cloud.spend_reset_period) == (1.0, "daily")
    assert {b.prompt_builder_type for b in settings.backends} == {"translation"}
    assert (tmp_path / "translator-state.db").exists()


async def test_translator_refuses_a_config_whose_backends_do_not_translate(
    fake: FakeOpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pointed at a general configuration (no translation prompt builder), the script says
    which backends need ``prompt_builder_type = "translation"`` and sends nothing."""
    config = tmp_path / "general.toml"
    config.write_text(
        f'[[backends]]\nname = "chat"\ntype = "openai_compatible"\nbase_url = "{fake.base_url}"\n'
    )
    assert await translator.translate_with(str(config), ["hello"], "de", None) == 2
    assert capsys.readouterr().out == "set prompt_builder_type = 'translation' on backends chat\n"
    assert fake.counts == {}


async def test_translator_script_runs_its_tour() -> None:
    """``python examples/translator.py`` runs the tour on its own fakes: free answers, then
    paid ones, then refusals once the budget is spent."""
    code, out, err = await run_script("examples/translator.py")
    assert code == 0, err
    assert out.count("[local, $0.000000]") == 2
    assert "[cloud, $" in out
    assert "not translated (skipped local: unhealthy; cloud: spend limit $" in out
    assert "none was made past the budget" in out


# --- compare.py ------------------------------------------------------------------------------


async def test_compare_reports_every_backend() -> None:
    """Every backend's part is reported under its name: both answers (with model, tokens
    and cost at its prices, fastest first) and the failure; the Anthropic backend was
    reached through the Messages API. The demo settings choose no strategy: compare()
    asks for the simultaneous one itself."""
    prompt = "What is the capital of France?"
    async with compare.fake_providers() as fake:
        settings = compare.demo_settings(fake)
        assert "selection_strategy" not in settings
        async with open_service(settings) as service:
            outcomes = await compare.compare(service, prompt)
    by_name = {outcome.backend: outcome for outcome in outcomes}
    assert [o.backend for o in outcomes[:2]] == sorted(
        ["gpt", "claude"], key=lambda name: by_name[name].latency_ms
    )
    assert outcomes[2].backend == "local"
    gpt, claude, local = by_name["gpt"], by_name["claude"], by_name["local"]
    assert (gpt.answer, gpt.model, gpt.error) == ("Paris.", "fast-model", None)
    careful = "The capital of France is Paris, on the Seine."
    assert (claude.answer, claude.model) == (careful, "careful-model")
    assert gpt.tokens == words(prompt) + 1
    assert gpt.cost_usd == pytest.approx((words(prompt) * 0.15 + 1 * 0.60) / 1e6)
    assert claude.cost_usd == pytest.approx((words(prompt) * 3.0 + words(careful) * 15.0) / 1e6)
    assert local.answer is None
    assert local.error is not None
    assert local.error.startswith("BackendUnavailableError: [local]")
    assert "HTTP 503" in local.error
    assert [r.path for r in fake.requests_for("claude")] == ["/b/claude/v1/messages"]
    assert fake.counts == {"gpt": 1, "claude": 1, "local": 1}


async def test_compare_script_prints_the_table() -> None:
    """``python examples/compare.py`` starts its own fakes and prints every backend's row."""
    code, out, err = await run_script("examples/compare.py")
    assert code == 0, err
    for expected in ("gpt", "claude", "local", "Paris.", "careful-model", "HTTP 503"):
        assert expected in out
