"""A fast fake OpenAI-compatible server for the benchmarks (not the test double).

Every answer is shaped by the request's model name, so every client, whatever its API,
can ask for what a measurement needs: ``bench-d{delay_ms}-c{chunks}``. ``delay_ms`` is
waited before answering (artificial latency; also how requests are held in flight) and
``chunks`` is the number of content chunks of a streamed answer, which then sends a usage
chunk and ``data: [DONE]``. Bodies are pre-encoded per model and the model is found with
a regular expression on the raw body, so the server spends as little CPU per request as
aiohttp allows: it runs on its own core and must not be what limits a client.

Routes: ``POST /v1/chat/completions`` (plain and ``"stream": true``), ``POST
/v1/embeddings``, ``GET /v1/models`` (health checks) and ``GET /_stats`` (requests served,
requests in flight and the server's own CPU seconds, read by the harness around each
measurement window).

Run: ``python benchmarks/fake_server.py [--port 0] [--cpu 1]``; it prints ``PORT <n>`` when
it listens and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import resource
import signal
import sys
import time

from aiohttp import web

MODEL = re.compile(rb'"model"\s*:\s*"(bench-d(\d+)-c(\d+))"')
STREAM = re.compile(rb'"stream"\s*:\s*true')
CONTENT = "Hello from the benchmark server."
USAGE = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
EMBEDDING = [0.125 * i for i in range(16)]


@functools.lru_cache(maxsize=64)
def chat_body(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": CONTENT},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": USAGE,
        },
        separators=(",", ":"),
    ).encode()


@functools.lru_cache(maxsize=64)
def stream_frames(model: str, chunks: int) -> tuple[bytes, ...]:
    """``chunks`` content frames (the last one carries the finish reason), then usage and DONE."""

    def frame(choices: list[object], usage: object = None) -> bytes:
        body = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    frames = []
    for index in range(chunks):
        delta: dict[str, str] = {"content": f"tok{index} "}
        if index == 0:
            delta["role"] = "assistant"
        last = index == chunks - 1
        frames.append(
            frame([{"index": 0, "delta": delta, "finish_reason": "stop" if last else None}])
        )
    frames.append(frame([], USAGE))
    frames.append(b"data: [DONE]\n\n")
    return tuple(frames)


class Counters:
    def __init__(self) -> None:
        self.requests = 0
        self.in_flight = 0


COUNTERS = Counters()


async def chat(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    found = MODEL.search(raw)
    model, delay_ms, chunks = (
        (found[1].decode(), int(found[2]), int(found[3])) if found else ("bench-d0-c0", 0, 0)
    )
    COUNTERS.requests += 1
    COUNTERS.in_flight += 1
    try:
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if not STREAM.search(raw):
            return web.Response(body=chat_body(model), content_type="application/json")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for frame in stream_frames(model, max(chunks, 1)):
            await response.write(frame)
        await response.write_eof()
        return response
    finally:
        COUNTERS.in_flight -= 1


async def embeddings(request: web.Request) -> web.Response:
    body = await request.json()
    inputs = body.get("input", [])
    count = 1 if isinstance(inputs, str) else len(inputs)
    COUNTERS.requests += 1
    return web.json_response(
        {
            "object": "list",
            "model": body.get("model", "bench"),
            "data": [
                {"object": "embedding", "index": index, "embedding": EMBEDDING}
                for index in range(count)
            ],
            "usage": {"prompt_tokens": 4 * count, "total_tokens": 4 * count},
        }
    )


async def models(_request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "bench-d0-c0"}]})


async def stats(_request: web.Request) -> web.Response:
    return web.json_response(
        {
            "requests": COUNTERS.requests,
            "in_flight": COUNTERS.in_flight,
            "cpu_seconds": time.process_time(),
        }
    )


def raise_open_file_limit() -> None:
    """1,024 concurrent connections need more descriptors than some defaults allow."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/_stats", stats)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    # A deep backlog: 1,024 clients connecting at once must not wait for SYN retries.
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096, reuse_address=True)
    await site.start()
    server = site._server  # aiohttp exposes no public bound-port accessor
    bound = server.sockets[0].getsockname()[1] if server is not None else port
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this CPU")
    arguments = parser.parse_args()
    if arguments.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {arguments.cpu})
    raise_open_file_limit()
    # Clients cancelled at the end of a load window drop their connections mid-request:
    # expected here, not worth a traceback each.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    asyncio.run(serve(arguments.port))
    sys.exit(0)


if __name__ == "__main__":
    main()
