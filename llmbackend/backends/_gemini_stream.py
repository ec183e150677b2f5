"""Gemini stream parsing: SSE chunks to stream events, and the JSON-array stream format.

Pure state objects, no I/O. Shapes that are wrong raise :class:`MalformedResponseError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from llmbackend.backends._gemini_request import generated_call_id
from llmbackend.backends._gemini_wire import (
    check_prompt_feedback,
    filtered_error,
    finish_reason,
    parse_candidate,
    parse_usage,
)
from llmbackend.errors import MalformedResponseError
from llmbackend.models import (
    FinishEvent,
    FinishReason,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    UsageEvent,
)

__all__ = ["JsonArrayDecoder", "StreamState", "decode_chunk"]


def _malformed(backend: str, what: str) -> MalformedResponseError:
    return MalformedResponseError(what, backend=backend)


def decode_chunk(data: str, backend: str) -> dict[str, Any]:
    """One SSE ``data:`` payload as a JSON object."""
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise _malformed(backend, f"malformed stream chunk (not JSON): {data[:80]!r}") from exc
    if not isinstance(chunk, dict):
        raise _malformed(backend, f"malformed stream chunk (not a JSON object): {data[:80]!r}")
    return chunk


@attrs.define
class StreamState:
    """What one streamed answer has said so far; turns chunks into stream events."""

    backend: str
    model: str
    raw_reason: str | None = None
    calls: int = 0
    answered: bool = False
    ratings: Any = None

    def feed(self, chunk: Mapping[str, Any]) -> list[StreamEvent]:
        """The events of one ``GenerateContentResponse`` chunk (not an error frame)."""
        check_prompt_feedback(chunk, self.backend)
        if isinstance(chunk.get("modelVersion"), str) and chunk["modelVersion"]:
            self.model = chunk["modelVersion"]
        events: list[StreamEvent] = []
        candidate = parse_candidate(chunk, self.backend)
        if candidate is not None:
            if candidate.text:
                events.append(TextDelta(text=candidate.text))
            for call_id, name, arguments in candidate.calls:
                # Gemini streams each function call whole, in one part.
                events.append(
                    ToolCallDelta(
                        index=self.calls,
                        id=call_id or generated_call_id(self.calls),
                        name=name,
                        arguments_delta=arguments,
                    )
                )
                self.calls += 1
            self.answered = self.answered or bool(events)
            if candidate.raw_reason is not None:
                self.raw_reason = candidate.raw_reason
                self.ratings = candidate.ratings
        if isinstance(chunk.get("usageMetadata"), dict):
            events.append(UsageEvent(usage=parse_usage(chunk["usageMetadata"])))
        return events

    def finish(self) -> FinishEvent:
        """The closing event (or the safety error an empty, blocked answer amounts to)."""
        reason = finish_reason(self.raw_reason, called_tools=self.calls > 0)
        if reason is FinishReason.CONTENT_FILTER and not self.answered:
            raise filtered_error("the answer", self.raw_reason or "", self.ratings, self.backend)
        return FinishEvent(
            reason=reason, raw_reason=self.raw_reason, backend=self.backend, model=self.model
        )


class JsonArrayDecoder:
    """Incremental decoder of the non-SSE stream format: one JSON array of responses.

    ``feed`` text in pieces of any size and get back the objects completed so far;
    ``close`` raises unless the closing bracket arrived (the body ended cleanly).
    """

    def __init__(self, backend: str) -> None:
        self._backend = backend
        self._buffer = ""
        self._position = 0
        self._start: int | None = None
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._opened = False
        self.closed = False

    def feed(self, text: str) -> list[Any]:
        """The array elements completed by ``text``."""
        self._buffer += text
        found: list[Any] = []
        buffer, index = self._buffer, self._position
        while index < len(buffer):
            char = buffer[index]
            if self._depth:
                self._scan_inside(char)
                if not self._depth:
                    found.append(self._decode(buffer[self._start : index + 1]))
                    self._start = None
            else:
                self._scan_between(char, index)
            index += 1
        # Keep only the unfinished element, so the buffer never grows with the stream.
        keep = self._start if self._start is not None else len(buffer)
        self._buffer, self._position = buffer[keep:], len(buffer) - keep
        if self._start is not None:
            self._start = 0
        return found

    def close(self) -> None:
        """Raise :class:`MalformedResponseError` if the array was not closed."""
        if not self.closed:
            raise _malformed(self._backend, "the JSON-array stream ended before its closing ]")

    def _scan_inside(self, char: str) -> None:
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
        elif char == '"':
            self._in_string = True
        elif char in "{[":
            self._depth += 1
        elif char in "}]":
            self._depth -= 1

    def _scan_between(self, char: str, index: int) -> None:
        if char.isspace() or (char == "," and self._opened and not self.closed):
            return
        if not self._opened and char == "[":
            self._opened = True
        elif self._opened and not self.closed and char == "]":
            self.closed = True
        elif self._opened and not self.closed and char == "{":
            self._depth, self._start = 1, index
        else:
            raise _malformed(self._backend, f"unexpected {char!r} in the JSON-array stream")

    def _decode(self, text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError as exc:
            raise _malformed(self._backend, f"malformed stream element: {text[:80]!r}") from exc
