"""Anthropic Messages streams: SSE event payloads in, SDK stream events out.

The stream is complete only at ``message_stop``; ``ping`` and unknown event types (the API
may add some) are ignored. Tool calls are numbered by their ordinal among the message's
tool_use blocks, which is the ``ToolCallDelta.index``; id and name come on the first fragment.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from llmbackend.backends._anthropic_wire import as_dict, finish_reason, parse_usage, refusal_error
from llmbackend.errors import MalformedResponseError
from llmbackend.models import (
    FinishEvent,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    UsageEvent,
)

__all__ = ["StreamState", "decode_event"]


def _malformed(backend: str, what: str) -> MalformedResponseError:
    return MalformedResponseError(what, backend=backend)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def decode_event(data: str, backend: str) -> dict[str, Any]:
    """One SSE ``data:`` payload as a JSON object."""
    try:
        event = json.loads(data)
    except ValueError as exc:
        raise _malformed(backend, f"malformed stream event (not JSON): {data[:80]!r}") from exc
    if not isinstance(event, dict):
        raise _malformed(backend, f"malformed stream event (not a JSON object): {data[:80]!r}")
    return event


@attrs.define
class _Block:
    #: ``text``, ``tool_use`` or another type whose deltas are not part of the answer.
    kind: str
    #: For tool_use: the tool-call ordinal (the ``ToolCallDelta.index``).
    ordinal: int = 0
    #: For tool_use: the input given at block start, and whether JSON fragments followed.
    start_input: Any = None
    got_json: bool = False


@attrs.define
class StreamState:
    """What one streamed message has said so far; turns events into SDK stream events."""

    backend: str
    #: The requested model until ``message_start`` names the one that answered.
    model: str
    raw_reason: str | None = None
    finished: bool = False
    answered: bool = False
    _usage: dict[str, Any] = attrs.field(factory=dict)
    _blocks: dict[int, _Block] = attrs.field(factory=dict)
    _tool_calls: int = 0

    def feed(self, kind: str, event: Mapping[str, Any]) -> list[StreamEvent]:
        """The SDK events of one decoded stream event (``error`` events are not fed here)."""
        handler = _HANDLERS.get(kind)
        events = handler(self, event) if handler is not None else []  # ping, future types
        self.answered = self.answered or any(
            isinstance(e, TextDelta | ToolCallDelta) for e in events
        )
        return events

    def _message_start(self, event: Mapping[str, Any]) -> list[StreamEvent]:
        message = as_dict(event.get("message"), self.backend, "message_start.message")
        if model := _str(message.get("model")):
            self.model = model
        return self._add_usage(message.get("usage"))

    def _block_start(self, event: Mapping[str, Any]) -> list[StreamEvent]:
        index = self._index(event)
        block = as_dict(event.get("content_block"), self.backend, "content_block")
        kind = block.get("type")
        if kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise _malformed(self.backend, "a tool_use block start lacks its id or name")
            self._blocks[index] = _Block("tool_use", self._tool_calls, block.get("input"))
            self._tool_calls += 1
            return [ToolCallDelta(index=self._blocks[index].ordinal, id=call_id, name=name)]
        self._blocks[index] = _Block(kind if isinstance(kind, str) else "unknown")
        text = block.get("text") if kind == "text" else None
        return [TextDelta(text=text)] if isinstance(text, str) and text else []

    def _block_delta(self, event: Mapping[str, Any]) -> list[StreamEvent]:
        block = self._started(event)
        delta = as_dict(event.get("delta"), self.backend, "content_block_delta.delta")
        kind = delta.get("type")
        if kind == "text_delta" and block.kind == "text":
            text = delta.get("text")
            if not isinstance(text, str):
                raise _malformed(self.backend, "a text_delta has no text")
            return [TextDelta(text=text)] if text else []
        if kind == "input_json_delta" and block.kind == "tool_use":
            fragment = delta.get("partial_json")
            if not isinstance(fragment, str):
                raise _malformed(self.backend, "an input_json_delta has no partial_json")
            if not fragment:
                return []
            block.got_json = True
            return [ToolCallDelta(index=block.ordinal, arguments_delta=fragment)]
        return []  # thinking / signature / citations deltas are not answer text

    def _block_stop(self, event: Mapping[str, Any]) -> list[StreamEvent]:
        block = self._started(event)
        if block.kind == "tool_use" and not block.got_json:
            # No fragments (a tool without parameters): the input is what the start gave,
            # so the assembled arguments are JSON text as in a non-streamed answer.
            arguments = json.dumps(block.start_input if block.start_input is not None else {})
            return [ToolCallDelta(index=block.ordinal, arguments_delta=arguments)]
        return []

    def _message_delta(self, event: Mapping[str, Any]) -> list[StreamEvent]:
        delta = event.get("delta")
        if isinstance(delta, Mapping) and (reason := _str(delta.get("stop_reason"))):
            self.raw_reason = reason
        return self._add_usage(event.get("usage"))

    def _message_stop(self, _event: Mapping[str, Any]) -> list[StreamEvent]:
        if self.raw_reason == "refusal" and not self.answered:
            raise refusal_error(self.backend)
        self.finished = True
        return [
            FinishEvent(
                reason=finish_reason(self.raw_reason),
                raw_reason=self.raw_reason,
                backend=self.backend,
                model=self.model,
            )
        ]

    def _add_usage(self, raw: Any) -> list[StreamEvent]:
        if not isinstance(raw, Mapping):
            return []
        # message_delta carries cumulative counts: later values replace earlier ones.
        self._usage.update({k: v for k, v in raw.items() if v is not None})
        return [UsageEvent(usage=parse_usage(self._usage))]

    def _index(self, event: Mapping[str, Any]) -> int:
        index = event.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise _malformed(self.backend, f"a {event.get('type')} event has no block index")
        return index

    def _started(self, event: Mapping[str, Any]) -> _Block:
        index = self._index(event)
        if index not in self._blocks:
            raise _malformed(self.backend, f"a {event.get('type')} for block {index} never started")
        return self._blocks[index]


_HANDLERS: Mapping[str, Callable[[StreamState, Mapping[str, Any]], list[StreamEvent]]] = {
    "message_start": StreamState._message_start,
    "content_block_start": StreamState._block_start,
    "content_block_delta": StreamState._block_delta,
    "content_block_stop": StreamState._block_stop,
    "message_delta": StreamState._message_delta,
    "message_stop": StreamState._message_stop,
}
