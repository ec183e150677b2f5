"""Incremental Server-Sent-Events and NDJSON framing over an aiohttp response body.

Frames may be split across TCP reads at any byte; comments (``: keep-alive``) are skipped;
``\\r\\n``, ``\\n`` and ``\\r`` line ends are all accepted, as the SSE spec requires.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from attrs import frozen

__all__ = ["SseEvent", "iter_lines", "iter_ndjson_lines", "iter_sse"]


@frozen
class SseEvent:
    """One dispatched SSE event: its ``event`` name (``message`` when none) and joined data."""

    event: str
    data: str


async def iter_lines(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """Decoded lines without their terminators, whatever the chunking of the body."""
    buffer = b""
    async for chunk in content.iter_any():
        buffer += chunk
        # Split on \n; a trailing \r belongs to a CRLF pair (or is a lone CR line end).
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            text = raw.decode("utf-8")
            if "\r" in text:
                # Lone CRs are line ends too; "a\r" from CRLF yields "a" then nothing.
                pieces = text.split("\r")
                if pieces[-1] == "":
                    pieces.pop()
                for piece in pieces:
                    yield piece
            else:
                yield text
    if buffer:
        for piece in buffer.decode("utf-8").split("\r"):
            if piece:
                yield piece


async def iter_sse(content: aiohttp.StreamReader) -> AsyncIterator[SseEvent]:
    """Dispatch SSE events.

    An event still open when the body ends cleanly is dispatched too (the spec drops it,
    but servers do omit the final blank line); a truncated payload then fails to decode
    and is reported as malformed rather than silently lost.
    """
    event = ""
    data: list[str] = []
    async for line in iter_lines(content):
        if not line:
            if data:
                yield SseEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield SseEvent(event or "message", "\n".join(data))


async def iter_ndjson_lines(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """Non-empty lines of a newline-delimited JSON body."""
    async for line in iter_lines(content):
        if line.strip():
            yield line
