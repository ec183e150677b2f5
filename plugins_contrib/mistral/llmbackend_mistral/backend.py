"""``MistralBackend``: Mistral AI's OpenAI-like API, as a subclass of ``OpenAIBackend``.

Mistral speaks the chat-completions wire format (``/v1/chat/completions``, SSE chunks ending
with ``data: [DONE]``, tool calls, ``/v1/embeddings``, ``/v1/models``, Bearer auth), so only
the differences are overridden here:

* **Base URL** ``https://api.mistral.ai/v1`` unless ``base_url`` is configured.
* **Auth:** ``Authorization: Bearer`` only (no ``OpenAI-Organization``).
* **Request body:** ``max_tokens`` (never ``max_completion_tokens``); ``stream`` is always
  explicit and no ``stream_options`` is sent (Mistral puts ``usage`` on the final chunk by
  itself); ``tool_choice: "required"`` is sent as Mistral's ``"any"``; only tool messages keep
  a ``name`` (Mistral's user/system/assistant messages have none). ``random_seed`` (int) and
  ``safe_prompt`` (bool) are taken from ``request.metadata`` when present.
* **Embeddings:** ``dimensions`` is sent as ``output_dimension``.
* **Finish reasons:** Mistral's ``model_length`` is ``length`` and ``error`` is ``error``
  (the raw value is kept).
* **Errors:** Mistral's ``{"object": "error", "message": ..., "type": ..., "code": ...}``
  bodies, including validation errors whose ``message`` is ``{"detail": [...]}``, become one
  readable message; statuses map as for OpenAI.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar

import attrs

from llmbackend.backends.openai import OpenAIBackend
from llmbackend.errors import BackendError, InvalidRequestError, MalformedResponseError
from llmbackend.models import (
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishEvent,
    FinishReason,
    LlmResponse,
    StreamEvent,
)

__all__ = ["MISTRAL_BACKEND_TYPES", "MISTRAL_BASE_URL", "MistralBackend"]

#: Where Mistral's API lives unless ``base_url`` says otherwise.
MISTRAL_BASE_URL = "https://api.mistral.ai/v1"
#: The backend types this plugin builds (matched case-insensitively).
MISTRAL_BACKEND_TYPES: tuple[str, ...] = ("Mistral", "MistralAI")

#: Mistral finish reasons the OpenAI vocabulary lacks.
_FINISH_REASONS: Mapping[str, FinishReason] = {
    "model_length": FinishReason.LENGTH,
    "error": FinishReason.ERROR,
}


class MistralBackend(OpenAIBackend):
    """Chat, streaming, tools, embeddings and model listing against Mistral's API."""

    default_model: ClassVar[str | None] = None

    # --- HTTP plumbing ------------------------------------------------------------------

    def base_url(self) -> str:
        return (self.config.base_url or MISTRAL_BASE_URL).rstrip("/")

    def auth_headers(self) -> dict[str, str]:
        if self.config.api_key:
            return {"Authorization": f"Bearer {self.config.api_key}"}
        return {}

    def classify_error(self, status: int, headers: Mapping[str, str], text: str) -> BackendError:
        return super().classify_error(status, headers, _flatten_error(text))

    # --- chat ---------------------------------------------------------------------------

    def chat_body(self, request: ChatRequest, *, stream: bool = False) -> dict[str, Any]:
        body = super().chat_body(request)  # non-streaming shape: no stream_options
        if "max_completion_tokens" in body:  # only real OpenAI gets that name
            body["max_tokens"] = body.pop("max_completion_tokens")
        body["stream"] = stream
        body["messages"] = [
            {k: v for k, v in message.items() if k != "name" or message["role"] == "tool"}
            for message in body["messages"]
        ]
        if body.get("tool_choice") == "required":
            body["tool_choice"] = "any"
        metadata = request.metadata
        seed = metadata.get("random_seed")
        if seed is not None:
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise InvalidRequestError(
                    "metadata['random_seed'] must be an integer", backend=self.name
                )
            body["random_seed"] = seed
        safe_prompt = metadata.get("safe_prompt")
        if safe_prompt is not None:
            if not isinstance(safe_prompt, bool):
                raise InvalidRequestError(
                    "metadata['safe_prompt'] must be true or false", backend=self.name
                )
            body["safe_prompt"] = safe_prompt
        return body

    async def _chat(self, request: ChatRequest) -> LlmResponse:
        response = await super()._chat(request)
        reason = _finish_reason(response.finish_reason, response.raw_finish_reason)
        return attrs.evolve(response, finish_reason=reason)

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        async with contextlib.aclosing(super()._stream(request)) as events:
            async for event in events:
                if isinstance(event, FinishEvent):
                    reason = _finish_reason(event.reason, event.raw_reason)
                    event = attrs.evolve(event, reason=reason)  # noqa: PLW2901 - refined copy
                yield event

    # --- embeddings -----------------------------------------------------------------------

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        body: dict[str, Any] = {"model": self.resolve_model(request), "input": list(request.inputs)}
        if request.dimensions is not None:
            body["output_dimension"] = request.dimensions
        answer = await self.request_json("POST", "embeddings", body=body)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or len(data) != len(request.inputs):
            raise MalformedResponseError(
                f"expected {len(request.inputs)} embeddings in the answer's data",
                backend=self.name,
            )
        if not all(isinstance(item, dict) for item in data):
            raise MalformedResponseError("an embedding item is not an object", backend=self.name)
        vectors = [
            _vector(item.get("embedding"), self.name)
            for item in sorted(data, key=lambda item: item.get("index", 0))
        ]
        usage = answer.get("usage")
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        model = answer.get("model")
        return EmbeddingResponse(
            embeddings=tuple(vectors),
            backend=self.name,
            model=model if isinstance(model, str) and model else body["model"],
            prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else 0,
        )


def _finish_reason(reason: FinishReason | None, raw: str | None) -> FinishReason | None:
    if reason is None and raw is not None:
        return _FINISH_REASONS.get(raw)
    return reason


def _vector(value: Any, backend: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in value
    ):
        raise MalformedResponseError("an embedding is not a list of numbers", backend=backend)
    return tuple(float(x) for x in value)


def _flatten_error(text: str) -> str:
    """Mistral's error body with a structured ``message`` turned into one readable line."""
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if not isinstance(body, dict) or isinstance(body.get("message"), str | None):
        return text
    message = body["message"]
    detail = message.get("detail") if isinstance(message, dict) else message
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc") or [])
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
            else:
                parts.append(str(item))
        flat = "; ".join(parts)
    else:
        flat = json.dumps(detail)
    return json.dumps(body | {"message": flat})
