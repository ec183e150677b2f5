"""Secret hygiene: the one redaction step for log events, exception messages and span attributes.

A :class:`Redactor` replaces, in any text:

* every configured secret value (each backend's ``api_key``, the values of credential
  headers in ``additional_headers``, the ``caching`` and ``memory`` connection strings),
  wherever it appears;
* bearer and basic credentials (``Bearer sk-...``);
* credential headers and key/value pairs (``Authorization: ...``, ``api-key=...``,
  ``x-api-key``, ``x-goog-api-key``, ``"api_key": "..."``) and ``?key=`` URL parameters;
* ``password=`` pairs and the password of a ``scheme://user:password@host`` URL;
* the shapes of well-known provider keys (``sk-...``, ``AIza...``);
* any extra pattern from ``telemetry.redact_patterns``.

One compiled expression does all of it, so a clean string costs a single scan.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from attrs import field, frozen

from llmbackend.settings import LlmSettings

__all__ = ["REDACTED", "SENSITIVE_HEADERS", "Redactor", "redactor_for", "secrets_of_headers"]

#: What a redacted value is replaced with.
REDACTED = "[REDACTED]"

#: Header (and log field) names whose values are credentials, lower-cased.
SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "x-goog-api-key"}
)
_SENSITIVE_KEYS = SENSITIVE_HEADERS | frozenset(
    {"api_key", "apikey", "connection_string", "password", "secret", "access_token"}
)
#: Configured values shorter than this are not treated as secrets: redacting every "ab"
#: would mangle logs without protecting anything.
MIN_SECRET_LENGTH = 4

_NAMES = (
    r"authorization|proxy-authorization|api[-_]?key|x-api-key|x-goog-api-key"
    r"|access[-_]?token|connection[-_]?string|password|passwd|pwd"
)
_BUILTIN = (
    # Bearer / Basic credentials: keep the scheme, drop the token.
    r"(?P<scheme>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{6,}",
    # name: value, name=value, "name": "value" (an optional scheme is part of the value).
    rf"(?P<name>\b(?:{_NAMES})[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic)\s+)?[^\s\"',;&}}]+",
    # URL query credentials (Gemini's ?key=, OAuth's access_token=).
    r"(?P<param>[?&](?:key|api[-_]?key|access_token|token)=)[^&\s\"'#]+",
    # Well-known key shapes: OpenAI / Anthropic (sk-...), Google (AIza...).
    r"\bsk-[A-Za-z0-9_-]{16,}",
    r"\bAIza[0-9A-Za-z_-]{30,}",
)


def _compile(secrets: frozenset[str], extra: tuple[str, ...]) -> re.Pattern[str]:
    # Longest first, so a secret containing another one is replaced whole.
    literal = "|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True))
    # Without secrets the group never matches, but exists: extra patterns then compile (or
    # fail to) the same way whether or not keys are configured.
    parts = [f"(?P<secret>{literal or '(?!)'})", *_BUILTIN]
    parts += [f"(?:{pattern})" for pattern in extra]
    return re.compile("|".join(parts), re.IGNORECASE)


def _replace(match: re.Match[str]) -> str:
    groups = match.groupdict()
    for prefix in ("scheme", "name", "param"):
        if groups.get(prefix) is not None:
            return groups[prefix] + REDACTED
    return REDACTED


def _frozenset(values: Iterable[str]) -> frozenset[str]:
    return frozenset(values)


def _tuple(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@frozen(kw_only=True)
class Redactor:
    """Removes secrets from text, log events, exceptions and attribute values.

    ``secrets`` are literal values to remove wherever they occur; ``patterns`` are extra
    regular expressions. Neither appears in the redactor's repr.
    """

    secrets: frozenset[str] = field(default=frozenset(), converter=_frozenset, repr=False)
    patterns: tuple[str, ...] = field(default=(), converter=_tuple, repr=False)
    _pattern: re.Pattern[str] = field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        kept = frozenset(s for s in self.secrets if len(s) >= MIN_SECRET_LENGTH)
        object.__setattr__(self, "secrets", kept)
        object.__setattr__(self, "_pattern", _compile(kept, self.patterns))

    def including(self, values: Iterable[str | None]) -> Redactor:
        """This redactor plus ``values`` as secrets (``self`` when they are all known)."""
        new = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH} - self.secrets
        if not new:
            return self
        return Redactor(secrets=self.secrets | new, patterns=self.patterns)

    # --- text and values ------------------------------------------------------------------

    def text(self, value: str) -> str:
        """``value`` with every secret replaced by ``[REDACTED]``."""
        if self._pattern.search(value) is None:
            return value
        return self._pattern.sub(_replace, value)

    def value(self, value: Any, key: str | None = None) -> Any:
        """A log or attribute value, redacted; containers are walked (copied, not mutated)."""
        if key is not None and key.lower() in _SENSITIVE_KEYS and value is not None:
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.value(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(item) for item in value)
        if isinstance(value, BaseException):
            return self.text(f"{type(value).__name__}: {value}")
        return value

    def __call__(self, _logger: Any, _method: str, event_dict: Any) -> Any:
        """A structlog processor: redact every field of the event (``exc_info`` is left for
        the renderer, which formats the traceback later)."""
        return {
            key: value if key == "exc_info" else self.value(value, key)
            for key, value in event_dict.items()
        }

    # --- exceptions -----------------------------------------------------------------------

    def scrub(self, error: BaseException) -> BaseException:
        """Redact ``error``'s message in place, with its causes and group members.

        The SDK's errors keep their text in ``args`` and ``message``; both are rewritten,
        so ``str()``, ``repr()`` and tracebacks show the redacted text.
        """
        seen: set[int] = set()
        stack = [error]
        while stack:
            current = stack.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            if any(isinstance(arg, str) for arg in current.args):
                current.args = tuple(
                    self.text(arg) if isinstance(arg, str) else arg for arg in current.args
                )
            message = getattr(current, "message", None)
            if isinstance(message, str):
                try:  # noqa: SIM105  # ExceptionGroup.message is read-only; contextlib is slower
                    current.message = self.text(message)  # type: ignore[attr-defined]
                except AttributeError:
                    pass
            stack += [e for e in (current.__cause__, current.__context__) if e is not None]
            if isinstance(current, BaseExceptionGroup):
                stack += list(current.exceptions)
        return error


def secrets_of_headers(headers: Mapping[str, str]) -> list[str]:
    """The values of credential headers (``Authorization`` keeps only its token too)."""
    values = []
    for name, value in headers.items():
        if name.lower() in SENSITIVE_HEADERS and value:
            values.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in {"bearer", "basic"}:
                values.append(token)
    return values


def redactor_for(settings: LlmSettings) -> Redactor:
    """The redactor of a service: every configured secret plus ``telemetry.redact_patterns``."""
    values: list[str | None] = []
    for connection in (settings.caching.connection_string, settings.memory.connection_string):
        values.append(connection)
        if connection and "://" in connection:
            with contextlib.suppress(ValueError):
                values.append(urlsplit(connection).password)  # alone, it is still a secret
    for backend in settings.backends:
        values.append(backend.api_key)
        values += secrets_of_headers(backend.additional_headers)
    return Redactor(patterns=settings.telemetry.redact_patterns).including(values)
