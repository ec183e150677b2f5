"""SSE and NDJSON framing: split frames, every line ending, comments, a final open event."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from llmbackend._sse import SseEvent, iter_ndjson_lines, iter_sse


class Chunks:
    """A response body delivered in exactly these pieces (as TCP reads would)."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self.pieces = pieces

    async def iter_any(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def every_split(body: bytes) -> list[list[bytes]]:
    return [[body[:cut], body[cut:]] for cut in range(len(body) + 1)]


async def collect(pieces: Sequence[bytes]) -> list[SseEvent]:
    return [event async for event in iter_sse(Chunks(pieces))]  # type: ignore[arg-type]


BODY = (
    b": keep-alive\r\n\r\n"
    b'event: message_start\r\ndata: {"a": 1}\r\n\r\n'
    b"data: first line\ndata: second line\n\n"
    b"data: cr only\r\r"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SseEvent("message_start", '{"a": 1}'),
    SseEvent("message", "first line\nsecond line"),
    SseEvent("message", "cr only"),
    SseEvent("message", "[DONE]"),
]


async def test_events_survive_a_split_at_every_byte() -> None:
    """Whatever byte a frame is cut at between reads, the same events come out."""
    for pieces in every_split(BODY):
        assert await collect(pieces) == EXPECTED, pieces


async def test_one_byte_reads() -> None:
    """A body arriving one byte at a time still yields whole events (incl. multibyte UTF-8)."""
    body = "data: héllo wörld\n\n".encode()
    pieces = [body[i : i + 1] for i in range(len(body))]
    assert await collect(pieces) == [SseEvent("message", "héllo wörld")]


async def test_final_event_without_blank_line_is_dispatched() -> None:
    """A server that omits the last blank line does not lose its final event."""
    assert await collect([b'data: {"done": true}']) == [SseEvent("message", '{"done": true}')]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
async def test_ndjson_lines_skip_blanks(ending: bytes) -> None:
    """NDJSON yields each non-empty line whatever the line ending."""
    body = b'{"a":1}' + ending + ending + b'{"b":2}' + ending
    lines = [line async for line in iter_ndjson_lines(Chunks([body[:5], body[5:]]))]  # type: ignore[arg-type]
    assert lines == ['{"a":1}', '{"b":2}']
