"""``FakeOpenAIServer``: a real HTTP server on loopback that speaks the OpenAI wire format.

Tests point an OpenAI(-compatible) backend at ``server.base_url`` and script its answers.
Each request gets one :class:`Behavior`, chosen in this order:

1. the ``x-fake-behavior`` request header, naming an entry of the catalogue (an unknown
   name is answered with HTTP 400);
2. the request's ``model``, when it names an entry of the catalogue;
3. the next queued behaviour (``enqueue``), for the POST endpoints (chat, embeddings) only,
   so background health checks and model listings never consume the script;
4. ``Behavior.ok()``: the server's default reply.

The catalogue starts with ``ok``, ``cut_stream``, ``missing_done``, ``malformed_chunk``,
``error_500`` and ``error_429`` and grows with ``register()``. Every request is recorded in
``requests`` (method, path, headers, JSON body).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web
from attrs import field, frozen

from llmbackend.testing._fake_behavior import (
    Behavior,
    builtin_catalogue,
    write_error_or_raw,
    write_sse,
    write_whole,
)

__all__ = ["BEHAVIOR_HEADER", "FakeOpenAIServer", "RecordedRequest"]

#: The header that picks a catalogue behaviour for one request.
BEHAVIOR_HEADER = "x-fake-behavior"


@frozen(kw_only=True)
class RecordedRequest:
    """A request the server received."""

    method: str
    path: str
    headers: Mapping[str, str]
    #: The decoded JSON body; the text when it is not JSON; ``None`` without a body.
    json: Any
    query: Mapping[str, str] = field(factory=dict)


def _words(text: Any) -> int:
    return len(str(text).split()) if text else 0


def _vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit-scale vector for ``text`` (same text, same vector)."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((byte - 127.5) / 127.5 for byte in digest)
        counter += 1
    # Round-trip through float32 so base64 answers decode to exactly these values.
    packed = struct.pack(f"<{dimensions}f", *values[:dimensions])
    return list(struct.unpack(f"<{dimensions}f", packed))


def _base64_vector(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


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
        #: Characters of text (or tool arguments) per streamed chunk.
        self.chunk_size = max(1, chunk_size)
        self.embedding_dimensions = embedding_dimensions
        self.catalogue: dict[str, Behavior] = builtin_catalogue() | dict(behaviors or {})
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Behavior] = deque()
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1 and a port the OS picks. Idempotent."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app, shutdown_timeout=self._shutdown_timeout, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def aclose(self) -> None:
        """Stop listening; in-flight handlers finish or are cancelled after the timeout.

        Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def stop(self) -> None:
        """Same as :meth:`aclose`."""
        await self.aclose()

    async def __aenter__(self) -> FakeOpenAIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake server has not been started")
        return self._port

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:<port>`` (where ``/health`` lives)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ``http://127.0.0.1:<port>/v1``."""
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
        """Add ``name`` to the catalogue (selectable by header or by model name)."""
        self.catalogue[name] = behavior

    @property
    def pending(self) -> int:
        """How many queued behaviours are still unused."""
        return len(self._queue)

    def _choose(self, request: web.Request, body: Any, *, queued: bool) -> Behavior:
        named = request.headers.get(BEHAVIOR_HEADER)
        if named is not None:
            if named not in self.catalogue:
                return Behavior.error(400, {"error": {"message": f"unknown behavior {named!r}"}})
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
        if (early := await write_error_or_raw(request, behavior)) is not None:
            return early
        body = body if isinstance(body, dict) else {}
        text = self.reply if behavior.text is None and not behavior.tool_calls else behavior.text
        text = text or ""
        reason = behavior.finish_reason or ("tool_calls" if behavior.tool_calls else "stop")
        model = str(body.get("model") or self.model)
        prompt = sum(
            _words(m.get("content")) for m in body.get("messages", []) if isinstance(m, dict)
        )
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": _words(text),
            "total_tokens": prompt + _words(text),
            "prompt_tokens_details": {"cached_tokens": 0},
        }
        base = {"id": "chatcmpl-fake", "created": 0, "model": model}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if behavior.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                    for call in behavior.tool_calls
                ]
            answer = base | {
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": reason}],
                "usage": usage,
            }
            return await write_whole(request, answer, behavior)
        chunk = base | {"object": "chat.completion.chunk"}
        content = [
            chunk | {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            for delta in self._deltas(text, behavior)
        ]
        closing = [chunk | {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}]
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            closing.append(chunk | {"choices": [], "usage": usage})
        return await write_sse(request, content, closing, behavior)

    def _deltas(self, text: str, behavior: Behavior) -> list[dict[str, Any]]:
        size = self.chunk_size
        deltas: list[dict[str, Any]] = [
            {"content": text[i : i + size]} for i in range(0, len(text), size)
        ]
        for index, call in enumerate(behavior.tool_calls):
            function = {"name": call.name, "arguments": ""}
            deltas.append(
                {
                    "tool_calls": [
                        {"index": index, "id": call.id, "type": "function", "function": function}
                    ]
                }
            )
            deltas.extend(
                {
                    "tool_calls": [
                        {"index": index, "function": {"arguments": call.arguments[i : i + size]}}
                    ]
                }
                for i in range(0, len(call.arguments), size)
            )
        if not deltas:
            deltas.append({"content": ""})
        deltas[0] = {"role": "assistant"} | deltas[0]
        return deltas

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, behavior = await self._receive(request, queued=True)
        if (early := await write_error_or_raw(request, behavior)) is not None:
            return early
        body = body if isinstance(body, dict) else {}
        inputs = body.get("input", [])
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        dimensions = int(body.get("dimensions") or self.embedding_dimensions)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vector = _vector(str(text), dimensions)
            embedding = _base64_vector(vector) if as_base64 else vector
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(_words(text) for text in inputs)
        answer = {
            "object": "list",
            "data": data,
            "model": body.get("model") or self.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return await write_whole(request, answer, behavior)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        _, behavior = await self._receive(request, queued=False)
        if (early := await write_error_or_raw(request, behavior)) is not None:
            return early
        data = [{"id": name, "object": "model", "owned_by": "fake"} for name in self.models]
        return await write_whole(request, {"object": "list", "data": data}, behavior)

    async def _health(self, request: web.Request) -> web.StreamResponse:
        _, behavior = await self._receive(request, queued=False)
        if (early := await write_error_or_raw(request, behavior)) is not None:
            return early
        return await write_whole(request, {"status": "ok"}, behavior)
