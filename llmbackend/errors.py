"""The error tree of llmbackend.

Every exception the SDK raises derives from :class:`LlmBackendError`::

    LlmBackendError
    ├── ConfigurationError          settings are wrong (lists every problem with its path)
    ├── PluginError                 a plugin could not be imported, validated or used
    ├── NotSupportedError           the backend lacks a capability (e.g. embeddings)
    ├── AllBackendsFailedError      also an ExceptionGroup of every attempt's error
    ├── StateStoreError             the shared-state store (SQLite, Redis) failed or is missing
    └── BackendError                a provider call failed (status, retryable, retry_after)
        ├── AuthenticationError          401 / 403
        ├── InvalidRequestError          400 validation errors (caller mistake)
        │   ├── ModelNotFoundError       404 for the model
        │   ├── ContextLengthExceededError
        │   └── ContentFilteredError
        ├── RateLimitedError             429 from the provider, or the SDK's own limiter
        ├── BackendTimeoutError          no (complete) answer in time
        ├── BackendUnavailableError      connection refused/reset, 5xx
        ├── MalformedResponseError       a body or stream frame that cannot be parsed
        ├── StreamInterruptedError       a stream cut after content reached the caller
        ├── CircuitOpenError             the backend's breaker is open
        └── BudgetExceededError          the backend's spend limit is reached

aiohttp, asyncio and JSON exceptions become SDK errors in exactly one place:
:func:`map_transport_errors`. The original exception is chained with ``from``.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from llmbackend.models import Usage

__all__ = [
    "AllBackendsFailedError",
    "AuthenticationError",
    "BackendError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "BudgetExceededError",
    "CircuitOpenError",
    "ConfigProblem",
    "ConfigurationError",
    "ContentFilteredError",
    "ContextLengthExceededError",
    "InvalidRequestError",
    "LlmBackendError",
    "MalformedResponseError",
    "ModelNotFoundError",
    "NotSupportedError",
    "PluginError",
    "RateLimitedError",
    "StateStoreError",
    "StreamInterruptedError",
    "map_transport_errors",
    "parse_retry_after",
]

#: The longest provider-requested wait the SDK will honour, in seconds.
MAX_RETRY_AFTER_SECONDS = 300.0


class LlmBackendError(Exception):
    """Root of every error raised by llmbackend."""


class ConfigProblem:
    """One problem in a configuration: where it is and what is wrong."""

    __slots__ = ("message", "path")

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def __repr__(self) -> str:
        return f"ConfigProblem(path={self.path!r}, message={self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfigProblem):
            return NotImplemented
        return (self.path, self.message) == (other.path, other.message)

    def __hash__(self) -> int:
        return hash((self.path, self.message))


class ConfigurationError(LlmBackendError):
    """The settings are invalid. ``problems`` lists every problem found, each with its path."""

    def __init__(self, problems: Sequence[ConfigProblem] | str) -> None:
        if isinstance(problems, str):
            problems = [ConfigProblem("", problems)]
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        count = len(self.problems)
        header = "invalid llmbackend configuration" + (f" ({count} problems)" if count > 1 else "")
        super().__init__(header + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class PluginError(LlmBackendError):
    """A plugin could not be imported, validated or asked to build a backend."""


class NotSupportedError(LlmBackendError):
    """The backend does not offer this capability (for example embeddings on Anthropic)."""

    def __init__(self, backend: str, capability: str) -> None:
        self.backend = backend
        self.capability = capability
        super().__init__(f"backend {backend!r} does not support {capability}")


class StateStoreError(LlmBackendError):
    """The shared-state store (cache, budget ledger, rate limits) failed or cannot be opened.

    The cache degrades to a miss on this error; budgets and rate limits fail closed (the
    request is refused rather than allowed past a limit nobody can check).
    """


class BackendError(LlmBackendError):
    """A call to a provider failed.

    ``retryable`` says whether trying the same backend again may succeed; ``retry_after`` is
    the wait the provider asked for, in seconds, when it said one.
    """

    default_retryable = False
    #: Whether this failure counts against the backend's circuit breaker.
    trips_breaker = True
    #: Whether another backend may be tried after this failure.
    allows_failover = True

    def __init__(
        self,
        message: str,
        *,
        backend: str | None = None,
        status: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        self.backend = backend
        self.status = status
        self.retryable = self.default_retryable if retryable is None else retryable
        self.retry_after = retry_after
        self.code = code
        self.message = message
        prefix = f"[{backend}] " if backend else ""
        suffix = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{prefix}{message}{suffix}")


class AuthenticationError(BackendError):
    """The provider rejected the credentials (HTTP 401 or 403)."""

    trips_breaker = False
    allows_failover = False


class InvalidRequestError(BackendError):
    """The provider rejected the request as invalid (HTTP 400 or 422): a caller mistake."""

    trips_breaker = False
    allows_failover = False


class ModelNotFoundError(InvalidRequestError):
    """The configured model does not exist on this backend (HTTP 404)."""

    # Another backend with another model may well serve the request.
    allows_failover = True


class ContextLengthExceededError(InvalidRequestError):
    """The input is longer than the model's context window."""

    allows_failover = True


class ContentFilteredError(InvalidRequestError):
    """The provider refused the content (prompt or answer) on policy grounds."""


class RateLimitedError(BackendError):
    """Too many requests: a provider's HTTP 429, or the SDK's own limiter (``source="sdk"``)."""

    default_retryable = True

    def __init__(self, message: str, *, source: str = "provider", **kwargs: Any) -> None:
        self.source = source
        super().__init__(message, **kwargs)


class BackendTimeoutError(BackendError):
    """No (complete) answer arrived in time.

    Not retried on the same backend: a route that stayed silent once is likely to stay
    silent, so the service fails over at once instead of spending the deadline on it.
    """


class BackendUnavailableError(BackendError):
    """The backend could not be reached or answered with a server error."""

    default_retryable = True


class MalformedResponseError(BackendError):
    """The provider answered with a body or stream frame that cannot be understood."""

    default_retryable = True


class CircuitOpenError(BackendError):
    """The backend's circuit breaker is open; the call was not attempted."""

    trips_breaker = False


class BudgetExceededError(BackendError):
    """The backend's spend limit for the current period is reached; the call was not attempted."""

    trips_breaker = False


class StreamInterruptedError(BackendError):
    """A stream broke after content had reached the caller.

    ``partial_text`` is what was delivered before the cut; ``usage`` what the provider reported.
    """

    def __init__(
        self, message: str, *, partial_text: str = "", usage: Usage | None = None, **kwargs: Any
    ) -> None:
        self.partial_text = partial_text
        self.usage = usage
        super().__init__(message, **kwargs)


class AllBackendsFailedError(LlmBackendError, ExceptionGroup):
    """No backend could serve the request.

    It is an :class:`ExceptionGroup` of every attempt's error, so ``except*`` works; ``skipped``
    maps the backends that were not tried to the reason why. ``attempted`` is False when no
    backend was even tried (every one skipped: budgets spent, circuits open...); the group
    then holds one placeholder error saying so.
    """

    skipped: Mapping[str, str]
    attempted: bool

    def __new__(
        cls,
        message: str,
        exceptions: Sequence[Exception],
        skipped: Mapping[str, str] | None = None,
    ) -> AllBackendsFailedError:
        attempted = bool(exceptions)
        if not attempted:
            # ExceptionGroup requires at least one exception; a request that tried nothing
            # still gets a group naming why.
            exceptions = [BackendUnavailableError("no backend was eligible")]
        self = super().__new__(cls, message, list(exceptions))
        self.skipped = dict(skipped or {})
        self.attempted = attempted
        return self

    def __init__(
        self,
        message: str,
        exceptions: Sequence[Exception],
        skipped: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, list(exceptions) or [BackendUnavailableError("no backend")])

    def __str__(self) -> str:
        lines = [self.message]
        lines += [f"  - {exc}" for exc in self.exceptions]
        lines += [f"  - {name}: skipped ({why})" for name, why in self.skipped.items()]
        return "\n".join(lines)

    def derive(self, excs: Sequence[Exception]) -> AllBackendsFailedError:  # type: ignore[override]
        derived = AllBackendsFailedError(self.message, excs, self.skipped)
        derived.attempted = self.attempted and derived.attempted
        return derived


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The wait a provider asked for, in seconds, capped at :data:`MAX_RETRY_AFTER_SECONDS`.

    Understands ``retry-after-ms``, ``Retry-After`` in seconds and ``Retry-After`` as an HTTP date.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    value: float | None = None
    if (ms := lowered.get("retry-after-ms")) is not None:
        with contextlib.suppress(ValueError):
            value = float(ms) / 1000.0
    if value is None and (raw := lowered.get("retry-after")) is not None:
        raw = raw.strip()
        try:
            value = float(raw)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError, IndexError):
                return None
            value = when.timestamp() - (time.time() if now is None else now)
    if value is None:
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER_SECONDS)


@contextlib.contextmanager
def map_transport_errors(backend: str, *, phase: str = "request") -> Iterator[None]:
    """Translate aiohttp/asyncio/JSON failures into SDK errors; the one place this happens.

    SDK errors pass through untouched; ``asyncio.CancelledError`` is never swallowed.
    """
    try:
        yield
    except LlmBackendError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise BackendTimeoutError(f"timed out during {phase}", backend=backend) from exc
    except aiohttp.ClientPayloadError as exc:
        raise BackendUnavailableError(
            f"connection broke during {phase}: {type(exc).__name__}", backend=backend
        ) from exc
    except (aiohttp.ClientConnectionError, ConnectionError) as exc:
        raise BackendUnavailableError(
            f"connection failed during {phase}: {type(exc).__name__}", backend=backend
        ) from exc
    except aiohttp.ClientResponseError as exc:
        raise BackendError(
            f"HTTP error during {phase}: {exc.message}", backend=backend, status=exc.status
        ) from exc
    except aiohttp.ClientError as exc:
        raise BackendUnavailableError(
            f"HTTP client error during {phase}: {type(exc).__name__}", backend=backend
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedResponseError(
            f"invalid JSON in the {phase}: {exc}", backend=backend
        ) from exc
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise MalformedResponseError(
            f"unexpected shape in the {phase}: {type(exc).__name__}: {exc}", backend=backend
        ) from exc
