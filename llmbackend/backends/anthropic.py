"""The Anthropic Messages API backend (``POST /v1/messages``).

Decisions worth knowing:

* System messages, wherever they appear, become the top-level ``system`` field (joined with
  blank lines). Tool results become ``tool_result`` blocks of a user turn, and consecutive
  turns of one role are merged, because the API wants user and assistant to alternate.
* **Prefill.** When the conversation ends with an assistant message, it is sent as the final
  assistant turn and Anthropic *continues* it: the answer holds only the continuation. Stream
  continuation relies on this. The API rejects a final assistant turn that ends in
  whitespace, so a caller continuing a partial answer should strip trailing whitespace first.
* ``max_tokens`` is required by the API: it is always sent, 4096 when neither the request nor
  the config sets one. ``frequency_penalty`` and ``presence_penalty`` have no equivalent and
  are not sent. A ``response_format`` other than ``text`` raises ``NotSupportedError`` (the
  service then tries another backend): Anthropic has no JSON mode to honour it with.
* ``tool_choice`` takes the SDK's OpenAI-style values (``"auto"``, ``"required"`` -> ``any``,
  ``"none"``, ``{"type": "function", "function": {"name": ...}}`` -> ``{"type": "tool"}``);
  Anthropic-shaped values pass through. It is sent only together with tools.
* An answer that is only a refusal (``stop_reason: refusal``, no text, no tool calls) raises
  ``ContentFilteredError`` (``code="refusal"``); with text it finishes as ``content_filter``.
* ``prompt_tokens`` counts input, cache-read and cache-write tokens; cache reads are
  ``cached_prompt_tokens``.
* A stream is complete only after ``message_stop``. An ``event: error`` after the 200 status
  raises the error it names (``overloaded_error`` -> retryable ``BackendUnavailableError``).
* No embeddings: the capability is absent. The availability check is ``GET /v1/models?limit=1``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar

from llmbackend._sse import iter_sse
from llmbackend.backends import _anthropic_wire as wire
from llmbackend.backends._anthropic_stream import StreamState, decode_event
from llmbackend.backends._http import HttpBackend
from llmbackend.backends.base import Capability, StreamFrames
from llmbackend.errors import (
    BackendError,
    InvalidRequestError,
    MalformedResponseError,
    NotSupportedError,
    RateLimitedError,
)
from llmbackend.models import ChatRequest, LlmResponse, StreamEvent

__all__ = ["DEFAULT_ANTHROPIC_VERSION", "AnthropicBackend"]

#: The ``anthropic-version`` header sent when the config names none.
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
#: Models per page of ``GET /v1/models`` (the API's maximum).
_MODELS_PAGE = "1000"


class AnthropicBackend(HttpBackend):
    """Chat, streaming, tools and model listing over Anthropic's Messages API."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.CHAT,
            Capability.STREAMING,
            Capability.TOOLS,
            Capability.MODELS,
            # A final assistant turn is continued, which stream recovery relies on.
            Capability.PREFILL,
        }
    )
    default_model: ClassVar[str | None] = None

    # --- HTTP plumbing ------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self.config.anthropic_version or DEFAULT_ANTHROPIC_VERSION}
        if self.config.api_key:
            headers["x-api-key"] = self.config.api_key
        return headers

    def api_path(self, name: str) -> str:
        """``v1/<name>``, unless the configured base URL already ends in ``/v1``."""
        return name if self.base_url().endswith("/v1") else f"v1/{name}"

    def _classify_error(self, status: int, headers: Mapping[str, str], text: str) -> BackendError:
        error = super()._classify_error(status, headers, text)
        if error.code == "request_too_large" or status == 413:
            return InvalidRequestError(
                error.message, backend=self.name, status=status, code=error.code
            )
        if isinstance(error, RateLimitedError) and "enforced_spend_limit_reached" in text:
            # The monthly spend limit is a 429 too, but waiting does not help.
            error.retryable = False
        return error

    def _stream_error(self, event: Mapping[str, Any]) -> BackendError:
        """The SDK error for an ``event: error`` sent after the 200 status line."""
        error = event.get("error")
        kind = error.get("type") if isinstance(error, Mapping) else None
        status = wire.ERROR_STATUS.get(kind, 500) if isinstance(kind, str) else 500
        return self.classify_error(status, {}, json.dumps(dict(event)))

    # --- chat ---------------------------------------------------------------------------

    def messages_body(self, request: ChatRequest, *, stream: bool = False) -> dict[str, Any]:
        """The JSON body of a ``/v1/messages`` call for ``request``."""
        response_format = request.response_format
        if response_format is not None and response_format.get("type", "text") != "text":
            raise NotSupportedError(self.name, "response_format")
        return wire.encode_request(
            request,
            self.resolve_model(request),
            self.resolve_parameters(request),
            self.name,
            stream=stream,
        )

    async def _chat(self, request: ChatRequest) -> LlmResponse:
        body = self.messages_body(request)
        answer = await self.request_json("POST", self.api_path("messages"), body=body)
        content, model, tool_calls, raw_reason, usage = wire.parse_message(answer, self.name)
        return LlmResponse(
            content=content,
            backend=self.name,
            model=model or body["model"],
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            cached_prompt_tokens=usage.cached_prompt_tokens,
            finish_reason=wire.finish_reason(raw_reason),
            raw_finish_reason=raw_reason,
            tool_calls=tool_calls,
        )

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        body = self.messages_body(request, stream=True)
        state = StreamState(backend=self.name, model=body["model"])
        frames = StreamFrames(self._log)
        async with self.open_stream("POST", self.api_path("messages"), body=body) as response:
            async for sse in iter_sse(response.content):
                event = frames.decode(functools.partial(decode_event, sse.data, self.name))
                if event is None:
                    continue  # one bad frame after content: skipped and counted
                kind = event.get("type") or sse.event
                if kind == "error":
                    raise self._stream_error(event)
                for item in state.feed(str(kind), event):
                    yield frames.passing(item)
                if state.finished:
                    return
        # The body ended before message_stop: no FinishEvent, so the caller sees the cut.

    # --- models -------------------------------------------------------------------------

    async def _list_models(self) -> list[str]:
        ids: list[str] = []
        after: str | None = None
        while True:
            params = {"limit": _MODELS_PAGE} | ({"after_id": after} if after else {})
            answer = await self.request_json("GET", self.api_path("models"), params=params)
            data = answer.get("data") if isinstance(answer, dict) else None
            if not isinstance(data, list):
                raise MalformedResponseError("the model list has no data array", backend=self.name)
            ids += [str(item["id"]) for item in data if isinstance(item, dict) and "id" in item]
            last = answer.get("last_id")
            if not answer.get("has_more") or not isinstance(last, str) or last == after:
                return ids
            after = last

    async def _check_available(self) -> None:
        # One model is enough to prove that the API answers and accepts the key.
        await self.request_json("GET", self.api_path("models"), params={"limit": "1"})
