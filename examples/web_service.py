"""An aiohttp web service that embeds llmbackend: ``POST /ask`` and ``GET /metrics``.

    python examples/web_service.py                           # local fake providers, no keys
    python examples/web_service.py --config llmbackend.toml  # your providers

    curl -s localhost:8080/ask -d '{"prompt": "Why is the sky blue?"}'
    curl -s localhost:8080/ask -d '{"prompt": "Hi", "system": "Be brief.", "backend": "backup"}'
    curl -sN 'localhost:8080/ask?stream=1' -d '{"prompt": "Tell me a story"}'   # SSE
    curl -s localhost:8080/metrics

One ``LlmService`` lives as long as the app: it is opened in the app's ``cleanup_ctx`` (so
shutdown closes it, connection pool included) and handlers reach it as ``app[SERVICE]``.
Bad input is a 400 naming the field; provider trouble is a 502 (backends were tried and
failed) or a 503 (none could be tried: budgets spent, circuits open), with each backend's
error or skip reason in the body.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from llmbackend import (
    AllBackendsFailedError,
    BackendError,
    BudgetExceededError,
    ChatMessage,
    ChatRequest,
    CircuitOpenError,
    FinishEvent,
    InvalidRequestError,
    LlmBackendError,
    LlmResponse,
    LlmService,
    LlmSettings,
    RateLimitedError,
    StreamEvent,
    StreamRestarted,
    TextDelta,
    UsageEvent,
    add_metrics_route,
    configure_logging,
    open_service,
)
from llmbackend.testing import FakeProviderServer

#: Where handlers find the service (an ``AppKey`` keeps ``app[...]`` typed).
SERVICE = web.AppKey("llm_service", LlmService)
FIELDS = ("prompt", "system", "backend")


def create_app(settings: LlmSettings | Mapping[str, Any] | str) -> web.Application:
    """The web app; ``settings`` is anything ``open_service`` takes (a dict, a file path)."""
    # The registry exists before the service so /metrics can be routed now (the router is
    # frozen once the app starts); the service records into it.
    registry = CollectorRegistry()

    async def llm_service(app: web.Application) -> AsyncIterator[None]:
        async with open_service(settings, metrics_registry=registry) as service:
            app[SERVICE] = service
            yield

    app = web.Application()
    app.cleanup_ctx.append(llm_service)
    app.router.add_post("/ask", ask)
    add_metrics_route(app, registry)
    return app


class BadRequestError(Exception):
    """The caller's JSON is wrong; the message names the field."""


def parse_ask(body: Any, service: LlmService) -> ChatRequest:
    """``{"prompt": ..., "system"?: ..., "backend"?: ...}`` as a chat request."""
    if not isinstance(body, dict):
        raise BadRequestError('the body must be a JSON object like {"prompt": "..."}')
    if unknown := sorted(set(body) - set(FIELDS)):
        raise BadRequestError(
            f"unknown field(s) {', '.join(unknown)}; expected {', '.join(FIELDS)}"
        )
    prompt, system, backend = (body.get(name) for name in FIELDS)
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequestError("prompt: required, a non-empty string")
    if system is not None and not isinstance(system, str):
        raise BadRequestError("system: must be a string")
    if backend is not None:
        names = [configured.name for configured in service.backends]
        if backend not in names:
            known = ", ".join(names)
            raise BadRequestError(f"backend: unknown backend {backend!r}; configured: {known}")
    messages = [ChatMessage.user(prompt)]
    if system:
        messages.insert(0, ChatMessage.system(system))
    return ChatRequest(messages=messages, preferred_backend=backend)


async def ask(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    try:
        body = json.loads(await request.text())
    except ValueError:
        return error_response(400, "bad_request", "the body is not valid JSON")
    try:
        chat = parse_ask(body, service)
    except BadRequestError as exc:
        return error_response(400, "bad_request", str(exc))
    if request.query.get("stream") in ("1", "true"):
        return await stream_answer(request, service, chat)
    try:
        answer = await service.chat(chat)
    except LlmBackendError as exc:
        return failure_response(exc)
    return web.json_response(answer_json(answer))


def answer_json(answer: LlmResponse) -> dict[str, Any]:
    return {
        "answer": answer.content,
        "backend": answer.backend,
        "model": answer.model,
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "cost_usd": answer.cost_usd,  # null: the backend has no prices configured
        "duration_ms": round(answer.duration_ms, 1),
        "finish_reason": answer.finish_reason,
    }


async def stream_answer(
    request: web.Request, service: LlmService, chat: ChatRequest
) -> web.StreamResponse:
    """Server-sent events: ``delta`` (text), ``restart`` (drop the last ``discard_chars``
    shown), ``usage``, ``done`` (who answered) or ``error`` (the stream broke mid-answer)."""
    async with contextlib.aclosing(service.stream(chat)) as events:
        # Failover is transparent until the first event: wait for it before sending headers,
        # so a request nobody can serve still gets a proper 502/503.
        try:
            first = await anext(events)
        except LlmBackendError as exc:
            return failure_response(exc)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            await response.write(sse_frame(first))
            async for event in events:
                await response.write(sse_frame(event))
        except LlmBackendError as exc:  # after content the status is sent: say it in-band
            await response.write(sse("error", {"error": type(exc).__name__, "message": str(exc)}))
        await response.write_eof()
        return response


def sse_frame(event: StreamEvent) -> bytes:
    if isinstance(event, TextDelta):
        return sse("delta", {"text": event.text})
    if isinstance(event, StreamRestarted):
        return sse("restart", {"discard_chars": event.discard_chars})
    if isinstance(event, UsageEvent):
        tokens = {"prompt_tokens": event.usage.prompt_tokens}
        return sse("usage", tokens | {"completion_tokens": event.usage.completion_tokens})
    if isinstance(event, FinishEvent):
        return sse("done", {"backend": event.backend, "model": event.model})
    return b""  # tool-call deltas: this endpoint offers no tools


def sse(name: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def error_response(status: int, error: str, message: str, **details: Any) -> web.Response:
    return web.json_response({"error": error, "message": message, **details}, status=status)


def failure_response(exc: LlmBackendError) -> web.Response:
    """The HTTP answer to a failed call: whose fault it is, and what each backend did."""
    kind = type(exc).__name__
    if isinstance(exc, AllBackendsFailedError):
        failed = [
            {"backend": error.backend, "error": type(error).__name__, "message": error.message}
            for error in exc.exceptions
            if exc.attempted and isinstance(error, BackendError)
        ]
        # Nothing tried means every backend was skipped (budget spent, circuit open, ...).
        status = 502 if exc.attempted else 503
        return error_response(status, kind, exc.message, failed=failed, skipped=dict(exc.skipped))
    if isinstance(exc, RateLimitedError):  # the SDK's own limiter: the caller may retry
        response = error_response(429, kind, str(exc))
        response.headers["Retry-After"] = str(round(exc.retry_after or 1))
        return response
    if isinstance(exc, BudgetExceededError | CircuitOpenError):
        return error_response(503, kind, str(exc))
    if isinstance(exc, InvalidRequestError):  # the provider refused this prompt
        return error_response(400, kind, str(exc))
    if isinstance(exc, BackendError):  # e.g. our API key was rejected: not the caller's fault
        return error_response(502, kind, str(exc))
    return error_response(500, kind, str(exc))


# --- running it ------------------------------------------------------------------------------


def demo_settings(fake: FakeProviderServer) -> dict[str, Any]:
    """Two backends on one local fake server; ``backup`` serves when ``primary`` fails."""

    def backend(name: str, priority: int) -> dict[str, Any]:
        return {
            "name": name,
            "type": "openai_compatible",
            "base_url": fake.url_for(name),
            "model_name": "fake-model",
            "priority": priority,
            "cost_per_million_input_tokens": 0.15,
            "cost_per_million_output_tokens": 0.60,
        }

    return {"backends": [backend("primary", 1), backend("backup", 2)], "retry_delay_ms": 50}


async def demo_app() -> web.Application:
    """The app over a local fake provider server that lives as long as the app."""
    fake = FakeProviderServer(reply="The sky is blue because air scatters blue light most.")
    await fake.start()
    app = create_app(demo_settings(fake))

    async def stop_fake(_app: web.Application) -> None:
        await fake.aclose()  # runs after cleanup_ctx has closed the service

    app.on_cleanup.append(stop_fake)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An LLM web service built on llmbackend.")
    parser.add_argument("--config", help="settings file (default: local fake providers)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    configure_logging(level="INFO")  # the SDK's events (failovers, breakers) on stderr
    app = create_app(args.config) if args.config else demo_app()
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
