"""The Azure OpenAI backend: OpenAI's wire format on Azure's deployment URLs.

It reuses :class:`OpenAIBackend` (and its wire functions) and changes only what Azure does
differently:

* **URLs.** ``{base_url}/openai/deployments/{deployment}/chat/completions?api-version=...``
  (and ``.../embeddings``). The deployment is ``deployment_name``, else ``model_name``; it
  picks the model, so a request's ``model`` is only echoed in the body. ``api_version``
  defaults to :data:`DEFAULT_API_VERSION`, ``2024-10-21``: the latest GA version of the
  dated inference API (it knows ``max_tokens``, not ``max_completion_tokens``; reasoning-model
  deployments need a newer ``api_version``).
* **Credentials.** ``api-key: <api_key>``, or, with a ``token_provider`` (an async callable
  returning an Entra ID access token, e.g. from azure-identity), ``Authorization: Bearer``
  with a token fetched for every request; the provider then wins over ``api_key``.
* **Content filter.** A non-streamed answer that Azure's filter emptied (``finish_reason:
  content_filter``, no content, no tool calls) raises :class:`ContentFilteredError` naming the
  filtered categories from ``content_filter_results``; one with partial content is returned
  with finish reason ``content_filter``. A prompt rejected by the filter (HTTP 400, ``code:
  content_filter``) raises ContentFilteredError naming the categories of
  ``innererror.content_filter_result``. A stream that the filter ends before any content
  raises ContentFilteredError too (the categories are not available there).
* Azure's first stream chunk (empty ``choices``, ``prompt_filter_results``) is skipped.
* **No model listing:** Azure lists models, not deployments, so ``MODELS`` is not offered.
  The availability check is a one-token chat completion on the deployment (about six input
  tokens and one output token): the only cheap call that proves the deployment answers.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

from llmbackend.backends._http import TokenProvider
from llmbackend.backends.base import Capability
from llmbackend.backends.openai import OpenAIBackend
from llmbackend.errors import (
    BackendError,
    ContentFilteredError,
    LlmBackendError,
)
from llmbackend.models import (
    ChatRequest,
    FinishEvent,
    FinishReason,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
)

__all__ = ["DEFAULT_API_VERSION", "AzureOpenAIBackend", "TokenProvider", "filtered_categories"]

#: The ``api-version`` sent when the config names none (latest GA of the dated inference API).
DEFAULT_API_VERSION = "2024-10-21"


def filtered_categories(results: Any) -> list[str]:
    """The categories marked ``filtered: true`` in Azure ``content_filter_result(s)``."""
    if not isinstance(results, Mapping):
        return []
    names: list[str] = []
    for name, value in results.items():
        items = value if isinstance(value, list) else [value]
        if any(isinstance(item, Mapping) and item.get("filtered") is True for item in items):
            names.append(str(name))
    return names


def _filter_message(what: str, categories: list[str]) -> str:
    named = ", ".join(categories) if categories else "no category named"
    return f"Azure's content filter blocked the {what} (filtered: {named})"


class AzureOpenAIBackend(OpenAIBackend):
    """Chat, streaming, tools and embeddings on an Azure OpenAI deployment."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.CHAT, Capability.STREAMING, Capability.TOOLS, Capability.EMBEDDINGS}
    )

    @property
    def model(self) -> str | None:
        return self.config.model_name or self.config.deployment_name

    @property
    def deployment(self) -> str:
        """The deployment every call goes to."""
        deployment = self.config.deployment_name or self.config.model_name
        if not deployment:
            raise LlmBackendError(
                f"backend {self.name!r} has no deployment: set deployment_name in its config"
            )
        return deployment

    @property
    def api_version(self) -> str:
        return self.config.api_version or DEFAULT_API_VERSION

    # --- HTTP plumbing ------------------------------------------------------------------

    def base_url(self) -> str:
        # Accept the resource URL with or without the /openai suffix.
        return super().base_url().removesuffix("/openai")

    def api_path(self, path: str) -> str:
        return f"openai/deployments/{quote(self.deployment, safe='')}/{path}"

    def url(self, path: str) -> str:
        return f"{super().url(path)}?api-version={quote(self.api_version, safe='')}"

    def auth_headers(self) -> dict[str, str]:
        if self.config.api_key and self.token_provider is None:
            return {"api-key": self.config.api_key}
        return {}  # with a token provider, request_headers sends its bearer token instead

    def _classify_error(self, status: int, headers: Mapping[str, str], text: str) -> BackendError:
        error = super()._classify_error(status, headers, text)
        if isinstance(error, ContentFilteredError) and error.code == "content_filter":
            categories = filtered_categories(_inner_filter_result(text))
            return ContentFilteredError(
                f"{_filter_message('prompt', categories)}: {error.message}",
                backend=self.name,
                status=status,
                code=error.code,
            )
        return error

    # --- content filter -------------------------------------------------------------------

    def _raise_if_filtered(self, answer: Any) -> None:
        choices = answer.get("choices") if isinstance(answer, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict) or choice.get("finish_reason") != "content_filter":
            return
        message = choice.get("message")
        if isinstance(message, dict) and (message.get("content") or message.get("tool_calls")):
            return  # partial content: returned, with finish reason content_filter
        categories = filtered_categories(choice.get("content_filter_results"))
        raise ContentFilteredError(
            _filter_message("answer", categories),
            backend=self.name,
            code="content_filter",
            retryable=False,
        )

    async def chat_completion(self, body: Mapping[str, Any]) -> Any:
        answer = await super().chat_completion(body)
        self._raise_if_filtered(answer)
        return answer

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        answered = False
        async with contextlib.aclosing(super()._stream(request)) as events:
            async for event in events:
                if (
                    isinstance(event, FinishEvent)
                    and event.reason is FinishReason.CONTENT_FILTER
                    and not answered
                ):
                    raise ContentFilteredError(
                        "Azure's content filter blocked the answer before any content",
                        backend=self.name,
                        code="content_filter",
                        retryable=False,
                    )
                answered = (
                    answered
                    or isinstance(event, ToolCallDelta)
                    or (isinstance(event, TextDelta) and bool(event.text))
                )
                yield event

    # --- availability ---------------------------------------------------------------------

    async def _check_available(self) -> None:
        probe = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        await self.chat_completion(probe)


def _inner_filter_result(text: str) -> Any:
    """``innererror.content_filter_result`` of a filtered-prompt error body (both spellings)."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    inner = error.get("innererror") or error.get("inner_error")
    if not isinstance(inner, dict):
        return None
    return inner.get("content_filter_result") or inner.get("content_filter_results")
