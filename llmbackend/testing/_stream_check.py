"""Folding a stream into the answer it adds up to, checking the stream contract on the way."""

from __future__ import annotations

from collections.abc import Sequence

from llmbackend.models import FinishEvent, LlmResponse, StreamEvent
from llmbackend.state import StreamAssembler

__all__ = ["fold_stream"]


def fold_stream(events: Sequence[StreamEvent]) -> LlmResponse:
    """The answer ``events`` add up to (text, tool calls joined by index, usage, finish).

    Asserts the stream contract a caller relies on: exactly one ``FinishEvent``, and it is
    the last event.
    """
    finishes = [event for event in events if isinstance(event, FinishEvent)]
    assert len(finishes) == 1, f"exactly one FinishEvent expected, got {len(finishes)}"
    assert events[-1] is finishes[0], "the FinishEvent must come last"
    assembler = StreamAssembler()
    for event in events:
        assembler.feed(event)
    response = assembler.response()
    assert response is not None
    return response
