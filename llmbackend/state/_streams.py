"""Cached answers as streams, and streams as cacheable answers.

:func:`replay_stream` serves a cached ``LlmResponse`` to ``stream()``: the text in
``TextDelta`` chunks, each tool call as one ``ToolCallDelta``, then ``UsageEvent`` and
``FinishEvent``, just like a live stream that ended normally.

:class:`StreamAssembler` goes the other way: fed every event a stream yields, it gives the
finished ``LlmResponse`` to cache, or ``None`` when the stream never finished, so a cut or
stalled stream cannot be cached.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from attrs import define, field

from llmbackend.models import (
    FinishEvent,
    LlmResponse,
    StreamEvent,
    StreamRestarted,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageEvent,
)

__all__ = ["StreamAssembler", "replay_stream"]


async def replay_stream(
    response: LlmResponse, *, chunk_chars: int = 256
) -> AsyncGenerator[StreamEvent, None]:
    """``response`` as the events a live stream would have yielded."""
    text = response.content
    for start in range(0, len(text), max(chunk_chars, 1)):
        yield TextDelta(text=text[start : start + chunk_chars])
    for index, call in enumerate(response.tool_calls):
        yield ToolCallDelta(index=index, id=call.id, name=call.name, arguments_delta=call.arguments)
    yield UsageEvent(usage=response.usage)
    yield FinishEvent(
        reason=response.finish_reason,
        raw_reason=response.raw_finish_reason,
        backend=response.backend,
        model=response.model,
        cached=response.cached,
    )


@define
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(factory=list)


@define
class StreamAssembler:
    """Collects a stream's events into the answer they add up to."""

    _text: list[str] = field(factory=list, init=False)
    _calls: dict[int, _Call] = field(factory=dict, init=False)
    _usage: Usage | None = field(default=None, init=False)
    _finish: FinishEvent | None = field(default=None, init=False)

    def feed(self, event: StreamEvent) -> None:
        """Take the next event, in the order the stream yielded it."""
        if isinstance(event, TextDelta):
            self._text.append(event.text)
        elif isinstance(event, ToolCallDelta):
            call = self._calls.setdefault(event.index, _Call())
            call.id = event.id or call.id
            call.name = event.name or call.name
            call.arguments.append(event.arguments_delta)
        elif isinstance(event, UsageEvent):
            self._usage = event.usage
        elif isinstance(event, FinishEvent):
            self._finish = event
        elif isinstance(event, StreamRestarted):
            text = "".join(self._text)
            self._text = [text[: max(len(text) - event.discard_chars, 0)]]
            self._calls.clear()
            self._finish = None

    def response(self, *, duration_ms: float = 0.0) -> LlmResponse | None:
        """The finished answer, or ``None`` if no ``FinishEvent`` ended the stream."""
        finish = self._finish
        if finish is None:
            return None
        usage = self._usage or Usage()
        calls = [
            ToolCall(id=call.id, name=call.name, arguments="".join(call.arguments))
            for _, call in sorted(self._calls.items())
        ]
        return LlmResponse(
            content="".join(self._text),
            backend=finish.backend,
            model=finish.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            cached_prompt_tokens=usage.cached_prompt_tokens,
            finish_reason=finish.reason,
            raw_finish_reason=finish.raw_reason,
            duration_ms=duration_ms,
            tool_calls=calls,
            cached=finish.cached,
            cost_usd=0.0 if finish.cached else None,
        )
