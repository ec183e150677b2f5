"""``FakeProviderServer``: a real HTTP server on loopback that speaks the OpenAI and the
Anthropic wire formats and injects faults.

Tests point backends at it and script its answers. Routes (each also under ``/b/<backend>``,
see below): ``POST /v1/chat/completions``, ``POST /v1/embeddings`` and ``GET /v1/models``
(OpenAI; ``/v1/models`` answers Anthropic's shape to requests carrying
``anthropic-version``), ``POST /v1/messages`` (Anthropic) and ``GET /health``.

Each request gets one :class:`Behavior`, chosen in this order:

1. the ``x-fake-behavior`` request header, naming an entry of the catalogue (an unknown
   name is answered with HTTP 400);
2. the request's ``model``, when it names an entry of the catalogue;
3. the next queued behaviour of its logical backend (``enqueue``, ``script``), for model
   calls (the POST endpoints) only, so health checks and model listings never consume it;
4. ``Behavior.ok()``: the server's default reply.

**Logical backends.** Several backends can share one server: ``url_for("primary")`` is the
base URL ``http://127.0.0.1:<port>/b/primary/v1`` (``root_url_for`` drops the ``/v1``).
Requests under it are recorded with ``backend="primary"``, counted in
``counts["primary"]`` (model calls only: the attempts a provider received) and served from
that backend's own queue. Requests to ``base_url`` belong to backend ``None``.

**State.** ``flapping`` and ``error_500_once`` are stateful per server, logical backend and
catalogue name; only model calls advance that state (a health check sees it unchanged). A
time window is measured on the injectable ``clock`` from the first model call.

**Shutdown.** Every wait (``latency``, first-token delays, ``never_answer``, stalls) ends
when the server stops: the handler drops its connection and returns, so ``stop()`` is
prompt however many such requests are open.
"""

from __future__ import annotations

import asyncio
import enum
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web
from attrs import field, frozen

from llmbackend.testing import _fake_wire_anthropic as anthropic
from llmbackend.testing import _fake_wire_openai as openai
from llmbackend.testing._fake_behavior import Behavior, BehaviorKind, builtin_catalogue
from llmbackend.testing._fake_script import Script
from llmbackend.testing._fake_stream import (
    Rendered,
    ServerStopping,
    Waiter,
    drop_connection,
    error_headers,
    write_error,
    write_raw,
    write_stream,
    write_whole,
)

__all__ = ["BEHAVIOR_HEADER", "FakeProviderServer", "RecordedRequest"]

#: The header that picks a catalogue behaviour for one request.
BEHAVIOR_HEADER = "x-fake-behavior"
_BACKEND_NAME = re.compile(r"[A-Za-z0-9._~-]+")


class _Endpoint(enum.Enum):
    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    MESSAGES = "messages"
    MODELS = "models"
    HEALTH = "health"


@frozen(kw_only=True)
class RecordedRequest:
    """A request the server received."""

    method: str
    path: str
    headers: Mapping[str, str]
    #: The decoded JSON body; the text when it is not JSON; ``None`` without a body.
    json: Any
    query: Mapping[str, str] = field(factory=dict)
    #: The logical backend (``/b/<backend>/...``); ``None`` for the server's root URLs.
    backend: str | None = None
    #: The catalogue name that served it (header, model or script); ``None`` otherwise.
    behavior: str | None = None


class FakeProviderServer:
    """An OpenAI- and Anthropic-compatible server on ``127.0.0.1``; an async context manager."""

    def __init__(
        self,
        *,
        reply: str = "Hello from the fake provider server.",
        model: str = "fake-model",
        models: Sequence[str] = ("fake-model", "fake-embedding"),
        latency: float = 0.0,
        chunk_size: int = 4,
        embedding_dimensions: int = 8,
        behaviors: Mapping[str, Behavior] | None = None,
        shutdown_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reply = reply
        self.model = model
        self.models = tuple(models)
        #: Seconds every handler waits before answering (0 for none).
        self.latency = latency
        #: Characters of text (or tool arguments) per streamed chunk.
        self.chunk_size = max(1, chunk_size)
        self.embedding_dimensions = embedding_dimensions
        self._script = Script(catalogue=builtin_catalogue() | dict(behaviors or {}), clock=clock)
        #: Name -> behaviour; add entries with :meth:`register`.
        self.catalogue: dict[str, Behavior] = self._script.catalogue
        self.requests: list[RecordedRequest] = []
        self._counts: Counter[str | None] = Counter()
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._stopping = asyncio.Event()
        self._arrived = asyncio.Event()
        self._active = 0

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1 and a port the OS picks. Idempotent."""
        if self._runner is not None:
            return
        self._stopping = asyncio.Event()
        self._arrived = asyncio.Event()
        app = web.Application()
        for prefix in ("", "/b/{backend}"):
            router = app.router
            router.add_post(f"{prefix}/v1/chat/completions", self._route(_Endpoint.CHAT))
            router.add_post(f"{prefix}/v1/embeddings", self._route(_Endpoint.EMBEDDINGS))
            router.add_post(f"{prefix}/v1/messages", self._route(_Endpoint.MESSAGES))
            router.add_get(f"{prefix}/v1/models", self._route(_Endpoint.MODELS))
            router.add_get(f"{prefix}/health", self._route(_Endpoint.HEALTH))
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
        """Stop listening; waiting handlers drop their connections and return. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self._stopping.set()
            await runner.cleanup()

    async def stop(self) -> None:
        """Same as :meth:`aclose`."""
        await self.aclose()

    async def __aenter__(self) -> FakeProviderServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def in_flight(self) -> int:
        """How many handlers are running now (held, stalled, or still writing)."""
        return self._active

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

    def root_url_for(self, backend: str) -> str:
        """The root URL of logical backend ``backend`` (``.../b/<backend>``)."""
        if not _BACKEND_NAME.fullmatch(backend):
            raise ValueError(f"a backend name is letters, digits and ._~- only: {backend!r}")
        return f"{self.root_url}/b/{backend}"

    def url_for(self, backend: str) -> str:
        """The base URL (``.../b/<backend>/v1``) of logical backend ``backend``."""
        return f"{self.root_url_for(backend)}/v1"

    # --- scripting ------------------------------------------------------------------------

    def enqueue(self, *items: Behavior | str, backend: str | None = None) -> None:
        """Queue answers for the next model calls of ``backend``; a string is an ``ok``
        reply text (use :meth:`script` to queue catalogue entries by name)."""
        self._script.enqueue(
            (Behavior.ok(item) if isinstance(item, str) else item for item in items), backend
        )

    def enqueue_error(
        self,
        status: int,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        *,
        backend: str | None = None,
    ) -> None:
        """Queue an HTTP error answer."""
        self.enqueue(Behavior.error(status, body, headers), backend=backend)

    def script(self, *names: str, backend: str | None = None) -> None:
        """Queue catalogue entries by name, in order, for the next model calls of
        ``backend``; stateful entries share their state with the same name selected by
        header or model."""
        self._script.enqueue_named(names, backend)

    def register(self, name: str, behavior: Behavior) -> None:
        """Add ``name`` to the catalogue (selectable by header, model name or script)."""
        self.catalogue[name] = behavior

    @property
    def pending(self) -> int:
        """How many queued behaviours (all backends) are still unused."""
        return self._script.pending

    def reset(self) -> None:
        """Forget recorded requests, counts, queues and the state of stateful entries."""
        self.requests.clear()
        self._counts.clear()
        self._script.reset()

    # --- what it saw ----------------------------------------------------------------------

    @property
    def counts(self) -> Counter[str | None]:
        """Model calls (POSTs) received per logical backend (``None``: the root URLs)."""
        return Counter(self._counts)

    def requests_for(self, backend: str | None) -> list[RecordedRequest]:
        """Every request (model calls, health checks, listings) ``backend`` received."""
        return [request for request in self.requests if request.backend == backend]

    async def wait_for_requests(self, count: int) -> None:
        """Return once the server has received ``count`` requests in all: a test's way to
        know a held request arrived (bound it with ``asyncio.timeout``)."""
        while len(self.requests) < count:
            self._arrived.clear()
            await self._arrived.wait()

    # --- handling -------------------------------------------------------------------------

    def _route(self, endpoint: _Endpoint) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, endpoint)

        return handle

    async def _serve(self, request: web.Request, endpoint: _Endpoint) -> web.StreamResponse:
        self._active += 1
        try:
            body = await self._read(request)
            backend = request.match_info.get("backend")
            model_call = request.method == "POST"
            named = request.headers.get(BEHAVIOR_HEADER)
            name, behavior, key = self._script.choose(named, body, backend, model_call=model_call)
            self._record(request, body, backend, name, model_call=model_call)
            behavior = self._script.resolve(behavior, key, body, advance=model_call)
            waiter = Waiter(self._stopping)
            await waiter.sleep(self.latency)
            return await self._answer(request, endpoint, body, behavior, waiter)
        except ServerStopping:
            drop_connection(request)
            return web.Response()
        finally:
            self._active -= 1

    async def _read(self, request: web.Request) -> Any:
        if not request.can_read_body:
            return None
        raw = await request.read()
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _record(
        self,
        request: web.Request,
        body: Any,
        backend: str | None,
        name: str | None,
        *,
        model_call: bool,
    ) -> None:
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers=dict(request.headers),
                json=body,
                query=dict(request.query),
                backend=backend,
                behavior=name,
            )
        )
        if model_call:
            self._counts[backend] += 1
        self._arrived.set()

    async def _answer(
        self,
        request: web.Request,
        endpoint: _Endpoint,
        body: Any,
        behavior: Behavior,
        waiter: Waiter,
    ) -> web.StreamResponse:
        kind = behavior.kind
        body = body if isinstance(body, dict) else {}
        as_anthropic = endpoint is _Endpoint.MESSAGES or (
            endpoint is _Endpoint.MODELS and "anthropic-version" in request.headers
        )
        streamed = endpoint in (_Endpoint.CHAT, _Endpoint.MESSAGES) and bool(body.get("stream"))
        if kind is BehaviorKind.CONNECTION_RESET:
            drop_connection(request)
            return web.Response()
        if kind is BehaviorKind.NEVER_ANSWER:
            await waiter.forever()
        if kind is BehaviorKind.RAW:
            return await write_raw(request, behavior)
        if kind is BehaviorKind.ERROR or (kind is BehaviorKind.STREAM_ERROR and not streamed):
            return self._error(behavior, as_anthropic=as_anthropic)
        rendered = self._render(endpoint, body, behavior, as_anthropic=as_anthropic)
        if streamed:
            return await write_stream(request, rendered, behavior, waiter)
        return await write_whole(request, rendered, behavior, waiter)

    def _error(self, behavior: Behavior, *, as_anthropic: bool) -> web.Response:
        status, problem = behavior.status, behavior.error_problem
        body = behavior.body
        headers = error_headers(behavior)
        if as_anthropic:
            headers = dict(anthropic.HEADERS) | headers
            body = anthropic.error_body(problem) if body is None else body
        else:
            body = openai.error_body(problem, status) if body is None else body
        return write_error(status, body, headers)

    def _render(
        self,
        endpoint: _Endpoint,
        body: Mapping[str, Any],
        behavior: Behavior,
        *,
        as_anthropic: bool,
    ) -> Rendered:
        if endpoint in (_Endpoint.CHAT, _Endpoint.MESSAGES):
            write = openai.chat if endpoint is _Endpoint.CHAT else anthropic.messages
            return write(
                body, behavior, reply=self.reply, model=self.model, chunk_size=self.chunk_size
            )
        if endpoint is _Endpoint.EMBEDDINGS:
            return openai.embeddings(body, model=self.model, dimensions=self.embedding_dimensions)
        if endpoint is _Endpoint.MODELS:
            return anthropic.models(self.models) if as_anthropic else openai.models(self.models)
        return Rendered(whole={"status": "ok"})
