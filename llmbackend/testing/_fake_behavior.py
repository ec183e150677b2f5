"""The behaviour catalogue of the fake provider servers: what to answer, and how to write it.

A :class:`Behavior` is a frozen value; the ``write_*`` functions enact it on an aiohttp
response. New faults (stalls, 500-once, ...) are a new :class:`BehaviorKind` plus a branch in
the writers, without touching the servers' routing.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web
from attrs import field, frozen

from llmbackend.models import ToolCall

__all__ = [
    "Behavior",
    "BehaviorKind",
    "builtin_catalogue",
    "write_error_or_raw",
    "write_sse",
    "write_whole",
]

#: What a malformed frame looks like: JSON cut off mid-object.
MALFORMED_FRAME = b'data: {"choices": [{"delta": {"content": "oops"\n\n'


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


def _headers(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(value or {})


def _calls(value: Sequence[ToolCall]) -> tuple[ToolCall, ...]:
    return tuple(value)


def _chunks(value: Sequence[bytes]) -> tuple[bytes, ...]:
    return tuple(value)


@frozen(kw_only=True)
class Behavior:
    """One scripted answer. Build it with the class methods."""

    kind: BehaviorKind = BehaviorKind.OK
    text: str | None = None
    tool_calls: tuple[ToolCall, ...] = field(default=(), converter=_calls)
    finish_reason: str | None = None
    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(factory=dict, converter=_headers)
    after_chunks: int = 1
    raw_chunks: tuple[bytes, ...] = field(default=(), converter=_chunks)
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
        """An HTTP error; ``body`` (JSON value or text) defaults to ``{"error": {...}}``."""
        return cls(kind=BehaviorKind.ERROR, status=status, body=body, headers=headers)

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
            headers=headers,
        )


def builtin_catalogue() -> dict[str, Behavior]:
    """The behaviours every fake server knows by name."""
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


async def _let_client_read() -> None:
    """Yield to the event loop so a client in the same loop reads this write on its own.

    Without it, consecutive writes coalesce into one client read and a frame split across
    writes would never reach the parser split. Three turns cover write, poll and wake-up.
    """
    for _ in range(3):
        await asyncio.sleep(0)


def _drop_connection(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def write_error_or_raw(request: web.Request, behavior: Behavior) -> web.StreamResponse | None:
    """Answers that do not depend on the endpoint (errors, raw replays); else ``None``."""
    if behavior.kind is BehaviorKind.ERROR:
        body = behavior.body if behavior.body is not None else _error_body(behavior.status)
        return web.Response(
            status=behavior.status,
            text=body if isinstance(body, str) else json.dumps(body),
            content_type="application/json",
            headers=behavior.headers,
        )
    if behavior.kind is BehaviorKind.RAW:
        response = web.StreamResponse(status=behavior.status, headers=behavior.headers)
        response.content_type = behavior.content_type
        await response.prepare(request)
        try:
            for chunk in behavior.raw_chunks:
                await response.write(chunk)
                await _let_client_read()
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client stopped reading (e.g. after a parse error); nothing to do
        return response
    return None


async def write_whole(request: web.Request, payload: Any, behavior: Behavior) -> web.StreamResponse:
    """A non-streamed JSON answer, cut or garbled as the behaviour says."""
    data = json.dumps(payload).encode()
    if behavior.kind is BehaviorKind.MALFORMED_CHUNK:
        data = data[: len(data) // 2]  # valid bytes, invalid JSON
    response = web.StreamResponse(status=200, headers={"Content-Length": str(len(data))})
    response.content_type = "application/json"
    await response.prepare(request)
    if behavior.kind is BehaviorKind.CUT_STREAM:
        await response.write(data[: len(data) // 2])
        _drop_connection(request)
        return response
    await response.write(data)
    await response.write_eof()
    return response


def _frame(chunk: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def write_sse(
    request: web.Request,
    content: Sequence[Mapping[str, Any]],
    closing: Sequence[Mapping[str, Any]],
    behavior: Behavior,
) -> web.StreamResponse:
    """An SSE answer: ``content`` chunks, then ``closing`` (finish, usage), then ``[DONE]``."""
    response = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    kind = behavior.kind
    broken = kind in (BehaviorKind.CUT_STREAM, BehaviorKind.MALFORMED_CHUNK)
    # A broken answer never reaches its finish chunk, however small ``after_chunks`` is.
    sent = content[: min(behavior.after_chunks, len(content))] if broken else content
    try:
        for chunk in sent:
            await response.write(_frame(chunk))
            await _let_client_read()
        if kind is BehaviorKind.CUT_STREAM:
            _drop_connection(request)
            return response
        if kind is BehaviorKind.MALFORMED_CHUNK:
            await response.write(MALFORMED_FRAME)
        else:
            for chunk in closing:
                await response.write(_frame(chunk))
            if kind is not BehaviorKind.MISSING_DONE:
                await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away (e.g. it stopped reading after an error); nothing to do
    return response
