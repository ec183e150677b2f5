"""``HttpBackend``: the HTTP plumbing shared by wire-format backends.

It builds URLs and headers, sends JSON over the shared session, turns non-2xx answers into
the SDK's error tree (subclasses refine ``classify_error`` for their provider's error
bodies) and opens streaming responses that are always released.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from llmbackend.backends.base import BaseLlmBackend
from llmbackend.errors import (
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
    ContentFilteredError,
    ContextLengthExceededError,
    InvalidRequestError,
    MalformedResponseError,
    ModelNotFoundError,
    RateLimitedError,
    parse_retry_after,
)

__all__ = ["HttpBackend", "error_details"]

_CONTEXT_LENGTH_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "prompt is too long",
    "too many tokens",
    "input is too long",
)
_CONTENT_FILTER_MARKERS = (
    "content_filter",
    "content filtering",
    "content_policy",
    "safety",
    "responsibleaipolicy",
)
#: How much of an error body is quoted in an exception message.
_BODY_EXCERPT = 300


def error_details(text: str) -> tuple[str, str | None]:
    """The message and code from a provider error body, in the common JSON shapes."""
    try:
        body = json.loads(text)
    except ValueError:
        return (text.strip()[:_BODY_EXCERPT] or "no error body"), None
    error: Any = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, str):
        return error[:_BODY_EXCERPT], None
    if not isinstance(error, dict):
        return text.strip()[:_BODY_EXCERPT], None
    message = error.get("message") or body.get("message") or json.dumps(error)[:_BODY_EXCERPT]
    code = error.get("code") or error.get("type") or error.get("status")
    return str(message)[:_BODY_EXCERPT], (str(code) if code is not None else None)


class HttpBackend(BaseLlmBackend):
    """A backend that talks HTTP+JSON to ``base_url`` through the shared session."""

    def base_url(self) -> str:
        url = self.config.effective_base_url
        if not url:
            raise BackendError(
                f"no base_url configured for backend {self.name!r}", backend=self.name
            )
        return url.rstrip("/")

    def auth_headers(self) -> dict[str, str]:
        """Credential headers. Subclasses override; the values never reach logs or errors."""
        return {}

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        headers.update(self.auth_headers())
        headers.update(self.config.additional_headers)
        return headers

    def url(self, path: str) -> str:
        return f"{self.base_url()}/{path.lstrip('/')}"

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """Send a request and return the decoded JSON answer, or raise the mapped error."""
        async with self.session.request(
            method, self.url(path), json=body, params=params, headers=self.headers()
        ) as response:
            text = await response.text(encoding="utf-8")
            if response.status >= 400:
                raise self.classify_error(response.status, response.headers, text)
            try:
                return json.loads(text)
            except ValueError as exc:
                raise MalformedResponseError(
                    f"the response is not valid JSON: {text[:80]!r}",
                    backend=self.name,
                    status=response.status,
                ) from exc

    @contextlib.asynccontextmanager
    async def open_stream(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a streaming response after checking its status; it is released on exit."""
        headers = self.headers()
        headers["Accept"] = "text/event-stream"
        async with self.session.request(
            method, self.url(path), json=body, params=params, headers=headers
        ) as response:
            if response.status >= 400:
                text = await response.text(encoding="utf-8")
                raise self.classify_error(response.status, response.headers, text)
            yield response

    def classify_error(self, status: int, headers: Mapping[str, str], text: str) -> BackendError:
        """Map an HTTP error answer to the SDK error tree (OpenAI-style bodies by default)."""
        message, code = error_details(text)
        lowered = f"{code or ''} {message}".lower()
        kwargs: dict[str, Any] = {"backend": self.name, "status": status, "code": code}
        if status in (401, 403):
            return AuthenticationError(message, **kwargs)
        if status == 429:
            return RateLimitedError(message, retry_after=parse_retry_after(headers), **kwargs)
        if status in (408, 409) or status >= 500:
            # A server-side failure stays retryable whatever words its message contains.
            return BackendUnavailableError(
                message, retry_after=parse_retry_after(headers), **kwargs
            )
        if any(marker in lowered for marker in _CONTEXT_LENGTH_MARKERS):
            return ContextLengthExceededError(message, **kwargs)
        if any(marker in lowered for marker in _CONTENT_FILTER_MARKERS):
            return ContentFilteredError(message, **kwargs)
        if status == 404:
            return ModelNotFoundError(message, **kwargs)
        if status in (400, 413, 422):
            return InvalidRequestError(message, **kwargs)
        return BackendError(message, **kwargs)
