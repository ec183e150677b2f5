"""The llmbackend-only section of ``make bench``: what each optional feature costs.

Run with the SDK's own virtualenv (it has the SQLite and Redis extras and the
OpenTelemetry SDK): ``.venv/bin python benchmarks/sdk_only.py OUT CONFIG_JSON``; ``run.py``
does this and folds the JSON into the results.

* ``state``: the store operations alone (``bench_state.py``): cache hit, budget
  reserve + settle, rate-limit acquire + release, on memory, SQLite and Redis;
* ``service``: CPU per ``service.chat`` through the whole service against an in-process
  ``FakeBackend``, plain, served from the cache on each store, and with budget accounting;
* ``telemetry``: metrics and tracing on versus off (``bench_telemetry.py``);
* ``fan_out``: the simultaneous strategy with one fast and one held backend, over HTTP to
  the fake server: how long after the deadline the call returns (the held loser is
  cancelled and awaited), and how long a caller's cancellation takes to unwind both
  branches.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_state
import bench_telemetry

from llmbackend import ChatMessage, ChatRequest, open_service
from llmbackend.testing import FakeBackendPlugin
from llmbackend.testing._redis_server import RedisServer, redis_server_available

HERE = Path(__file__).resolve().parent
REQUEST = ChatRequest(messages=[ChatMessage.user("What does a cache hit cost?")])
#: The fan-out deadline: the held branch is cancelled when it passes.
FAN_OUT_DEADLINE = 0.2


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def chat_cpu_us(service: Any, count: int, rounds: int) -> float:
    """CPU microseconds per ``service.chat``: best of ``rounds`` (noise only adds)."""
    for _ in range(min(count, 200)):
        await service.chat(REQUEST)
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        started = cpu_seconds()
        for _ in range(count):
            await service.chat(REQUEST)
        best = min(best, (cpu_seconds() - started) / count)
    return best * 1e6


def fake_settings(backend: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "backends": [{"name": "fake", "custom_backend_type": "fake", **(backend or {})}],
        "max_retries": 0,
        "health_check": {"enabled": False},
        "circuit_breaker": {"enabled": False},
        "telemetry": {"enable_metrics": False},
        **extra,
    }


async def service_costs(count: int, rounds: int, scratch: Path, redis_url: str | None) -> dict:
    caching = {"enabled": True}
    variants = {
        "no cache, no budget": fake_settings(),
        "cache hit: memory": fake_settings(caching={**caching, "provider": "memory"}),
        "cache hit: sqlite": fake_settings(
            caching={
                **caching,
                "provider": "sqlite",
                "connection_string": str(scratch / "cache.db"),
            }
        ),
        "budget accounting: memory": fake_settings(
            backend={
                "max_spend_usd": 1e9,
                "cost_per_million_input_tokens": 0.15,
                "cost_per_million_output_tokens": 0.6,
            }
        ),
    }
    if redis_url is not None:
        variants["cache hit: redis"] = fake_settings(
            caching={**caching, "provider": "redis", "connection_string": redis_url}
        )
    results = {}
    for name, settings in variants.items():
        async with open_service(settings, plugins=[FakeBackendPlugin()]) as service:
            results[name] = await chat_cpu_us(service, count, rounds)
    return results


def start_server(cpu: int | None) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, str(HERE / "fake_server.py"), "--port", "0"]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline() if process.stdout else ""
    return process, f"http://127.0.0.1:{int(line.split()[1])}"


async def fan_out(rounds: int, url: str) -> dict[str, Any]:
    def backend(name: str, model: str) -> dict[str, Any]:
        return {
            "name": name,
            "type": "openai_compatible",
            "base_url": f"{url}/v1",
            "api_key": "sk-bench-not-a-secret",
            "model_name": model,
        }

    settings = {
        "backends": [backend("fast", "bench-d0-c0"), backend("held", "bench-d5000-c0")],
        "selection_strategy": "simultaneous",
        "timeout_seconds": FAN_OUT_DEADLINE,
        "max_retries": 0,
        "health_check": {"enabled": False},
        "circuit_breaker": {"enabled": False},
        "telemetry": {"enable_metrics": False},
    }
    after_deadline, caller_cancel, answered = [], [], []
    async with open_service(settings) as service:
        await service.chat(REQUEST)  # warm-up: connections, lazy imports
        for _ in range(rounds):
            started = time.perf_counter()
            response = await service.chat(REQUEST)
            answered.append(time.perf_counter() - started)
            after_deadline.append(answered[-1] - FAN_OUT_DEADLINE)
            assert response.backend == "fast", response.backend
            call = asyncio.create_task(service.chat(REQUEST))
            await asyncio.sleep(0.05)  # the fast branch has answered; the held one waits
            started = time.perf_counter()
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            caller_cancel.append(time.perf_counter() - started)
    return {
        "deadline_seconds": FAN_OUT_DEADLINE,
        "answer_seconds_median": statistics.median(answered),
        "loser_cancel_after_deadline_ms": [value * 1000 for value in after_deadline],
        "caller_cancel_unwind_ms": [value * 1000 for value in caller_cancel],
    }


async def main(config: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    state = await bench_state.collect(config["sdk_iterations"])
    results["state"] = {
        kind: {"cache_hit_us": hit, "budget_us": budget, "rate_limit_us": limit}
        for kind, hit, budget, limit in state
    }
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        redis_url = None
        if redis_server_available():
            redis_url = stack.enter_context(RedisServer(Path(scratch) / "redis")).url
        results["service"] = await service_costs(
            config["sdk_iterations"], config["reps"], Path(scratch), redis_url
        )
    results["redis"] = redis_url is not None
    telemetry = await bench_telemetry.collect(
        config["sdk_telemetry_requests"], config["sdk_telemetry_rounds"]
    )
    results["telemetry"] = {
        name: {"chat_us": chat, "stream_us": stream} for name, (chat, stream) in telemetry.items()
    }
    server, url = start_server(config.get("server_cpu"))
    try:
        results["fan_out"] = await fan_out(config["sdk_fan_out_rounds"], url)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return results


if __name__ == "__main__":
    out, config_text = sys.argv[1:3]
    sys.path.insert(0, str(HERE))
    collected = asyncio.run(main(json.loads(config_text)))
    Path(out).write_text(json.dumps(collected), encoding="utf-8")
