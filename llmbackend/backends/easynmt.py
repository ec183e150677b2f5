"""The EasyNMT backend: machine translation behind the chat interface.

EasyNMT (UKPLab's REST service, default ``http://localhost:24080``) translates text; it is
not an LLM. A chat call translates the **last user message**:

* the target language comes from the request: ``metadata["target_language"]`` (or
  ``"target_lang"``). Without it the call fails with :class:`InvalidRequestError` before any
  I/O; nothing is hard-coded.
* the source language comes from ``metadata["source_language"]`` (or ``"source_lang"``);
  without it EasyNMT detects the language itself.
* optional ``metadata["beam_size"]`` and ``metadata["perform_sentence_splitting"]`` are
  passed through; sampling parameters, tools and system prompts do not apply and are not sent.

Wire: ``POST /translate`` with ``{"text": [text], "target_lang", "source_lang"?, ...}``,
answered by ``{"translated": [...], "target_lang", "source_lang", "detected_langs"?,
"translation_time"}``. The service reports no tokens (usage is zero) and no finish reason
(``stop`` is reported, with no raw value). It does not stream. ``GET /model_name`` names the
loaded model; it is the model list and the availability check.

Errors: EasyNMT answers a failed translation (for example an unsupported language pair) with
HTTP 403 and ``{"detail": "Error: ..."}``; that is a caller problem, mapped to
:class:`InvalidRequestError` (code ``translation_failed``), not to an authentication error.
Validation errors (422, ``{"detail": [...]}``) are :class:`InvalidRequestError` too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from llmbackend.backends._http import HttpBackend
from llmbackend.backends.base import Capability
from llmbackend.errors import BackendError, InvalidRequestError, MalformedResponseError
from llmbackend.models import ChatRequest, FinishReason, LlmResponse

__all__ = ["EASYNMT_BACKEND_TYPES", "EasyNmtBackend"]

#: The backend types served by this class.
EASYNMT_BACKEND_TYPES: tuple[str, ...] = ("easynmt",)

#: Request metadata keys, preferred name first.
TARGET_KEYS = ("target_language", "target_lang")
SOURCE_KEYS = ("source_language", "source_lang")
_TRANSLATION_ERROR_PREFIX = "Error:"


class EasyNmtBackend(HttpBackend):
    """Translation of the last user message through an EasyNMT REST service."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.CHAT, Capability.MODELS})
    #: EasyNMT loads one model server-side; this is only the label reported on answers
    #: unless ``model_name`` (or the request's ``model``) names it.
    default_model: ClassVar[str | None] = "easynmt"

    def translate_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of ``POST /translate`` for ``request``; raises before any I/O when
        the request cannot be translated."""
        metadata = request.metadata
        target = self._language(metadata, TARGET_KEYS)
        if target is None:
            raise InvalidRequestError(
                f"EasyNMT needs the target language in the request: set "
                f"metadata[{TARGET_KEYS[0]!r}] (or {TARGET_KEYS[1]!r}), e.g. 'en'",
                backend=self.name,
            )
        last_user = next((m for m in reversed(request.messages) if m.role == "user"), None)
        text = last_user.content if last_user is not None else None
        if not text:
            raise InvalidRequestError(
                "EasyNMT translates the last user message, and the request has none with text",
                backend=self.name,
            )
        body: dict[str, Any] = {"text": [text], "target_lang": target}
        source = self._language(metadata, SOURCE_KEYS)
        if source is not None:
            body["source_lang"] = source
        beam_size = metadata.get("beam_size")
        if beam_size is not None:
            if not isinstance(beam_size, int) or isinstance(beam_size, bool) or beam_size < 1:
                raise InvalidRequestError(
                    "metadata['beam_size'] must be a positive integer", backend=self.name
                )
            body["beam_size"] = beam_size
        splitting = metadata.get("perform_sentence_splitting")
        if splitting is not None:
            if not isinstance(splitting, bool):
                raise InvalidRequestError(
                    "metadata['perform_sentence_splitting'] must be true or false",
                    backend=self.name,
                )
            body["perform_sentence_splitting"] = splitting
        return body

    def _language(self, metadata: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
        for key in keys:
            value = metadata.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                raise InvalidRequestError(
                    f"metadata[{key!r}] must be a language code such as 'de'", backend=self.name
                )
            return value.strip()
        return None

    async def _chat(self, request: ChatRequest) -> LlmResponse:
        body = self.translate_body(request)
        answer = await self.request_json("POST", "translate", body=body)
        translated = answer.get("translated") if isinstance(answer, dict) else None
        if isinstance(translated, list) and len(translated) == 1:
            translated = translated[0]
        if not isinstance(translated, str):
            raise MalformedResponseError(
                "the translation answer has no single translated text", backend=self.name
            )
        return LlmResponse(
            content=translated,
            backend=self.name,
            model=self.resolve_model(request),
            finish_reason=FinishReason.STOP,
        )

    async def _list_models(self) -> list[str]:
        name = await self.request_json("GET", "model_name")
        if not isinstance(name, str) or not name:
            raise MalformedResponseError("model_name did not return a name", backend=self.name)
        return [name]

    def _classify_error(self, status: int, headers: Mapping[str, str], text: str) -> BackendError:
        detail = _detail(text)
        if detail is None:
            return super()._classify_error(status, headers, text)
        if status == 403 and detail.startswith(_TRANSLATION_ERROR_PREFIX):
            return InvalidRequestError(
                detail, backend=self.name, status=status, code="translation_failed"
            )
        return super()._classify_error(status, headers, json.dumps({"error": detail}))


def _detail(text: str) -> str | None:
    """FastAPI's ``{"detail": ...}`` error body as one message (``None`` for other bodies)."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        # Validation errors: [{"loc": ["query", "target_lang"], "msg": "field required"}, ...]
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc") or [])
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        return "; ".join(parts) or None
    return None
