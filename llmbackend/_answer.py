"""``Answer`` and the streams that end in one.

:class:`Answer` is the answer text as a ``str`` subclass, so ``print``, ``==``, ``len``,
f-strings, ``json.dumps`` and string methods see exactly the text; who answered and what it
cost are properties. Equality and hashing are the text's: two answers with the same text
from different backends are equal.

:class:`AnswerStream` iterates a streamed answer (text chunks, or the raw events through
:meth:`AnswerStream.events`) and afterwards holds the :class:`Answer` the events add up to.
:class:`SyncAnswerStream` is its plain-iterator twin for the sync forms: one task on the
background loop reads the stream and hands items over through a thread-safe queue, so the
stream (and the contexts its async generators entered) stays in one task from start to end.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future
from typing import Any, Generic, Self, TypeVar

import attrs

from llmbackend._default_service import (
    CLOSE_TIMEOUT_SECONDS,
    background_loop,
    refuse_inside_loop,
    service_for,
)
from llmbackend.errors import ConfigurationError, LlmBackendError, StreamInterruptedError
from llmbackend.models import (
    ChatRequest,
    FinishReason,
    LlmResponse,
    StreamEvent,
    TextDelta,
    ToolCall,
)
from llmbackend.service import LlmService
from llmbackend.state import StreamAssembler

__all__ = ["Answer", "AnswerStream", "SyncAnswerStream", "event_stream", "text_stream"]

T = TypeVar("T")


class Answer(str):
    """The answer text, with the full :class:`~llmbackend.LlmResponse` in ``.response``.

    >>> answer = Answer(LlmResponse(content="4", backend="local", model="m"))
    >>> answer == "4", f"{answer}!", answer.backend
    (True, '4!', 'local')
    """

    # A str subclass cannot have non-empty __slots__, so the response lives in __dict__.
    _response: LlmResponse

    def __new__(cls, response: LlmResponse) -> Self:
        if not isinstance(response, LlmResponse):
            raise TypeError(f"Answer wraps an LlmResponse, not {type(response).__name__}")
        answer = super().__new__(cls, response.content)
        answer._response = response
        return answer

    def __reduce__(self) -> tuple[Any, ...]:
        # str's own pickling would call Answer(text) and lose the response.
        return (type(self), (self._response,))

    def __repr__(self) -> str:
        text = str.__repr__(self)
        return f"Answer({text}, backend={self.backend!r}, model={self.model!r})"

    @property
    def response(self) -> LlmResponse:
        """Everything the service returned (alternatives, raw finish reason, ...)."""
        return self._response

    @property
    def text(self) -> str:
        """The answer as a plain ``str`` (no metadata)."""
        return self._response.content

    @property
    def backend(self) -> str:
        """The backend that answered."""
        return self._response.backend

    @property
    def model(self) -> str:
        """The model that answered, as the provider named it."""
        return self._response.model

    @property
    def prompt_tokens(self) -> int:
        return self._response.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self._response.completion_tokens

    @property
    def total_tokens(self) -> int:
        return self._response.total_tokens

    @property
    def cost_usd(self) -> float | None:
        """``None`` when the backend has no prices configured (unknown, not free)."""
        return self._response.cost_usd

    @property
    def duration_ms(self) -> float:
        return self._response.duration_ms

    @property
    def finish_reason(self) -> FinishReason | None:
        return self._response.finish_reason

    @property
    def cached(self) -> bool:
        """Whether the service's response cache served this answer."""
        return self._response.cached

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """Functions the model asked to call (then the text is often empty)."""
        return self._response.tool_calls


# --- streams -----------------------------------------------------------------------------


class _StreamCore:
    """One streamed call: starts it on first read, folds its events, builds the Answer."""

    def __init__(
        self,
        request: ChatRequest,
        service: LlmService | None,
        on_answer: Callable[[Answer], None] | None,
    ) -> None:
        self.request = request
        self._service = service
        self._on_answer = on_answer
        self._events: AsyncGenerator[StreamEvent, None] | None = None
        self._assembler = StreamAssembler()
        self._started_at = 0.0
        #: The facade reading this stream (one reader only: the text or the events).
        self.reader: object | None = None
        self.finished = False
        self.answer: Answer | None = None

    async def next_event(self) -> StreamEvent | None:
        """The next event, or ``None`` once the stream has ended (the answer is ready)."""
        if self.finished:
            return None
        try:
            if self._events is None:
                service = await service_for(self.request, self._service)
                self._service = service
                self._started_at = time.perf_counter()
                self._events = service.stream(self.request)
            event = await anext(self._events, None)
        except BaseException:
            self.finished = True
            raise
        if event is None:
            self.finished = True
            self._complete()
            return None
        self._assembler.feed(event)
        return event

    def _complete(self) -> None:
        elapsed_ms = (time.perf_counter() - self._started_at) * 1000.0
        response = self._assembler.response(duration_ms=elapsed_ms)
        if response is None:  # the service never ends a stream like this; never pass it on
            raise StreamInterruptedError("the stream ended without finishing")
        if not response.cached:
            response = attrs.evolve(response, cost_usd=self._cost(response))
        answer = Answer(response)
        self.answer = answer
        if self._on_answer is not None:
            self._on_answer(answer)

    def _cost(self, response: LlmResponse) -> float | None:
        # Stream events carry usage but no price: the backend that answered knows its prices.
        assert self._service is not None
        try:
            backend = self._service.backend(response.backend)
        except ConfigurationError:
            return None
        return backend.cost_of(response.usage)

    async def aclose(self) -> None:
        self.finished = True
        events, self._events = self._events, None
        if events is not None:
            await events.aclose()


def _text(event: StreamEvent) -> str | None:
    return (event.text or None) if isinstance(event, TextDelta) else None


def _event(event: StreamEvent) -> StreamEvent:
    return event


class AnswerStream(Generic[T]):
    """A streamed answer: ``async for`` gives text chunks (``str``) or, from
    :meth:`events`, the raw :data:`~llmbackend.StreamEvent` values; afterwards
    :attr:`answer` is the whole :class:`Answer` with its metadata.

    The call starts on the first read. Leaving early? Use ``async with`` (or
    :meth:`aclose`) so the request is cancelled at once, not when garbage is collected.

    With ``stream_recovery = "restart"`` a stream that breaks mid-answer starts its text
    again from the next backend: the text chunks simply carry on, so read :meth:`events`
    and honour ``StreamRestarted.discard_chars`` to erase what you showed. :attr:`answer`
    always holds the final text only.
    """

    def __init__(self, core: _StreamCore, pick: Callable[[StreamEvent], T | None]) -> None:
        self._core = core
        self._pick = pick

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        core = self._core
        if core.reader is None:
            core.reader = self
        elif core.reader is not self:
            raise RuntimeError("this stream is already being read through another iterator")
        while (event := await core.next_event()) is not None:
            item = self._pick(event)
            if item is not None:
                return item
        raise StopAsyncIteration

    def events(self) -> AnswerStream[StreamEvent]:
        """The same stream as raw events (``TextDelta``, ``ToolCallDelta``, ``UsageEvent``,
        ``StreamRestarted``, ``FinishEvent``); call it before reading anything."""
        if self._core.reader is not None:
            raise RuntimeError("events() must be called before the stream is read")
        return AnswerStream(self._core, _event)

    @property
    def finished(self) -> bool:
        """Whether the stream has ended (completed, failed or closed)."""
        return self._core.finished

    @property
    def answer(self) -> Answer:
        """The whole answer; ``RuntimeError`` until the stream has completed normally."""
        answer = self._core.answer
        if answer is None:
            state = "did not complete" if self._core.finished else "has not been read to its end"
            raise RuntimeError(f"no answer: the stream {state}")
        return answer

    async def aclose(self) -> None:
        """Stop reading: the request is cancelled and nothing is kept. Idempotent."""
        await self._core.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def text_stream(
    request: ChatRequest,
    service: LlmService | None,
    on_answer: Callable[[Answer], None] | None = None,
) -> AnswerStream[str]:
    """An :class:`AnswerStream` of text chunks for ``request``."""
    return AnswerStream(_StreamCore(request, service, on_answer), _text)


def event_stream(
    request: ChatRequest,
    service: LlmService | None,
    on_answer: Callable[[Answer], None] | None = None,
) -> AnswerStream[StreamEvent]:
    """An :class:`AnswerStream` of raw events for ``request``."""
    return AnswerStream(_StreamCore(request, service, on_answer), _event)


_Item = tuple[str, Any]


async def _pump(
    stream: AnswerStream[Any], items: queue.SimpleQueue[_Item], pumped: threading.Event
) -> None:
    """Read ``stream`` on the background loop, handing each item to the reading thread."""
    try:
        async for item in stream:
            items.put(("item", item))
        items.put(("end", None))
    except Exception as exc:  # noqa: BLE001  # handed to the reading thread, raised there
        items.put(("error", exc))
    except BaseException:
        # Cancelled (close(), or the background loop shutting down): wake the reader.
        items.put(("error", LlmBackendError("the stream was closed before it finished")))
        raise
    finally:
        try:
            await stream.aclose()
        finally:
            pumped.set()


class SyncAnswerStream(Generic[T]):
    """A streamed answer for plain (non-async) code: ``for chunk in ...`` gives what the
    wrapped :class:`AnswerStream` gives, read on the quick API's background loop.

    ``close()`` (or leaving a ``with`` block) cancels the request and waits for it to stop;
    dropping the iterator (``break`` out of a ``for`` loop) cancels it too. :attr:`answer`
    and :meth:`events` work as on :class:`AnswerStream`.
    """

    def __init__(self, stream: AnswerStream[T], *, call: str, instead: str) -> None:
        self._stream = stream
        self._call = call
        self._instead = instead
        self._items: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._pump: Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pumped = threading.Event()
        self._ended = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        if self._ended:
            raise StopIteration
        if self._pump is None:
            refuse_inside_loop(self._call, self._instead)
            self._loop = background_loop()
            # The pump must not hold self: dropping the iterator has to reach __del__.
            pump = _pump(self._stream, self._items, self._pumped)
            self._pump = asyncio.run_coroutine_threadsafe(pump, self._loop)
        try:
            kind, value = self._items.get()
        except BaseException:  # Ctrl-C while waiting: stop the request too
            self.close()
            raise
        if kind == "item":
            item: T = value
            return item
        self._ended = True
        if kind == "end":
            raise StopIteration
        raise value

    def events(self) -> SyncAnswerStream[StreamEvent]:
        """The same stream as raw events; call it before reading anything."""
        if self._pump is not None:
            raise RuntimeError("events() must be called before the stream is read")
        return SyncAnswerStream(self._stream.events(), call=self._call, instead=self._instead)

    @property
    def answer(self) -> Answer:
        """The whole answer; ``RuntimeError`` until the stream has completed normally."""
        return self._stream.answer

    def close(self) -> None:
        """Cancel the request if it is still running and wait (briefly) until it stopped."""
        self._ended = True
        pump = self._pump
        if pump is not None and not self._pumped.is_set():
            pump.cancel()
            self._pumped.wait(CLOSE_TIMEOUT_SECONDS)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A dropped iterator (``break`` out of a for loop) must not keep a request running;
        # cancel without waiting: a finaliser must not block.
        pump, loop = getattr(self, "_pump", None), getattr(self, "_loop", None)
        if pump is not None and loop is not None and not pump.done() and not loop.is_closed():
            pump.cancel()
