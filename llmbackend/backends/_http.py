"""``HttpBackend``: the HTTP plumbing shared by wire-format backends.

It builds URLs and headers (``request_headers``, awaited per request, adds ``Authorization:
Bearer`` from an optional async ``token_provider``), sends JSON over the shared session, turns
non-2xx answers into the SDK's error tree (``classify_error`` masks this backend's secrets,
then subclasses refine ``_classify_error`` for their provider's error bodies) and opens
streaming responses that are always released.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import aiohttp

from llmbackend._logging import LoggerFactory
from llmbackend.backends.base import BaseLlmBackend, SessionFactory
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
from llmbackend.settings import LlmBackendConfig

__all__ = ["HttpBackend", "TokenProvider", "error_details"]

#: An async callable returning a bearer token (Entra ID, Google OAuth...), called per request.
TokenProvider = Callable[[], Awaitable[str]]

#: (backend, bearer token) of the request being sent in this context, so that
#: ``classify_error`` can mask the token if the server echoes it back.
_IN_FLIGHT_BEARER: contextvars.ContextVar[tuple[object, str] | None] = contextvars.ContextVar(
    "llmbackend_in_flight_bearer", default=None
)

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

    def __init__(
        self,
        config: LlmBackendConfig,
        *,
        logger_factory: LoggerFactory | None = None,
        session_factory: SessionFactory | None = None,
        token_provider: TokenProvider | None = None,
    ) -> None:
        super().__init__(config, logger_factory=logger_factory, session_factory=session_factory)
        self.token_provider = token_provider

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

    async def request_headers(self) -> dict[str, str]:
        """The headers of one request: ``headers()`` plus the provider's bearer token, if any."""
        headers = self.headers()
        token = await self.bearer_token()
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def bearer_token(self) -> str | None:
        """A fresh token from ``token_provider`` (``None`` without one)."""
        if self.token_provider is None:
            return None
        try:
            token = await self.token_provider()
        except Exception as exc:  # a caller's callable may raise anything
            error = self.token_provider_error(exc)
            if error is exc:
                raise
            raise error from exc
        if not isinstance(token, str) or not token:
            raise AuthenticationError("the token provider returned no token", backend=self.name)
        return token

    def token_provider_error(self, exc: Exception) -> Exception:
        """The error raised for a failing token provider.

        Only the exception type is named: a credential library's message may carry secrets.
        """
        return AuthenticationError(
            f"the token provider failed: {type(exc).__name__}", backend=self.name
        )

    @contextlib.contextmanager
    def _in_flight(self, headers: Mapping[str, str]) -> Iterator[None]:
        """Remember the bearer token sent in ``headers`` while the request is in flight."""
        authorization = headers.get("Authorization", "")
        if not authorization.startswith("Bearer "):
            yield
            return
        reset = _IN_FLIGHT_BEARER.set((self, authorization.removeprefix("Bearer ")))
        try:
            yield
        finally:
            _IN_FLIGHT_BEARER.reset(reset)

    def secrets(self) -> list[str]:
        """This backend's secrets that may be echoed in an error: key and in-flight token."""
        found = [self.config.api_key] if self.config.api_key else []
        bearer = _IN_FLIGHT_BEARER.get()
        if bearer is not None and bearer[0] is self and bearer[1]:
            found.append(bearer[1])
        return found

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
        headers = await self.request_headers()
        with self._in_flight(headers):
            async with self.session.request(
                method, self.url(path), json=body, params=params, headers=headers
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
        headers = await self.request_headers()
        headers["Accept"] = "text/event-stream"
        async with contextlib.AsyncExitStack() as stack:
            with self._in_flight(headers):  # only while the request is sent and checked
                response = await stack.enter_async_context(
                    self.session.request(
                        method, self.url(path), json=body, params=params, headers=headers
                    )
                )
                if response.status >= 400:
                    text = await response.text(encoding="utf-8")
                    raise self.classify_error(response.status, response.headers, text)
            yield response

    def classify_error(self, status: int, headers: Mapping[str, str], text: str) -> BackendError:
        """Map an HTTP error answer to the SDK error tree, with this backend's secrets masked.

        A proxy may echo a credential back; it must never reach an exception. Subclasses
        refine ``_classify_error``, which only ever sees the masked text.
        """
        for secret in self.secrets():
            text = text.replace(secret, "***")
        return self._classify_error(status, headers, text)

    def _classify_error(self, status: int, headers: Mapping[str, str], text: str) -> BackendError:
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
