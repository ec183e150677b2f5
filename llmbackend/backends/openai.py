"""The OpenAI chat-completions backend, also used for OpenAI-compatible servers.

One wire format serves ``openai``, ``openai_compatible``, ``lmstudio`` and ``llamacpp``.
llama.cpp's default base URL is the server root, so its API paths get a ``v1/`` prefix and
its availability check is ``GET /health``.

Decisions worth knowing:

* A refusal (an assistant ``refusal`` with no content and no tool calls) raises
  :class:`ContentFilteredError` with ``code="refusal"`` carrying the refusal text: an empty
  answer would be indistinguishable from a real one, and errors are never cached.
* A stream is complete after ``data: [DONE]``, or when the body ends cleanly after a
  ``finish_reason`` was seen (some compatible servers never send ``[DONE]``). A body that ends
  without either yields no ``FinishEvent``, so the base raises ``StreamInterruptedError``.
* A legacy ``function_call`` answer becomes a :class:`ToolCall` with ``id=""`` (that API
  names no call id) and finish reason ``tool_calls``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar

from llmbackend._sse import iter_sse
from llmbackend.backends import _openai_wire as wire
from llmbackend.backends._http import HttpBackend
from llmbackend.backends.base import Capability, StreamFrames
from llmbackend.errors import BackendError, MalformedResponseError, RateLimitedError
from llmbackend.models import (
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    LlmResponse,
    StreamEvent,
)

__all__ = ["OPENAI_BACKEND_TYPES", "OpenAIBackend"]

#: The backend types that speak the OpenAI chat-completions wire format.
OPENAI_BACKEND_TYPES: tuple[str, ...] = ("openai", "openai_compatible", "lmstudio", "llamacpp")

_DONE = "[DONE]"
#: Mid-stream error types/codes that carry no HTTP status, mapped to the status they mean.
_STREAM_ERROR_STATUS: Mapping[str, int] = {
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "model_not_found": 404,
    "rate_limit_exceeded": 429,
    "rate_limit_error": 429,
    "insufficient_quota": 429,
    "timeout": 408,
}


class OpenAIBackend(HttpBackend):
    """Chat, streaming, tools, embeddings and model listing over ``/v1/chat/completions``."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.CHAT,
            Capability.STREAMING,
            Capability.TOOLS,
            Capability.EMBEDDINGS,
            Capability.MODELS,
        }
    )
    default_model: ClassVar[str | None] = None
    #: API path prefix per backend type whose default base URL is the server root.
    path_prefixes: ClassVar[Mapping[str, str]] = {"llamacpp": "v1"}
    #: Per-type availability endpoint, relative to the server root (default: list models).
    health_paths: ClassVar[Mapping[str, str]] = {"llamacpp": "health"}

    # --- HTTP plumbing ------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        if self.config.organization_id:
            headers["OpenAI-Organization"] = self.config.organization_id
        return headers

    def url(self, path: str) -> str:
        # Absolute URLs pass through: llama.cpp's /health lives outside the API prefix.
        if path.startswith(("http://", "https://")):
            return path
        return super().url(path)

    def api_path(self, path: str) -> str:
        """``path`` under this backend type's API prefix (``v1/`` for llama.cpp's root URL)."""
        prefix = self.path_prefixes.get(self.backend_type)
        if prefix and not self.base_url().endswith(f"/{prefix}"):
            return f"{prefix}/{path}"
        return path

    def _classify_error(self, status: int, headers: Mapping[str, str], text: str) -> BackendError:
        error = super()._classify_error(status, headers, text)
        if isinstance(error, RateLimitedError) and error.code == "insufficient_quota":
            # Out of credit is a 429 too, but waiting does not help.
            error.retryable = False
        return error

    # --- chat ---------------------------------------------------------------------------

    def chat_body(self, request: ChatRequest, *, stream: bool = False) -> dict[str, Any]:
        """The JSON body of a ``chat/completions`` call for ``request``."""
        body = wire.encode_chat(
            request, self.resolve_model(request), self.resolve_parameters(request)
        )
        if self.backend_type == "openai" and "max_tokens" in body:
            # OpenAI deprecated max_tokens (reasoning models reject it); compatible servers
            # (vLLM, llama.cpp, LM Studio...) still expect max_tokens.
            body["max_completion_tokens"] = body.pop("max_tokens")
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def chat_completion(self, body: Mapping[str, Any]) -> Any:
        """The decoded answer of a non-streamed ``chat/completions`` call."""
        return await self.request_json("POST", self.api_path("chat/completions"), body=body)

    async def _chat(self, request: ChatRequest) -> LlmResponse:
        body = self.chat_body(request)
        answer = await self.chat_completion(body)
        content, model, tool_calls, raw_reason, usage = wire.parse_chat_answer(answer, self.name)
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
        body = self.chat_body(request, stream=True)
        state = wire.StreamState(backend=self.name, model=body["model"])
        frames = StreamFrames(self._log)
        done = False
        async with self.open_stream("POST", self.api_path("chat/completions"), body=body) as resp:
            async for event in iter_sse(resp.content):
                if event.data.strip() == _DONE:
                    done = True
                    break
                chunk = frames.decode(functools.partial(wire.decode_chunk, event.data, self.name))
                if chunk is None:
                    continue  # one bad frame after content: skipped and counted
                if event.event == "error" or chunk.get("error") is not None:
                    raise self._stream_error(chunk.get("error", chunk))
                for item in state.feed(chunk):
                    yield frames.passing(item)
        if not done and state.raw_reason is None:
            return  # cut short: no FinishEvent, so the caller sees StreamInterruptedError
        yield frames.passing(state.finish())

    def _stream_error(self, error: Any) -> BackendError:
        """The SDK error for an ``{"error": ...}`` frame sent after the 200 status line."""
        status = 500
        if isinstance(error, dict):
            for key in ("status", "code", "type"):
                value = error.get(key)
                if isinstance(value, int) and 400 <= value < 600:
                    status = value
                    break
                if isinstance(value, str) and value in _STREAM_ERROR_STATUS:
                    status = _STREAM_ERROR_STATUS[value]
                    break
        return self.classify_error(status, {}, json.dumps({"error": error}))

    # --- embeddings and models -------------------------------------------------------------

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        body: dict[str, Any] = {
            "model": self.resolve_model(request),
            "input": list(request.inputs),
            "encoding_format": "float",
        }
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        answer = await self.request_json("POST", self.api_path("embeddings"), body=body)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or len(data) != len(request.inputs):
            raise MalformedResponseError(
                f"expected {len(request.inputs)} embeddings in the answer's data",
                backend=self.name,
            )
        items = sorted(
            (item for item in data if isinstance(item, dict)),
            key=lambda item: item.get("index", 0),
        )
        if len(items) != len(data):
            raise MalformedResponseError("an embedding item is not an object", backend=self.name)
        usage = wire.parse_usage(answer.get("usage"))
        model = answer.get("model")
        return EmbeddingResponse(
            embeddings=tuple(
                wire.decode_embedding(item.get("embedding"), self.name) for item in items
            ),
            backend=self.name,
            model=model if isinstance(model, str) and model else body["model"],
            prompt_tokens=usage.prompt_tokens,
        )

    async def _list_models(self) -> list[str]:
        answer = await self.request_json("GET", self.api_path("models"))
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise MalformedResponseError("the model list has no data array", backend=self.name)
        return [str(item["id"]) for item in data if isinstance(item, dict) and "id" in item]

    async def _check_available(self) -> None:
        health = self.health_paths.get(self.backend_type)
        if health is None:
            await self._list_models()
            return
        root = self.base_url()
        prefix = self.path_prefixes.get(self.backend_type)
        if prefix:
            root = root.removesuffix(f"/{prefix}")
        await self.request_json("GET", f"{root}/{health}")
