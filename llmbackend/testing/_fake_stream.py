"""How the fake provider server writes an answer, whatever its wire format.

A wire module (``_fake_wire_openai``, ``_fake_wire_anthropic``) turns a request into a
:class:`Rendered` answer: the whole JSON body, the stream frames split into preamble, content,
closing and terminator, and the frames a fault needs (a malformed one, an error event). The
writers here enact a :class:`Behavior` on that: cut after K content frames, stall, drop the
terminator, and so on. Every wait goes through a :class:`Waiter`, which the server wakes when
it stops, so no handler outlives ``stop()``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any, NoReturn

from aiohttp import web
from attrs import define, field, frozen

from llmbackend.testing._fake_behavior import Behavior, BehaviorKind

__all__ = [
    "Rendered",
    "ServerStopping",
    "Waiter",
    "drop_connection",
    "error_headers",
    "write_error",
    "write_raw",
    "write_stream",
    "write_whole",
]


class ServerStopping(Exception):  # noqa: N818 - a signal, not an error condition
    """Raised inside a handler waiting on the :class:`Waiter` when the server stops."""


@define
class Waiter:
    """Waits that end early, with :class:`ServerStopping`, when the server stops."""

    stopping: asyncio.Event

    async def sleep(self, seconds: float) -> None:
        if self.stopping.is_set():
            raise ServerStopping
        if seconds <= 0:
            return
        try:
            async with asyncio.timeout(seconds):
                await self.stopping.wait()
        except TimeoutError:
            return
        raise ServerStopping

    async def forever(self) -> NoReturn:
        await self.stopping.wait()
        raise ServerStopping


@frozen(kw_only=True)
class Rendered:
    """One answer in one wire format, ready for any behaviour to write."""

    whole: Any
    preamble: tuple[bytes, ...] = ()
    content: tuple[bytes, ...] = ()
    closing: tuple[bytes, ...] = ()
    terminator: tuple[bytes, ...] = ()
    #: A frame whose data is not JSON.
    malformed: bytes = b""
    #: The mid-stream error event, when the behaviour asks for one.
    error_event: bytes = b""
    content_type: str = "text/event-stream"
    headers: Mapping[str, str] = field(factory=dict)


def drop_connection(request: web.Request) -> None:
    """Abort the TCP connection: the client sees a reset or a truncated body."""
    if request.transport is not None:
        request.transport.abort()


async def _let_client_read() -> None:
    """Yield to the event loop so a client in the same loop reads this write on its own.

    Without it, consecutive writes coalesce into one client read and a frame split across
    writes would never reach the parser split. Three turns cover write, poll and wake-up.
    """
    for _ in range(3):
        await asyncio.sleep(0)


def error_headers(behavior: Behavior) -> dict[str, str]:
    """The behaviour's headers plus ``Retry-After`` (seconds or HTTP date) if it has one."""
    headers = dict(behavior.headers)
    if behavior.retry_after is not None:
        if behavior.retry_after_as_date:
            # Wall-clock time: the client compares the date with its own time.time().
            headers["Retry-After"] = email.utils.formatdate(
                time.time() + behavior.retry_after, usegmt=True
            )
        else:
            headers["Retry-After"] = f"{behavior.retry_after:g}"
    return headers


def write_error(status: int, body: Any, headers: Mapping[str, str]) -> web.Response:
    return web.Response(
        status=status,
        text=body if isinstance(body, str) else json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


async def write_raw(request: web.Request, behavior: Behavior) -> web.StreamResponse:
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


async def write_whole(
    request: web.Request, rendered: Rendered, behavior: Behavior, waiter: Waiter
) -> web.StreamResponse:
    """A non-streamed JSON answer, delayed, cut, stalled or garbled as the behaviour says."""
    data = json.dumps(rendered.whole).encode()
    kind = behavior.kind
    if kind is BehaviorKind.MALFORMED_CHUNK:
        data = data[: len(data) // 2]  # valid bytes, invalid JSON
    # A non-streamed answer has no first token: the whole body is late.
    await waiter.sleep(behavior.first_token_delay)
    headers = {"Content-Length": str(len(data))} | dict(rendered.headers)
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "application/json"
    await response.prepare(request)
    try:
        if kind in (BehaviorKind.CUT_STREAM, BehaviorKind.STREAM_STALL):
            await response.write(data[: len(data) // 2])
            if kind is BehaviorKind.STREAM_STALL:
                await waiter.forever()
            drop_connection(request)
            return response
        await response.write(data)
        await response.write_eof()
    except ServerStopping:
        drop_connection(request)
    except ConnectionResetError:
        pass  # the client went away; nothing to do
    return response


async def write_stream(
    request: web.Request, rendered: Rendered, behavior: Behavior, waiter: Waiter
) -> web.StreamResponse:
    """An SSE answer: preamble, content, closing, terminator; broken as the behaviour says."""
    headers = {"Cache-Control": "no-cache"} | dict(rendered.headers)
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = rendered.content_type
    await response.prepare(request)
    try:
        await _write_frames(response, rendered, behavior, waiter)
    except ServerStopping:
        drop_connection(request)
    except ConnectionResetError:
        pass  # the client went away (e.g. it stopped reading after an error); nothing to do
    else:
        if behavior.kind is BehaviorKind.CUT_STREAM:
            drop_connection(request)
    return response


async def _write_frames(
    response: web.StreamResponse, rendered: Rendered, behavior: Behavior, waiter: Waiter
) -> None:
    content = rendered.content
    # A broken answer never reaches its finish, however small ``after_chunks`` is.
    fault_at = min(behavior.after_chunks, len(content))
    await waiter.sleep(behavior.first_token_delay)
    for frame in rendered.preamble:
        await response.write(frame)
    for index in range(len(content) + 1):
        if index == fault_at and await _fault(response, rendered, behavior, waiter):
            return
        if index < len(content):
            await response.write(content[index])
            await _let_client_read()
    for frame in rendered.closing:
        await response.write(frame)
    if behavior.kind is not BehaviorKind.MISSING_DONE:
        for frame in rendered.terminator:
            await response.write(frame)
    await response.write_eof()


async def _fault(
    response: web.StreamResponse, rendered: Rendered, behavior: Behavior, waiter: Waiter
) -> bool:
    """Enact the fault due after ``after_chunks`` content frames; ``True`` ends the body."""
    kind = behavior.kind
    if kind is BehaviorKind.CUT_STREAM:
        return True
    if kind is BehaviorKind.STREAM_STALL:
        await waiter.forever()
    if kind is BehaviorKind.STREAM_ERROR:
        await response.write(rendered.error_event)
        await response.write_eof()
        return True
    if kind is BehaviorKind.MALFORMED_CHUNK:
        await response.write(rendered.malformed)
        await _let_client_read()
    return False
