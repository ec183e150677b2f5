"""``ReplayServer``: a loopback HTTP server that replays scripted bodies, for wire-format tests.

Point the backend under test at ``server.url``. Every request is recorded and answered with
the next queued :class:`ScriptedReply` (else the server's ``default``), whose body pieces are
written one write each with the event loop yielded in between, so the client really reads
them separately: a recorded body cut by :func:`split_awkwardly` proves that a parser copes
with frames, JSON strings, UTF-8 characters and CR LF pairs split across reads. A reply can
also drop the connection (``cut``) or hold its answer until the server stops (``hang``).

::

    async with ReplayServer() as server:
        body = sse_body({"choices": []}, "[DONE]")
        server.enqueue(sse_reply(split_into(body, 3)), json_reply({"error": "x"}, status=500))
        ...  # exercise a backend configured with base_url=server.url
        assert server.requests[0].json["stream"] is True

:func:`load_wire_fixture` reads a recorded interaction (a ``wire-fixture/v1`` YAML file).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from attrs import field, frozen

__all__ = [
    "AWKWARD_SIZES",
    "ReceivedRequest",
    "ReplayServer",
    "Responder",
    "ScriptedReply",
    "awkward_sse",
    "json_reply",
    "load_wire_fixture",
    "split_at",
    "split_awkwardly",
    "split_into",
    "sse_body",
    "sse_reply",
]

#: Piece sizes :func:`split_awkwardly` cycles through, so that cuts land inside field
#: names, ``data:`` prefixes, JSON strings, escapes and multi-byte characters.
AWKWARD_SIZES: tuple[int, ...] = (1, 2, 5, 11, 23, 57, 3, 131)

#: Event-loop turns after each write: one is not always enough for the client's read to run
#: before the next write, and two writes that meet in the socket buffer arrive as one read.
_YIELDS_PER_WRITE = 3


def _pieces(body: bytes | str | Iterable[bytes]) -> tuple[bytes, ...]:
    if isinstance(body, bytes):
        return (body,)
    if isinstance(body, str):
        return (body.encode(),)
    return tuple(body)


@frozen(kw_only=True)
class ScriptedReply:
    """One scripted answer. ``pieces`` is the body, written one write per piece (bytes or
    text passed in become one piece); with ``cut`` the connection is dropped after the
    pieces instead of ending the body; with ``hang`` nothing is sent until the server stops.
    """

    pieces: tuple[bytes, ...] = field(converter=_pieces)
    status: int = 200
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(factory=dict)
    cut: bool = False
    hang: bool = False


def json_reply(value: Any, **options: Any) -> ScriptedReply:
    """``value`` encoded as JSON, in one piece; ``options`` are the other
    :class:`ScriptedReply` fields (``status``, ``headers``, ``cut``, ``hang``)."""
    return ScriptedReply(pieces=json.dumps(value).encode(), **options)


def sse_reply(body: bytes | str | Iterable[bytes], **options: Any) -> ScriptedReply:
    """A ``text/event-stream`` reply of ``body``; ``options`` as for :func:`json_reply`."""
    return ScriptedReply(pieces=body, content_type="text/event-stream", **options)


@frozen(kw_only=True)
class ReceivedRequest:
    """A request the server received."""

    method: str
    #: The decoded path, without the query.
    path: str
    #: The path and query exactly as sent (not decoded).
    path_qs: str
    #: The query parameters (the first value of a repeated one).
    query: Mapping[str, str]
    #: The headers as sent (a plain dict: lookups are case-sensitive).
    headers: Mapping[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        """The body decoded as JSON; ``None`` when there is no body."""
        return json.loads(self.body) if self.body else None


#: Builds the reply to a request when no scripted reply is queued.
Responder = Callable[[ReceivedRequest], ScriptedReply]


class ReplayServer:
    """A real HTTP server on 127.0.0.1 and a free port; an async context manager.

    Each request, whatever its method and path, is appended to :attr:`requests` and gets the
    next reply queued with :meth:`enqueue`; with none queued it gets :attr:`default` (a
    reply, or a :data:`Responder` that builds one from the request), and without a default
    an HTTP 500 saying that nothing was scripted. Stopping releases hanging replies and waits
    at most ``shutdown_timeout`` seconds for handlers still running.
    """

    def __init__(
        self, *, default: ScriptedReply | Responder | None = None, shutdown_timeout: float = 2.0
    ) -> None:
        self.default = default
        self.requests: list[ReceivedRequest] = []
        self._queue: deque[ScriptedReply] = deque()
        self._shutdown_timeout = shutdown_timeout
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``; still known after the server stopped (a port that
        refuses connections)."""
        if self._url is None:
            raise RuntimeError("the ReplayServer has not been started")
        return self._url

    @property
    def pending(self) -> int:
        """How many queued replies no request has taken yet."""
        return len(self._queue)

    def enqueue(self, *replies: ScriptedReply) -> None:
        """Queue replies, answered in order to the next requests."""
        self._queue.extend(replies)

    async def __aenter__(self) -> ReplayServer:
        if self._url is not None:
            raise RuntimeError("a ReplayServer is started once")
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening, after letting hanging replies end. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self._release.set()
            await runner.cleanup()

    def _next_reply(self, received: ReceivedRequest) -> ScriptedReply:
        if self._queue:
            return self._queue.popleft()
        if isinstance(self.default, ScriptedReply):
            return self.default
        if self.default is not None:
            return self.default(received)
        missing = f"no scripted reply for {received.method} {received.path_qs}"
        return ScriptedReply(pieces=missing, status=500, content_type="text/plain")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = ReceivedRequest(
            method=request.method,
            path=request.path,
            path_qs=request.raw_path,
            query=dict(request.query),
            headers=dict(request.headers),
            body=await request.read(),
        )
        self.requests.append(received)
        reply = self._next_reply(received)
        if reply.hang:
            await self._release.wait()
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        response.content_type = reply.content_type
        try:
            await response.prepare(request)
            for piece in reply.pieces:
                await response.write(piece)
                for _ in range(_YIELDS_PER_WRITE):
                    await asyncio.sleep(0)
            if reply.cut:
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client stopped reading (after a parse error, say): nothing to answer
        return response


# --- bodies -------------------------------------------------------------------------------


def sse_body(*events: object, event_field: str | None = None, line_end: str = "\n") -> bytes:
    """Server-sent events, one frame per item: a ``str`` is the ``data:`` verbatim (such as
    ``"[DONE]"``), anything else is sent as JSON. With ``event_field``, a mapping item is
    preceded by an ``event:`` line naming ``item[event_field]`` (Anthropic, Cohere)."""
    frames = []
    for item in events:
        lines = [f"data: {item if isinstance(item, str) else json.dumps(item)}"]
        if event_field is not None and isinstance(item, Mapping):
            lines.insert(0, f"event: {item[event_field]}")
        frames.append(line_end.join(lines) + line_end * 2)
    return "".join(frames).encode()


def split_at(data: bytes, offsets: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given byte offsets (any order; repeats and offsets outside the
    body are ignored)."""
    cuts = sorted({offset for offset in offsets if 0 < offset < len(data)})
    bounds = [0, *cuts, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def split_into(data: bytes, count: int) -> list[bytes]:
    """``data`` cut into ``count`` pieces of near-equal size (fewer when it is shorter)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    size, longer = divmod(len(data), count)
    return split_at(data, itertools.accumulate(size + (i < longer) for i in range(count - 1)))


def split_awkwardly(data: bytes, sizes: Sequence[int] = AWKWARD_SIZES) -> list[bytes]:
    """``data`` cut into pieces of ``sizes`` bytes (cycling through them), and also between
    every CR and the LF after it."""
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be positive, not {sizes!r}")
    offsets: list[int] = []
    position = 0
    for size in itertools.cycle(sizes):
        position += size
        if position >= len(data):
            break
        offsets.append(position)
    offsets.extend(i + 1 for i in range(len(data) - 1) if data[i : i + 2] == b"\r\n")
    return split_at(data, offsets)


def awkward_sse(
    body: str, *, crlf: bool = False, before: str = "data:", filler: str = ": keep-alive\n\n"
) -> list[bytes]:
    """A recorded SSE ``body`` made harder to read, cut by :func:`split_awkwardly`: a
    keep-alive comment comes first and ``filler`` before every frame that starts with
    ``before``; line ends are LF, or CR LF with ``crlf``."""
    text = body.replace("\r\n", "\n")
    text = ": keep-alive\n\n" + text.replace(f"\n\n{before}", f"\n\n{filler}{before}")
    if crlf:
        text = text.replace("\n", "\r\n")
    return split_awkwardly(text.encode())


# --- recordings -----------------------------------------------------------------------------


def load_wire_fixture(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A recorded interaction: the mapping a ``wire-fixture/v1`` YAML file holds (``request``
    and ``response``, each with its ``body`` as text). Needs PyYAML (the ``yaml`` extra)."""
    try:
        import yaml
    except ImportError as exc:
        raise ImportError(
            "load_wire_fixture reads YAML, which needs PyYAML: pip install 'llmbackend[yaml]'"
        ) from exc
    loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise TypeError(f"{os.fspath(path)}: a wire fixture is a mapping, not {type(loaded)}")
    return loaded
