"""The Cohere backend: the v2 chat and embed APIs (``https://api.cohere.com``).

Decisions worth knowing:

* Only API v2 is spoken. The legacy v1 chat stream (NDJSON ``text-generation`` /
  ``stream-end`` objects) is not parsed: v1 chat is deprecated, and a v1 body reaching the
  v2 SSE parser carries no ``message-end``, so it is never mistaken for a finished answer.
* A stream is complete only at ``message-end`` (which carries the finish reason and usage);
  the ``data: [DONE]`` after it is not needed. ``tool-plan-delta`` is not answer text.
* An assistant turn's text beside tool calls is sent as ``tool_plan``; a ``tool_choice``
  naming one function becomes ``REQUIRED`` over the tool list narrowed to that function.
* ``ERROR_TOXIC`` with no content raises :class:`ContentFilteredError`.
* Embeddings use ``input_type="search_document"`` unless the request's metadata names
  another ``input_type`` (``search_query`` for queries); inputs go 96 per call.
* HTTP 498 (Cohere's invalid-token status) is an authentication error.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar

from llmbackend._sse import iter_sse
from llmbackend.backends import _cohere_wire as wire
from llmbackend.backends._http import HttpBackend
from llmbackend.backends.base import Capability, StreamFrames
from llmbackend.errors import AuthenticationError, BackendError, MalformedResponseError
from llmbackend.models import (
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    LlmResponse,
    StreamEvent,
)

__all__ = ["CohereBackend"]

_DONE = "[DONE]"
#: The most texts one ``/v2/embed`` call accepts.
_EMBED_BATCH = 96
_DEFAULT_INPUT_TYPE = "search_document"
_MODELS_PAGE_SIZE = "1000"
_MAX_MODEL_PAGES = 50


class CohereBackend(HttpBackend):
    """Chat, streaming, tools, embeddings and model listing over Cohere's v2 API."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.CHAT,
            Capability.STREAMING,
            Capability.TOOLS,
            Capability.EMBEDDINGS,
            Capability.MODELS,
        }
    )

    # --- HTTP plumbing ------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        api_key = self.config.api_key
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _classify_error(self, status: int, headers: Mapping[str, str], text: str) -> BackendError:
        error = super()._classify_error(status, headers, text)
        if status == 498:
            return AuthenticationError(error.message, backend=self.name, status=status)
        return error

    # --- chat ---------------------------------------------------------------------------

    def chat_body(self, request: ChatRequest, *, stream: bool = False) -> dict[str, Any]:
        """The JSON body of a ``POST /v2/chat`` call for ``request``."""
        return wire.encode_chat(
            request, self.resolve_model(request), self.resolve_parameters(request), stream=stream
        )

    async def _chat(self, request: ChatRequest) -> LlmResponse:
        body = self.chat_body(request)
        answer = wire.parse_answer(await self.request_json("POST", "v2/chat", body=body), self.name)
        usage = answer.usage
        return LlmResponse(
            content=answer.text,
            backend=self.name,
            # The v2 answer does not name the model; it is the one asked for.
            model=body["model"],
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            cached_prompt_tokens=usage.cached_prompt_tokens,
            finish_reason=wire.finish_reason(answer.raw_reason),
            raw_finish_reason=answer.raw_reason,
            tool_calls=answer.tool_calls,
        )

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        body = self.chat_body(request, stream=True)
        state = wire.StreamState(backend=self.name, model=body["model"])
        frames = StreamFrames(self._log)
        async with self.open_stream("POST", "v2/chat", body=body) as response:
            async for event in iter_sse(response.content):
                if event.data.strip() == _DONE:
                    break
                decoded = frames.decode(functools.partial(wire.decode_event, event.data, self.name))
                if decoded is None:
                    continue
                for item in state.feed(decoded):
                    yield frames.passing(item)
                if state.finished:
                    break  # message-end is the last event that matters
        if not state.finished:
            return  # cut short: no FinishEvent, so the caller sees StreamInterruptedError
        yield frames.passing(state.finish())

    # --- embeddings, models, availability ---------------------------------------------------

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        model = self.resolve_model(request)
        input_type = request.metadata.get("input_type")
        if not isinstance(input_type, str) or not input_type:
            input_type = _DEFAULT_INPUT_TYPE
        vectors: list[tuple[float, ...]] = []
        tokens = 0
        inputs = list(request.inputs)
        for start in range(0, len(inputs), _EMBED_BATCH):
            texts = inputs[start : start + _EMBED_BATCH]
            body: dict[str, Any] = {
                "model": model,
                "texts": texts,
                "input_type": input_type,
                "embedding_types": ["float"],
            }
            if request.dimensions is not None:
                body["output_dimension"] = request.dimensions
            answer = await self.request_json("POST", "v2/embed", body=body)
            vectors += self._vectors(answer, len(texts))
            meta = answer.get("meta") if isinstance(answer, dict) else None
            billed = meta.get("billed_units") if isinstance(meta, dict) else None
            if isinstance(billed, dict) and isinstance(billed.get("input_tokens"), int):
                tokens += billed["input_tokens"]
        return EmbeddingResponse(
            embeddings=tuple(vectors), backend=self.name, model=model, prompt_tokens=tokens
        )

    def _vectors(self, answer: Any, expected: int) -> list[tuple[float, ...]]:
        embeddings = answer.get("embeddings") if isinstance(answer, dict) else None
        floats = embeddings.get("float") if isinstance(embeddings, dict) else None
        if not isinstance(floats, list) or len(floats) != expected:
            raise MalformedResponseError(
                f"expected {expected} vectors in the answer's embeddings.float", backend=self.name
            )
        vectors: list[tuple[float, ...]] = []
        for vector in floats:
            if not isinstance(vector, list) or not all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in vector
            ):
                raise MalformedResponseError(
                    "an embedding is not a list of numbers", backend=self.name
                )
            vectors.append(tuple(float(x) for x in vector))
        return vectors

    async def _list_models(self) -> list[str]:
        names: list[str] = []
        params = {"page_size": _MODELS_PAGE_SIZE}
        for _ in range(_MAX_MODEL_PAGES):
            answer = await self.request_json("GET", "v1/models", params=params)
            models = answer.get("models") if isinstance(answer, dict) else None
            if not isinstance(models, list):
                raise MalformedResponseError(
                    "the model list has no models array", backend=self.name
                )
            names += [
                str(item["name"]) for item in models if isinstance(item, dict) and "name" in item
            ]
            token = answer.get("next_page_token")
            if not isinstance(token, str) or not token:
                break
            params = {"page_size": _MODELS_PAGE_SIZE, "page_token": token}
        return names

    async def _check_available(self) -> None:
        # One model's details prove the key and that the configured model exists.
        if self.model:
            await self.request_json("GET", f"v1/models/{self.model}")
        else:
            await self.request_json("GET", "v1/models", params={"page_size": "1"})
