"""What each step of llmbackend's non-streamed hot path costs, measured one step at a time.

The end-to-end CPU per request says *how much* llmbackend adds over raw aiohttp; this says
*where*. Each step of ``service.chat`` (plain service: one backend, no retries, metrics,
breaker and health checks off) is repeated in isolation against the worker's open service,
with the garbage collector paused, best of five rounds of process CPU time, so a busy
machine disturbs it less than an end-to-end number. Two rows bound the whole: the service
and the backend with the HTTP exchange replaced by a ready answer (everything llmbackend
does, none of what aiohttp does).

These rows use internal APIs on purpose (a diagnostic, not a contract): a step whose API
moved reports its error instead of a number.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import Callable
from typing import Any

from clients import MAX_TOKENS, PROMPT, Client

ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "bench-d0-c0",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello from the benchmark server."},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
}


async def _per_call_us(step: Callable[[], Any], count: int, is_async: bool) -> float:
    best = float("inf")
    for _ in range(5):
        gc.collect()
        gc.disable()
        try:
            started = time.process_time()
            if is_async:
                for _ in range(count):
                    await step()
            else:
                for _ in range(count):
                    step()
            best = min(best, time.process_time() - started)
        finally:
            gc.enable()
    return best / count * 1e6


def _steps(client: Client) -> list[tuple[str, Callable[[], Any], bool, str]]:
    """(step, callable, is it async, what it stands for)."""
    import attrs

    from llmbackend._correlation import begin_request, end_request
    from llmbackend.backends import _openai_wire as wire
    from llmbackend.backends.base import Capability
    from llmbackend.models import ChatMessage, ChatRequest

    service = client.service  # type: ignore[attr-defined]
    backend = service.backend("bench")
    request = ChatRequest(
        messages=[ChatMessage.user(PROMPT)], model="bench-d0-c0", max_tokens=MAX_TOKENS
    )
    body = backend.chat_body(request)
    content, model, tool_calls, raw_reason, usage = wire.parse_chat_answer(ANSWER, "bench")
    response = client.llmbackend.LlmResponse(  # type: ignore[attr-defined]
        content=content,
        backend="bench",
        model=model or "bench-d0-c0",
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        finish_reason=wire.finish_reason(raw_reason),
        raw_finish_reason=raw_reason,
        tool_calls=tool_calls,
    )

    def build_request() -> Any:
        return ChatRequest(
            messages=[ChatMessage.user(PROMPT)], model="bench-d0-c0", max_tokens=MAX_TOKENS
        )

    def build_dict_request() -> Any:  # what a raw client builds instead
        return {
            "model": "bench-d0-c0",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS,
        }

    def parse() -> Any:
        return wire.parse_chat_answer(ANSWER, "bench")

    def build_response() -> Any:
        return client.llmbackend.LlmResponse(  # type: ignore[attr-defined]
            content=content,
            backend="bench",
            model=model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            finish_reason=wire.finish_reason(raw_reason),
            raw_finish_reason=raw_reason,
            tool_calls=tool_calls,
        )

    def evolve() -> Any:
        return attrs.evolve(response, backend="bench", duration_ms=1.0, cost_usd=None)

    def bookkeeping() -> None:
        the_usage = response.usage
        backend.record_success(1.0, the_usage, backend.cost_of(the_usage))

    def debug_log() -> None:
        backend._log.debug(
            "backend_request_succeeded",
            operation="chat",
            model=response.model,
            duration_ms=round(1.234, 2),
            prompt_tokens=8,
            completion_tokens=12,
            finish_reason=response.finish_reason,
            **backend._content_fields(request, response.content),
        )

    def correlation() -> None:
        _, token = begin_request()
        end_request(token)

    def plan() -> Any:
        return service.plan_for(request, Capability.CHAT)

    async def timeout() -> None:
        async with asyncio.timeout(120.0):  # noqa: ASYNC100  # the cost of the context itself
            pass

    async def attempts() -> None:
        the_plan = service.plan_for(request, Capability.CHAT)
        async with contextlib.aclosing(the_plan.attempts()) as generator:
            async for _backend in generator:
                break

    async def state_noops() -> None:
        key = service.state.cache_key(request)
        await service.state.lookup(request, key)
        async with service.state.admission():
            pass
        await service.state.remember(request, key, response)

    async def headers() -> Any:
        return await backend.request_headers()

    async def guard() -> Any:
        async def answer(_backend: Any) -> Any:
            return response

        return await service.guard.call(backend, answer, service.plan_for(request, Capability.CHAT))

    async def ready_answer(_body: Any) -> Any:
        return ANSWER

    async def backend_without_http() -> Any:
        return await backend.chat(request)

    async def service_without_http() -> Any:
        return await service.chat(build_request())

    backend.chat_completion = ready_answer  # the HTTP exchange, replaced for the last rows
    return [
        ("build ChatRequest + ChatMessage (caller)", build_request, False, "caller"),
        ("build the equivalent dict (raw client)", build_dict_request, False, "reference"),
        ("chat_body: request → JSON-ready dict", lambda: backend.chat_body(request), False, ""),
        ("json.dumps of the body (both pay it)", lambda: json.dumps(body), False, "reference"),
        ("parse_chat_answer", parse, False, ""),
        ("LlmResponse(...)", build_response, False, ""),
        ("attrs.evolve(response, backend, duration, cost)", evolve, False, ""),
        ("cost_of + record_success (backend statistics)", bookkeeping, False, ""),
        ("debug log call (level off)", debug_log, False, ""),
        ("begin_request + end_request (correlation id)", correlation, False, ""),
        ("plan_for (eligible backends, strategy, AttemptPlan)", plan, False, ""),
        ("asyncio.timeout enter + exit (x2 per request)", timeout, True, ""),
        ("plan_for + attempts() generator + aclosing", attempts, True, ""),
        ("state guard no-ops (cache key, lookup, admission, remember)", state_noops, True, ""),
        ("request_headers()", headers, True, ""),
        ("guard.call around a ready answer (+ plan_for)", guard, True, ""),
        ("backend.chat without HTTP", backend_without_http, True, "total"),
        ("service.chat without HTTP (+ ChatRequest)", service_without_http, True, "total"),
    ]


async def hot_path(client: Client, config: dict[str, Any]) -> dict[str, Any]:
    """Microseconds of CPU per step (see the module docstring)."""
    count = config["hot_path_calls"]
    rows = []
    for name, step, is_async, kind in _steps(client):
        try:
            cost: float | str = await _per_call_us(step, count, is_async)
        except Exception as exc:  # noqa: BLE001  # a diagnostic row must not sink the run
            cost = f"{type(exc).__name__}: {exc}"[:120]
        rows.append({"step": name, "us": cost, "kind": kind})
    return {"rows": rows, "calls": count}
