"""``FakeOpenAIServer``: a real HTTP server on loopback that speaks the OpenAI wire format.

Tests point an OpenAI(-compatible) backend at ``server.base_url`` and script what it answers.
Each request gets one :class:`Behavior`, chosen in this order:

1. the ``x-fake-behavior`` request header, naming an entry of the behaviour catalogue;
2. the request's ``model``, when it names an entry of the catalogue;
3. the next queued behaviour (``enqueue``), for POST endpoints (chat, embeddings) only;
4. ``Behavior.ok()``: the server's default reply.

The catalogue starts with the built-in names of :class:`BehaviorKind` (``ok``,
``cut_stream``, ...) plus ``error_500`` and ``error_429``, and grows with ``register()``.
Every request is recorded in ``requests`` (method, path, headers, JSON body).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web
from attrs import field, frozen

from llmbackend.models import ToolCall

__all__ = ["Behavior", "BehaviorKind", "FakeOpenAIServer", "RecordedRequest"]

#: The header that picks a catalogue behaviour for one request.
BEHAVIOR_HEADER = "x-fake-behavior"


class BehaviorKind(enum.StrEnum):
    """What the server does with a request."""

    OK = "ok"
    ERROR = "error"
    #: Close the connection after ``after_chunks`` content chunks, without a finish.
    CUT_STREAM = "cut_stream"
    #: A complete answer with ``finish_reason`` and usage, but no ``data: [DONE]``.
    MISSING_DONE = "missing_done"
    #: A frame that is not JSON after ``after_chunks`` content chunks.
    MALFORMED_CHUNK = "malformed_chunk"
    #: Write ``raw_chunks`` verbatim, one write each (replaying recorded bodies).
    RAW = "raw"


@frozen(kw_only=True)
class Behavior:
    """One scripted answer. Build it with the class methods."""

    kind: BehaviorKind = BehaviorKind.OK
    text: str | None = None
    tool_calls: tuple[ToolCall, ...] = field(default=(), converter=tuple)
    finish_reason: str | None = None
    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(factory=dict, converter=dict)
    after_chunks: int = 1
    raw_chunks: tuple[bytes, ...] = field(default=(), converter=tuple)
    content_type: str = "text/event-stream"

    @classmethod
    def ok(
        cls,
        text: str | None = None,
        *,
        tool_calls: Sequence[ToolCall] = (),
        finish_reason: str | None = None,
    ) -> Behavior:
        """A normal answer (``text`` or the server's default reply, and/or tool calls)."""
        return cls(text=text, tool_calls=tuple(tool_calls), finish_reason=finish_reason)

    @classmethod
    def error(
        cls, status: int, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> Behavior:
        """An HTTP error; ``body`` defaults to an OpenAI-style ``{"error": {...}}``."""
        return cls(kind=BehaviorKind.ERROR, status=status, body=body, headers=headers or {})

    @classmethod
    def cut_stream(cls, after_chunks: int = 1, text: str | None = None) -> Behavior:
        """Drop the connection mid-answer (mid-body for non-streamed calls)."""
        return cls(kind=BehaviorKind.CUT_STREAM, after_chunks=after_chunks, text=text)

    @classmethod
    def missing_done(cls, text: str | None = None) -> Behavior:
        """A finished stream whose body ends without ``data: [DONE]``."""
        return cls(kind=BehaviorKind.MISSING_DONE, text=text)

    @classmethod
    def malformed_chunk(cls, after_chunks: int = 1) -> Behavior:
        """A frame that is not JSON (an unparsable body for non-streamed calls)."""
        return cls(kind=BehaviorKind.MALFORMED_CHUNK, after_chunks=after_chunks)

    @classmethod
    def raw(
        cls,
        chunks: Sequence[bytes],
        *,
        status: int = 200,
        content_type: str = "text/event-stream",
        headers: Mapping[str, str] | None = None,
    ) -> Behavior:
        """Write ``chunks`` verbatim, one write per chunk (a frame may span writes)."""
        return cls(
            kind=BehaviorKind.RAW,
            raw_chunks=tuple(chunks),
            status=status,
            content_type=content_type,
            headers=headers or {},
        )


@frozen(kw_only=True)
class RecordedRequest:
    """A request the server received."""

    method: str
    path: str
    headers: Mapping[str, str]
    json: Any
    query: Mapping[str, str] = field(factory=dict)


def _builtin_catalogue() -> dict[str, Behavior]:
    return {
        BehaviorKind.OK.value: Behavior.ok(),
        BehaviorKind.CUT_STREAM.value: Behavior.cut_stream(),
        BehaviorKind.MISSING_DONE.value: Behavior.missing_done(),
        BehaviorKind.MALFORMED_CHUNK.value: Behavior.malformed_chunk(),
        "error_500": Behavior.error(500),
        "error_429": Behavior.error(429, headers={"Retry-After": "1"}),
    }


def _error_body(status: int) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": f"fake error {status}", "type": kind, "code": None}}


def _words(text: str) -> int:
    return len(text.split())


class FakeOpenAIServer:
    """An OpenAI-compatible server on ``127.0.0.1`` and a free port; an async context manager."""

    def __init__(
        self,
        *,
        reply: str = "Hello from the fake OpenAI server.",
        model: str = "fake-model",
        models: Sequence[str] = ("fake-model", "fake-embedding"),
        latency: float = 0.0,
        chunk_size: int = 4,
        embedding_dimensions: int = 8,
        behaviors: Mapping[str, Behavior] | None = None,
        shutdown_timeout: float = 2.0,
    ) -> None:
        self.reply = reply
        self.model = model
        self.models = tuple(models)
        #: Seconds every handler waits before answering (0 for none).
        self.latency = latency
        #: Characters of text per streamed content chunk.
        self.chunk_size = max(1, chunk_size)
        self.embedding_dimensions = embedding_dimensions
        self.catalogue: dict[str, Behavior] = _builtin_catalogue() | dict(behaviors or {})
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Behavior] = deque()
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1 and a port the OS picks."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app, shutdown_timeout=self._shutdown_timeout, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def aclose(self) -> None:
        """Stop listening and finish (or, after the shutdown timeout, cancel) handlers."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    stop = aclose

    async def __aenter__(self) -> FakeOpenAIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake server has not been started")
        return self._port

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ending in ``/v1``."""
        return f"{self.root_url}/v1"

    # --- scripting ------------------------------------------------------------------------

    def enqueue(self, *items: Behavior | str) -> None:
        """Queue answers for the next POST requests; a string is an ``ok`` reply text."""
        for item in items:
            self._queue.append(Behavior.ok(item) if isinstance(item, str) else item)

    def enqueue_error(
        self, status: int, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> None:
        """Queue an HTTP error answer."""
        self.enqueue(Behavior.error(status, body, headers))

    def register(self, name: str, behavior: Behavior) -> None:
        """Add ``name`` to the catalogue (selectable by header or model name)."""
        self.catalogue[name] = behavior

    def _choose(self, request: web.Request, body: Any, *, queued: bool) -> Behavior:
        named = request.headers.get(BEHAVIOR_HEADER)
        if named is not None:
            if named not in self.catalogue:
                return Behavior.error(400, {"error": {"message": f"unknown behavior {named}"}})
            return self.catalogue[named]
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str) and model in self.catalogue:
            return self.catalogue[model]
        if queued and self._queue:
            return self._queue.popleft()
        return Behavior.ok()

    async def _receive(self, request: web.Request, *, queued: bool) -> tuple[Any, Behavior]:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers=dict(request.headers),
                json=body,
                query=dict(request.query),
            )
        )
        behavior = self._choose(request, body, queued=queued)
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        return body, behavior

    # --- handlers -------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, behavior = await self._receive(request, queued=True)
        if (early := await self._common(request, behavior)) is not None:
            return early
        answer = _Answer.build(self, body, behavior)
        if isinstance(body, dict) and body.get("stream"):
            return await _write_stream(request, answer, behavior)
        return await _write_whole(request, json.dumps(answer.completion()), behavior)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, behavior = await self._receive(request, queued=True)
        if (early := await self._common(request, behavior)) is not None:
            return early
        body = body if isinstance(body, dict) else {}
        inputs = body.get("input", [])
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        dimensions = int(body.get("dimensions") or self.embedding_dimensions)
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(text, dimensions)}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(_words(str(text)) for text in inputs)
        answer = {
            "object": "list",
            "data": data,
            "model": body.get("model", self.model),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        if body.get("encoding_format") == "base64":
            for item in data:
                item["embedding"] = _base64_vector(item["embedding"])
        return await _write_whole(request, json.dumps(answer), behavior)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        _, behavior = await self._receive(request, queued=False)
        if (early := await self._common(request, behavior)) is not None:
            return early
        data = [{"id": name, "object": "model", "owned_by": "fake"} for name in self.models]
        return await _write_whole(request, json.dumps({"object": "list", "data": data}), behavior)

    async def _health(self, request: web.Request) -> web.StreamResponse:
        _, behavior = await self._receive(request, queued=False)
        if (early := await self._common(request, behavior)) is not None:
            return early
        return await _write_whole(request, json.dumps({"status": "ok"}), behavior)

    async def _common(self, request: web.Request, behavior: Behavior) -> web.StreamResponse | None:
        """Answers that do not depend on the endpoint: errors and raw replays."""
        if behavior.kind is BehaviorKind.ERROR:
            body = behavior.body if behavior.body is not None else _error_body(behavior.status)
            text = body if isinstance(body, str) else json.dumps(body)
            return web.Response(
                status=behavior.status,
                text=text,
                content_type="application/json",
                headers=behavior.headers,
            )
        if behavior.kind is BehaviorKind.RAW:
            response = web.StreamResponse(status=behavior.status, headers=behavior.headers)
            response.content_type = behavior.content_type
            await response.prepare(request)
            for chunk in behavior.raw_chunks:
                await response.write(chunk)
            await response.write_eof()
            return response
        return None


# The answer composition lives in a sibling module to keep this one small.
from llmbackend.testing._fake_openai_answers import (  # noqa: E402
    _Answer,
    _base64_vector,
    _vector,
    _write_stream,
    _write_whole,
)

__all__ += []
_ = hashlib  # hashing lives with the vectors
