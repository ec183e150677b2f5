"""The correlation id of a request: one id on every log line and span of that request.

The id comes from the caller when it has one: the :data:`correlation_id` context variable
(set it around your call), or a ``correlation_id`` bound with
``structlog.contextvars.bind_contextvars``. Otherwise the service makes one up. While the
request runs, :data:`correlation_id` holds the id, so the SDK's log events (and the
application's own, through :func:`add_correlation_id`) carry it.
"""

from __future__ import annotations

import contextvars
import itertools
import secrets
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["add_correlation_id", "begin_request", "correlation_id", "end_request"]

#: The correlation id of the request in progress (``None`` outside requests). Set it to
#: have the SDK use your id instead of making one up.
correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "llmbackend_correlation_id", default=None
)

# Unique, not secret: a random per-process prefix and a counter, ten times cheaper than uuid4.
_PREFIX = secrets.token_hex(6)
_counter = itertools.count(1)


def _new_id() -> str:
    return f"{_PREFIX}-{next(_counter)}"


# structlog keeps one ContextVar per bound key; reading ours directly spares copying and
# scanning the whole context on every request. The public (slower) call is the fallback.
_STRUCTLOG_VARS: dict[str, contextvars.ContextVar[Any]] | None = getattr(
    structlog.contextvars, "_CONTEXT_VARS", None
)


def _structlog_bound() -> Any:
    if _STRUCTLOG_VARS is None:
        return structlog.contextvars.get_contextvars().get("correlation_id")
    var = _STRUCTLOG_VARS.get("structlog_correlation_id")
    value = var.get(None) if var is not None else None
    return None if value is Ellipsis else value  # structlog marks unbound keys with ...


def begin_request() -> tuple[str, contextvars.Token[str | None] | None]:
    """The id for a new request, and the token to give :func:`end_request` (``None`` when
    the caller's own id is used and nothing was set)."""
    current = correlation_id.get()
    if current is not None:
        return current, None
    bound = _structlog_bound()
    chosen = str(bound) if bound is not None else _new_id()
    return chosen, correlation_id.set(chosen)


def end_request(token: contextvars.Token[str | None] | None) -> None:
    """Restore the caller's correlation id after a request."""
    if token is not None:
        try:  # noqa: SIM105  # suppress() would cost a context manager per request
            correlation_id.reset(token)
        except ValueError:
            pass  # a stream closed from another task's context: that context keeps it


def add_correlation_id(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor adding ``correlation_id`` to events logged during a request."""
    current = correlation_id.get()
    if current is not None:
        event_dict.setdefault("correlation_id", current)
    return event_dict
