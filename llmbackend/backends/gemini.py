"""The Google Gemini backend: the Gemini API (AI Studio) and Vertex AI.

* **AI Studio** (the default): ``https://generativelanguage.googleapis.com``, paths
  ``/v1beta/models/{model}:generateContent`` and the like, the API key in ``x-goog-api-key``.
* **Vertex AI** (when ``project_id`` is set): ``https://{location}-aiplatform.googleapis.com``
  (``location`` defaults to ``us-central1``; ``global`` uses ``aiplatform.googleapis.com``),
  paths ``/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:...``
  and ``Authorization: Bearer``: the token from the ``token_provider`` constructor keyword,
  else ``api_key``. An explicit ``base_url`` wins in both modes; ``api_version`` replaces
  the path's version (``v1beta`` / ``v1``).

Decisions worth knowing:

* System messages are hoisted into ``systemInstruction``; consecutive tool results become one
  ``user`` turn of ``functionResponse`` parts named after the call they answer.
* Function calls the API sends without an id get ``call_<index>``; such made-up ids are
  never sent back to the API (real ids are).
* A blocked prompt (``promptFeedback.blockReason``), or an answer stopped for safety before
  any content, raises :class:`ContentFilteredError` naming the reason and categories.
* Streams ask for ``alt=sse``; a server answering with the plain JSON-array stream
  (``application/json``) is read too. A stream is complete only when a chunk carried a
  ``finishReason`` and the body ended cleanly (for the array format: with its closing ``]``).
* A 429's wait comes from ``Retry-After`` or else the ``RetryInfo`` detail; a per-day quota
  is not retryable. An invalid key (HTTP 400 ``API_KEY_INVALID``) is an authentication error.
* Model listing is AI Studio only; Vertex checks availability with a free ``countTokens``.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, ClassVar

import aiohttp

from llmbackend._sse import iter_sse
from llmbackend.backends import _gemini_request as encode
from llmbackend.backends import _gemini_stream as streams
from llmbackend.backends import _gemini_wire as wire
from llmbackend.backends._http import HttpBackend, TokenProvider
from llmbackend.backends.base import Capability, StreamFrames
from llmbackend.errors import (
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
    ContextLengthExceededError,
    LlmBackendError,
    MalformedResponseError,
    RateLimitedError,
)
from llmbackend.models import (
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    LlmResponse,
    StreamEvent,
)

__all__ = ["GeminiBackend", "TokenProvider"]

_VERTEX_DEFAULT_LOCATION = "us-central1"
#: Vertex embeds one content per call; this many run at once for a multi-input request.
_VERTEX_EMBED_CONCURRENCY = 8
_MODELS_PAGE_SIZE = "1000"
_MAX_MODEL_PAGES = 50


class GeminiBackend(HttpBackend):
    """Chat, streaming, tools, embeddings and model listing for Gemini / Vertex AI."""

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

    @property
    def vertex(self) -> bool:
        """Whether this backend talks to Vertex AI (``project_id`` is set)."""
        return bool(self.config.project_id)

    @property
    def location(self) -> str:
        return self.config.location or _VERTEX_DEFAULT_LOCATION

    def supports(self, capability: Capability) -> bool:
        if capability is Capability.MODELS and self.vertex:
            return False  # Vertex has no list of the project's usable Gemini models
        return super().supports(capability)

    def base_url(self) -> str:
        if self.vertex and not self.config.base_url:
            if self.location == "global":
                return "https://aiplatform.googleapis.com"
            return f"https://{self.location}-aiplatform.googleapis.com"
        return super().base_url()

    def auth_headers(self) -> dict[str, str]:
        if self.vertex:
            # With a token provider, request_headers sends its token as the Bearer instead.
            token = self.config.api_key if self.token_provider is None else None
            return {"Authorization": f"Bearer {token}"} if token else {}
        return {"x-goog-api-key": self.config.api_key} if self.config.api_key else {}

    def model_path(self, model: str, method: str) -> str:
        """The API path of ``method`` (``generateContent``, ...) on ``model``."""
        model = model.removeprefix("models/")
        if self.vertex:
            version = self.config.api_version or "v1"
            return (
                f"{version}/projects/{self.config.project_id}/locations/{self.location}"
                f"/publishers/google/models/{model}:{method}"
            )
        return f"{self.config.api_version or 'v1beta'}/models/{model}:{method}"

    async def bearer_token(self) -> str | None:
        token = await super().bearer_token()
        return token if self.vertex else None  # AI Studio authenticates with its API key

    def token_provider_error(self, exc: Exception) -> Exception:
        if isinstance(exc, LlmBackendError):
            return exc
        return BackendUnavailableError(
            f"the Vertex AI token provider failed: {type(exc).__name__}", backend=self.name
        )

    def _classify_error(self, status: int, headers: Mapping[str, str], text: str) -> BackendError:
        error = super()._classify_error(status, headers, text)
        # Google's status name (PERMISSION_DENIED, ...) says more than the repeated number.
        code = wire.error_status(text) or error.code
        kwargs: dict[str, Any] = {"backend": self.name, "status": status, "code": code}
        lowered = error.message.lower()
        if status == 400 and (
            "API_KEY_INVALID" in wire.error_reasons(text) or "api key not valid" in lowered
        ):
            return AuthenticationError(error.message, **kwargs)
        if status == 400 and "token count" in lowered and "exceed" in lowered:
            return ContextLengthExceededError(error.message, **kwargs)
        if isinstance(error, RateLimitedError):
            waited = error.retry_after
            return RateLimitedError(
                error.message,
                retry_after=waited if waited is not None else wire.retry_delay(text),
                retryable=not wire.per_day_quota(text),
                **kwargs,
            )
        error.code = code
        return error

    # --- chat ---------------------------------------------------------------------------

    def chat_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of a ``generateContent`` call for ``request``."""
        return encode.encode_chat(request, self.resolve_parameters(request), self.name)

    async def _chat(self, request: ChatRequest) -> LlmResponse:
        model = self.resolve_model(request)
        answer = await self.request_json(
            "POST", self.model_path(model, "generateContent"), body=self.chat_body(request)
        )
        parsed = wire.parse_answer(answer, self.name)
        usage = parsed.usage
        return LlmResponse(
            content=parsed.text,
            backend=self.name,
            model=parsed.model or model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            cached_prompt_tokens=usage.cached_prompt_tokens,
            finish_reason=parsed.reason,
            raw_finish_reason=parsed.raw_reason,
            tool_calls=parsed.tool_calls,
        )

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        model = self.resolve_model(request)
        state = streams.StreamState(backend=self.name, model=model)
        path = self.model_path(model, "streamGenerateContent")
        body = self.chat_body(request)
        frames = StreamFrames(self._log)
        async with self.open_stream("POST", path, body=body, params={"alt": "sse"}) as response:
            async for chunk in self._chunks(response, frames):
                if "error" in chunk:
                    raise self._stream_error(chunk)
                for event in state.feed(chunk):
                    yield frames.passing(event)
        if state.raw_reason is None:
            return  # cut short: no FinishEvent, so the caller sees StreamInterruptedError
        yield frames.passing(state.finish())

    async def _chunks(
        self, response: aiohttp.ClientResponse, frames: StreamFrames
    ) -> AsyncIterator[dict[str, Any]]:
        """The ``GenerateContentResponse`` chunks, from SSE or from the JSON-array format.

        In SSE one bad frame after content is skipped (``frames``); a broken JSON array is
        structural and ends the stream."""
        if response.content_type != "application/json":
            async for event in iter_sse(response.content):
                chunk = frames.decode(
                    functools.partial(streams.decode_chunk, event.data, self.name)
                )
                if chunk is not None:
                    yield chunk
            return
        decoder = streams.JsonArrayDecoder(self.name)
        text = codecs.getincrementaldecoder("utf-8")()
        async for piece in response.content.iter_any():
            for item in decoder.feed(text.decode(piece)):
                if not isinstance(item, dict):
                    raise MalformedResponseError(
                        "a stream element is not an object", backend=self.name
                    )
                yield item
        decoder.feed(text.decode(b"", final=True))
        decoder.close()

    def _stream_error(self, chunk: Mapping[str, Any]) -> BackendError:
        """The SDK error for an ``{"error": ...}`` chunk sent after the 200 status line."""
        error = chunk["error"]
        code = error.get("code") if isinstance(error, dict) else None
        status = code if isinstance(code, int) and 400 <= code < 600 else 500
        return self.classify_error(status, {}, json.dumps({"error": error}))

    # --- embeddings, models, availability ---------------------------------------------------

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        model = self.resolve_model(request)
        if self.vertex or len(request.inputs) == 1:
            results = await self._embed_each(model, request)
            vectors = tuple(vector for vector, _ in results)
            tokens = sum(count for _, count in results)
        else:
            vectors = await self._embed_batch(model, request)
            tokens = 0
        return EmbeddingResponse(
            embeddings=vectors, backend=self.name, model=model, prompt_tokens=tokens
        )

    def _content_request(self, text: str, dimensions: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
        if dimensions is not None:
            body["outputDimensionality"] = dimensions
        return body

    async def _embed_each(
        self, model: str, request: EmbeddingRequest
    ) -> list[tuple[tuple[float, ...], int]]:
        """One ``embedContent`` call per input (Vertex has no batch call), a few at a time."""
        limit = asyncio.Semaphore(_VERTEX_EMBED_CONCURRENCY)
        path = self.model_path(model, "embedContent")

        async def one(text: str) -> tuple[tuple[float, ...], int]:
            async with limit:
                body = self._content_request(text, request.dimensions)
                answer = await self.request_json("POST", path, body=body)
            if not isinstance(answer, dict):
                raise MalformedResponseError(
                    "the embedContent answer is not an object", backend=self.name
                )
            usage = wire.parse_usage(answer.get("usageMetadata"))
            return wire.embedding_values(answer.get("embedding"), self.name), usage.prompt_tokens

        tasks = [asyncio.create_task(one(text)) for text in request.inputs]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            # On a failure (or cancellation) no sibling call outlives this one.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _embed_batch(
        self, model: str, request: EmbeddingRequest
    ) -> tuple[tuple[float, ...], ...]:
        name = f"models/{model.removeprefix('models/')}"
        body = {
            "requests": [
                {"model": name} | self._content_request(text, request.dimensions)
                for text in request.inputs
            ]
        }
        answer = await self.request_json(
            "POST", self.model_path(model, "batchEmbedContents"), body=body
        )
        embeddings = answer.get("embeddings") if isinstance(answer, dict) else None
        if not isinstance(embeddings, list) or len(embeddings) != len(request.inputs):
            raise MalformedResponseError(
                f"expected {len(request.inputs)} embeddings in the answer", backend=self.name
            )
        return tuple(wire.embedding_values(item, self.name) for item in embeddings)

    async def _list_models(self) -> list[str]:
        names: list[str] = []
        params = {"pageSize": _MODELS_PAGE_SIZE}
        path = f"{self.config.api_version or 'v1beta'}/models"
        for _ in range(_MAX_MODEL_PAGES):
            answer = await self.request_json("GET", path, params=params)
            models = answer.get("models") if isinstance(answer, dict) else None
            if not isinstance(models, list):
                raise MalformedResponseError(
                    "the model list has no models array", backend=self.name
                )
            names += [
                str(item["name"]).removeprefix("models/")
                for item in models
                if isinstance(item, dict) and "name" in item
            ]
            token = answer.get("nextPageToken")
            if not isinstance(token, str) or not token:
                break
            params = {"pageSize": _MODELS_PAGE_SIZE, "pageToken": token}
        return names

    async def _check_available(self) -> None:
        model = self.model
        if self.vertex:
            if not model:
                raise LlmBackendError(f"backend {self.name!r} has no model: set model_name")
            # countTokens is free and proves the token, the project and the model at once.
            body = {"contents": [{"role": "user", "parts": [{"text": "ping"}]}]}
            await self.request_json("POST", self.model_path(model, "countTokens"), body=body)
        elif model:
            version = self.config.api_version or "v1beta"
            await self.request_json("GET", f"{version}/models/{model.removeprefix('models/')}")
        else:
            await self._list_models()
