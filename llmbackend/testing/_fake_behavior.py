"""The behaviour catalogue of the fake provider server: what to answer to one request.

A :class:`Behavior` is a frozen, wire-neutral value. The server renders it in the wire format
of the request (OpenAI chat completions or Anthropic Messages), so one catalogue entry means
the same fault for every provider: ``context_length`` is OpenAI's
``code: context_length_exceeded`` body on ``/v1/chat/completions`` and Anthropic's
``prompt is too long`` body on ``/v1/messages``.

Two kinds are stateful and are resolved by the server before rendering: ``FLAPPING`` (fail
for the first N model calls, or for a time window, then answer) and ``REJECTS_PREFILL``
(fail only when the conversation ends with an assistant message).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import field, frozen

from llmbackend.models import ToolCall

__all__ = ["Behavior", "BehaviorKind", "Problem", "builtin_catalogue", "ends_with_assistant"]


class BehaviorKind(enum.StrEnum):
    """What the server does with a request. Most values are also catalogue names."""

    OK = "ok"
    #: An HTTP error status with the provider's error body for ``problem``.
    ERROR = "error"
    #: Close the connection after ``after_chunks`` content chunks, without a finish.
    CUT_STREAM = "cut_stream"
    #: A complete answer whose body ends without the terminator (``data: [DONE]`` for
    #: OpenAI, the ``message_stop`` event for Anthropic).
    MISSING_DONE = "missing_done"
    #: One frame that is not JSON after ``after_chunks`` content chunks; the answer then
    #: finishes normally (an unparsable body for non-streamed calls).
    MALFORMED_CHUNK = "malformed_chunk"
    #: Write ``raw_chunks`` verbatim, one write each (replaying recorded bodies).
    RAW = "raw"
    #: Abort the TCP connection without writing a response.
    CONNECTION_RESET = "connection_reset"
    #: Accept the request and never answer; the handler is released when the server stops.
    NEVER_ANSWER = "never_answer"
    #: Send ``after_chunks`` content chunks, then go silent until the server stops.
    STREAM_STALL = "stream_stall"
    #: A mid-stream error event after ``after_chunks`` content chunks, then the body ends
    #: (HTTP ``status`` with the error body for non-streamed calls).
    STREAM_ERROR = "stream_error"
    #: Stateful: ``failure`` for the first ``failures`` model calls (or for ``window``
    #: seconds from the first one), ``then`` afterwards.
    FLAPPING = "flapping"
    #: Stateful per request: HTTP 400 when the last message is an assistant message
    #: (prefill), ``then`` otherwise.
    REJECTS_PREFILL = "rejects_prefill"


class Problem(enum.StrEnum):
    """Which provider error an ``ERROR`` (or ``STREAM_ERROR``) carries.

    Each wire format renders it with that provider's real type, code and message.
    """

    INVALID_REQUEST = "invalid_request"
    AUTHENTICATION = "authentication"
    NOT_FOUND = "not_found"
    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    UNAVAILABLE = "unavailable"
    OVERLOADED = "overloaded"
    CONTEXT_LENGTH = "context_length"
    CONTENT_FILTER = "content_filter"
    PREFILL = "prefill"

    @classmethod
    def for_status(cls, status: int) -> Problem:
        """The problem an error status means when nothing more specific was asked for."""
        if status in (401, 403):
            return cls.AUTHENTICATION
        if status == 404:
            return cls.NOT_FOUND
        if status == 429:
            return cls.RATE_LIMIT
        if status == 529:
            return cls.OVERLOADED
        if status == 503:
            return cls.UNAVAILABLE
        if status >= 500:
            return cls.SERVER_ERROR
        return cls.INVALID_REQUEST


def _headers(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(value or {})


def _calls(value: Sequence[ToolCall]) -> tuple[ToolCall, ...]:
    return tuple(value)


def _chunks(value: Sequence[bytes]) -> tuple[bytes, ...]:
    return tuple(value)


def _problem(value: Problem | str | None) -> Problem | None:
    return None if value is None else Problem(value)


@frozen(kw_only=True)
class Behavior:
    """One scripted answer. Build it with the class methods."""

    kind: BehaviorKind = BehaviorKind.OK
    text: str | None = None
    tool_calls: tuple[ToolCall, ...] = field(default=(), converter=_calls)
    #: Wire-neutral (``stop``, ``length``, ``tool_calls``, ``content_filter``: each format
    #: translates it, e.g. ``content_filter`` is Anthropic's ``refusal``) or verbatim.
    finish_reason: str | None = None
    status: int = 200
    #: A verbatim error body (JSON value or text); ``None`` renders ``problem``.
    body: Any = None
    problem: Problem | None = field(default=None, converter=_problem)
    headers: Mapping[str, str] = field(factory=dict, converter=_headers)
    #: Seconds for a ``Retry-After`` header (``None``: no header).
    retry_after: float | None = None
    #: Send ``Retry-After`` as an HTTP date (``retry_after`` seconds from now).
    retry_after_as_date: bool = False
    after_chunks: int = 1
    #: Seconds between the response headers and the first chunk (the whole body, when not
    #: streamed).
    first_token_delay: float = 0.0
    raw_chunks: tuple[bytes, ...] = field(default=(), converter=_chunks)
    content_type: str = "text/event-stream"
    failures: int = 0
    window: float | None = None
    failure: Behavior | None = None
    then: Behavior | None = None

    @property
    def stateful(self) -> bool:
        return self.kind in (BehaviorKind.FLAPPING, BehaviorKind.REJECTS_PREFILL)

    @property
    def error_problem(self) -> Problem:
        return self.problem or Problem.for_status(self.status)

    @classmethod
    def ok(
        cls,
        text: str | None = None,
        *,
        tool_calls: Sequence[ToolCall] = (),
        finish_reason: str | None = None,
        first_token_delay: float = 0.0,
    ) -> Behavior:
        """A normal answer (``text`` or the server's default reply, and/or tool calls)."""
        return cls(
            text=text,
            tool_calls=tuple(tool_calls),
            finish_reason=finish_reason,
            first_token_delay=first_token_delay,
        )

    @classmethod
    def error(
        cls,
        status: int,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        *,
        problem: Problem | str | None = None,
        retry_after: float | None = None,
        retry_after_as_date: bool = False,
    ) -> Behavior:
        """An HTTP error; ``body`` defaults to the provider's body for ``problem`` (by
        default the one ``status`` means)."""
        return cls(
            kind=BehaviorKind.ERROR,
            status=status,
            body=body,
            headers=headers,
            problem=problem,
            retry_after=retry_after,
            retry_after_as_date=retry_after_as_date,
        )

    @classmethod
    def rate_limited(cls, retry_after: float | None = 1.0, *, as_date: bool = False) -> Behavior:
        """HTTP 429 with ``Retry-After`` in seconds, as an HTTP date, or absent (``None``)."""
        return cls.error(429, retry_after=retry_after, retry_after_as_date=as_date)

    @classmethod
    def context_length(cls) -> Behavior:
        """HTTP 400 with the provider's context-length error body."""
        return cls.error(400, problem=Problem.CONTEXT_LENGTH)

    @classmethod
    def content_filter(cls, text: str = "") -> Behavior:
        """What the real APIs do when the output is filtered: HTTP 200, ``text`` (often
        empty or partial) and finish reason ``content_filter`` (OpenAI) / stop reason
        ``refusal`` (Anthropic)."""
        return cls.ok(text, finish_reason="content_filter")

    @classmethod
    def cut_stream(cls, after_chunks: int = 1, text: str | None = None) -> Behavior:
        """Drop the connection mid-answer (mid-body for non-streamed calls)."""
        return cls(kind=BehaviorKind.CUT_STREAM, after_chunks=after_chunks, text=text)

    @classmethod
    def missing_done(cls, text: str | None = None) -> Behavior:
        """A finished stream whose body ends without its terminator."""
        return cls(kind=BehaviorKind.MISSING_DONE, text=text)

    @classmethod
    def malformed_chunk(cls, after_chunks: int = 1) -> Behavior:
        """One frame that is not JSON amid valid ones (an unparsable non-streamed body)."""
        return cls(kind=BehaviorKind.MALFORMED_CHUNK, after_chunks=after_chunks)

    @classmethod
    def connection_reset(cls) -> Behavior:
        """Abort the connection without any response."""
        return cls(kind=BehaviorKind.CONNECTION_RESET)

    @classmethod
    def never_answer(cls) -> Behavior:
        """Hold the request open, unanswered, until the server stops."""
        return cls(kind=BehaviorKind.NEVER_ANSWER)

    @classmethod
    def stream_stall(cls, after_chunks: int = 1, text: str | None = None) -> Behavior:
        """Send ``after_chunks`` chunks (half the body, when not streamed), then nothing
        until the server stops."""
        return cls(kind=BehaviorKind.STREAM_STALL, after_chunks=after_chunks, text=text)

    @classmethod
    def slow_first_token(cls, delay: float = 1.0, text: str | None = None) -> Behavior:
        """A normal answer whose first chunk comes ``delay`` seconds after the headers."""
        return cls.ok(text, first_token_delay=delay)

    @classmethod
    def stream_error(
        cls, after_chunks: int = 1, *, problem: Problem | str = Problem.OVERLOADED
    ) -> Behavior:
        """An error event after ``after_chunks`` chunks (Anthropic ``event: error``,
        OpenAI ``data: {"error": ...}``); HTTP 529 when not streamed."""
        return cls(
            kind=BehaviorKind.STREAM_ERROR, after_chunks=after_chunks, problem=problem, status=529
        )

    @classmethod
    def flapping(
        cls,
        failures: int = 3,
        *,
        seconds: float | None = None,
        failure: Behavior | None = None,
        then: Behavior | None = None,
    ) -> Behavior:
        """``failure`` (default HTTP 503) for the first ``failures`` model calls, or, with
        ``seconds``, for that long from the first call (on the server's clock); ``then``
        (default ``ok``) afterwards."""
        if failures < 0 or (seconds is not None and seconds < 0):
            raise ValueError("failures and seconds must not be negative")
        return cls(
            kind=BehaviorKind.FLAPPING,
            failures=failures,
            window=seconds,
            failure=failure if failure is not None else cls.error(503),
            then=then,
        )

    @classmethod
    def fails_once(cls, status: int = 500) -> Behavior:
        """HTTP ``status`` for the first model call, a normal answer afterwards."""
        return cls.flapping(1, failure=cls.error(status))

    @classmethod
    def rejects_prefill(cls, then: Behavior | None = None) -> Behavior:
        """HTTP 400 invalid_request_error ("does not support assistant message prefill")
        when the last message is an assistant message; ``then`` (default ``ok``)
        otherwise."""
        return cls(kind=BehaviorKind.REJECTS_PREFILL, then=then)

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


def ends_with_assistant(body: Any) -> bool:
    """Whether a chat/messages request body ends with an assistant message (prefill)."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        return False
    last = messages[-1]
    return isinstance(last, dict) and last.get("role") == "assistant"


def builtin_catalogue() -> dict[str, Behavior]:
    """The behaviours every fake server knows by name (header ``x-fake-behavior`` or model)."""
    return {
        "ok": Behavior.ok(),
        "error_429": Behavior.rate_limited(1),
        "error_429_date": Behavior.rate_limited(30, as_date=True),
        "error_429_no_retry_after": Behavior.rate_limited(None),
        "error_500": Behavior.error(500),
        "error_500_once": Behavior.fails_once(500),
        "error_503": Behavior.error(503),
        "error_529": Behavior.error(529),
        "connection_reset": Behavior.connection_reset(),
        "never_answer": Behavior.never_answer(),
        "slow_first_token": Behavior.slow_first_token(1.0),
        "cut_stream": Behavior.cut_stream(),
        "stream_stall": Behavior.stream_stall(),
        "stream_error": Behavior.stream_error(),
        "malformed_chunk": Behavior.malformed_chunk(),
        "missing_done": Behavior.missing_done(),
        "context_length": Behavior.context_length(),
        "content_filter": Behavior.content_filter(),
        "content_filter_error": Behavior.error(400, problem=Problem.CONTENT_FILTER),
        "rejects_prefill": Behavior.rejects_prefill(),
        "flapping": Behavior.flapping(3),
    }
