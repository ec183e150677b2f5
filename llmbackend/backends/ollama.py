"""The Ollama backend, over Ollama's native API (``/api/chat``, ``/api/embed``, ``/api/tags``).

Decisions worth knowing:

* ``stream`` is always sent explicitly: Ollama streams unless told ``false``.
* Sampling parameters go in ``options`` (``max_tokens`` becomes ``num_predict``);
  ``response_format`` becomes ``format`` (``"json"`` or a JSON schema).
* Ollama has no ``tool_choice``: ``"none"`` is honoured by not sending the tools; other
  values cannot be enforced and are not sent.
* Tool calls come with their arguments as a JSON object; they are reported as JSON text.
  Calls without an id get a stable generated one (see :mod:`._ollama_wire`). Ollama reports
  ``done_reason: stop`` after tool calls; the SDK reports ``tool_calls`` (raw value kept).
* A stream is complete only after its ``done: true`` line, which carries ``done_reason`` and
  the token counts. A body that ends before it yields no ``FinishEvent`` (the base raises
  ``StreamInterruptedError``); an ``{"error": ...}`` line raises the error it describes.
  As for OpenAI streams, a line that is not JSON fails the attempt when nothing was answered
  yet, and is skipped and counted (``FinishEvent.malformed_events``) after content.
* An ``api_key``, when configured (Ollama behind an authenticating proxy, or ollama.com),
  is sent as a Bearer token and never appears in errors.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar

from llmbackend._sse import iter_ndjson_lines
from llmbackend.backends import _ollama_wire as wire
from llmbackend.backends._http import HttpBackend, error_details
from llmbackend.backends.base import Capability, StreamFrames
from llmbackend.errors import (
    BackendError,
    ContentFilteredError,
    ContextLengthExceededError,
    MalformedResponseError,
    ModelNotFoundError,
)
from llmbackend.models import (
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    LlmResponse,
    StreamEvent,
    UsageEvent,
)

__all__ = ["OLLAMA_BACKEND_TYPES", "OllamaBackend"]

#: The backend types served by this class.
OLLAMA_BACKEND_TYPES: tuple[str, ...] = ("ollama",)


class OllamaBackend(HttpBackend):
    """Chat, NDJSON streaming, tools, embeddings and model listing against an Ollama server."""

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

    # --- HTTP plumbing ------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        if self.config.api_key:
            return {"Authorization": f"Bearer {self.config.api_key}"}
        return {}

    def _classify_error(self, status: int, headers: Mapping[str, str], text: str) -> BackendError:
        error = super()._classify_error(status, headers, text)
        message, _ = error_details(text)
        if status in (400, 404) and _names_missing_model(message):
            # Ollama says "model 'x' not found" (404; some versions 400): the model is not
            # pulled here, which another backend may well serve.
            return ModelNotFoundError(message, backend=self.name, status=status, code=error.code)
        return error

    # --- chat ---------------------------------------------------------------------------

    def chat_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The JSON body of an ``/api/chat`` call for ``request``."""
        return wire.encode_chat(
            request,
            self.resolve_model(request),
            self.resolve_parameters(request),
            stream=stream,
            backend=self.name,
        )

    async def _chat(self, request: ChatRequest) -> LlmResponse:
        body = self.chat_body(request, stream=False)
        answer = await self.request_json("POST", "api/chat", body=body)
        if isinstance(answer, dict) and answer.get("error") is not None:
            raise self._line_error(answer)
        parsed = wire.parse_answer(answer, self.name)
        usage = parsed.usage
        return LlmResponse(
            content=parsed.content,
            backend=self.name,
            model=parsed.model or body["model"],
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            finish_reason=parsed.reason,
            raw_finish_reason=parsed.raw_reason,
            tool_calls=parsed.tool_calls,
        )

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        body = self.chat_body(request, stream=True)
        state = wire.StreamState(backend=self.name, model=body["model"])
        frames = StreamFrames(self._log)
        async with self.open_stream("POST", "api/chat", body=body) as response:
            async for line in iter_ndjson_lines(response.content):
                decoded = frames.decode(functools.partial(wire.decode_line, line, self.name))
                if decoded is None:
                    continue  # one bad line after content: skipped and counted
                if decoded.get("error") is not None:
                    raise self._line_error(decoded)
                for event in state.feed(decoded):
                    yield frames.passing(event)
                if state.done:
                    break
        if not state.done:
            return  # cut short: no FinishEvent, so the caller sees StreamInterruptedError
        if state.usage is not None:
            yield UsageEvent(usage=state.usage)
        yield frames.passing(state.finish())

    def _line_error(self, line: Mapping[str, Any]) -> BackendError:
        """The SDK error for an ``{"error": ...}`` object sent with a 200 status."""
        text = json.dumps({"error": line["error"]})
        # No status comes with it: a message naming a caller problem (missing model, context
        # length, content filter) keeps that meaning; anything else is a server failure.
        as_client_error = self.classify_error(400, {}, text)
        if isinstance(
            as_client_error, ModelNotFoundError | ContextLengthExceededError | ContentFilteredError
        ):
            return as_client_error
        return self.classify_error(500, {}, text)

    # --- embeddings and models -------------------------------------------------------------

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        body: dict[str, Any] = {"model": self.resolve_model(request), "input": list(request.inputs)}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        answer = await self.request_json("POST", "api/embed", body=body)
        vectors = answer.get("embeddings") if isinstance(answer, dict) else None
        if not isinstance(vectors, list) or len(vectors) != len(request.inputs):
            raise MalformedResponseError(
                f"expected {len(request.inputs)} vectors in the answer's embeddings",
                backend=self.name,
            )
        embeddings: list[tuple[float, ...]] = []
        for vector in vectors:
            if not isinstance(vector, list) or not all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in vector
            ):
                raise MalformedResponseError(
                    "an embedding is not a list of numbers", backend=self.name
                )
            embeddings.append(tuple(float(x) for x in vector))
        model = answer.get("model")
        return EmbeddingResponse(
            embeddings=tuple(embeddings),
            backend=self.name,
            model=model if isinstance(model, str) and model else body["model"],
            prompt_tokens=wire.parse_usage(answer).prompt_tokens,
        )

    async def _list_models(self) -> list[str]:
        answer = await self.request_json("GET", "api/tags")
        models = answer.get("models") if isinstance(answer, dict) else None
        if not isinstance(models, list):
            raise MalformedResponseError("the model list has no models array", backend=self.name)
        return [str(item["name"]) for item in models if isinstance(item, dict) and "name" in item]


def _names_missing_model(message: str) -> bool:
    lowered = message.lower()
    return "model" in lowered and "not found" in lowered
