"""The Gemini ``generateContent`` answers: responses, usage, safety blocks, embeddings, errors.

Pure functions, no I/O. Shapes that are wrong raise :class:`MalformedResponseError` naming
what was wrong, never a bare ``KeyError``. Requests are encoded in ``_gemini_request``,
streams parsed in ``_gemini_stream``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import attrs

from llmbackend.backends._gemini_request import generated_call_id
from llmbackend.errors import (
    MAX_RETRY_AFTER_SECONDS,
    ContentFilteredError,
    MalformedResponseError,
)
from llmbackend.models import FinishReason, ToolCall, Usage

__all__ = [
    "Answer",
    "Candidate",
    "check_prompt_feedback",
    "embedding_values",
    "error_reasons",
    "error_status",
    "filtered_error",
    "finish_reason",
    "parse_answer",
    "parse_candidate",
    "parse_usage",
    "per_day_quota",
    "retry_delay",
]

_FINISH_REASONS: Mapping[str, FinishReason] = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "SAFETY": FinishReason.CONTENT_FILTER,
    "RECITATION": FinishReason.CONTENT_FILTER,
    "BLOCKLIST": FinishReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "SPII": FinishReason.CONTENT_FILTER,
    "IMAGE_SAFETY": FinishReason.CONTENT_FILTER,
    "MALFORMED_FUNCTION_CALL": FinishReason.ERROR,
    "UNEXPECTED_TOOL_CALL": FinishReason.ERROR,
    "TOO_MANY_TOOL_CALLS": FinishReason.ERROR,
}
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?)s\s*")


def _malformed(backend: str, what: str) -> MalformedResponseError:
    return MalformedResponseError(what, backend=backend)


def _as_dict(value: Any, backend: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(backend, f"{what} is not a JSON object: {str(value)[:80]!r}")
    return value


def _list(value: Any, backend: str, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _malformed(backend, f"{what} is not a list")
    return value


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- answers -------------------------------------------------------------------------------


def finish_reason(raw: str | None, *, called_tools: bool = False) -> FinishReason | None:
    """The normalised finish reason; a normal stop that called functions is ``tool_calls``."""
    reason = _FINISH_REASONS.get(raw) if raw else None
    if called_tools and reason in (FinishReason.STOP, None):
        return FinishReason.TOOL_CALLS
    return reason


def parse_usage(raw: Any) -> Usage:
    """Token counts from ``usageMetadata``; thinking tokens count as completion tokens."""
    if not isinstance(raw, dict):
        return Usage()
    prompt = _int(raw.get("promptTokenCount"))
    completion = _int(raw.get("candidatesTokenCount")) + _int(raw.get("thoughtsTokenCount"))
    total = raw.get("totalTokenCount")
    return Usage.of(
        prompt,
        completion,
        _int(total) if total is not None else None,
        _int(raw.get("cachedContentTokenCount")),
    )


def _blocked_categories(ratings: Any) -> list[str]:
    if not isinstance(ratings, list):
        return []
    return [
        str(rating.get("category"))
        for rating in ratings
        if isinstance(rating, dict)
        and (rating.get("blocked") or rating.get("probability") in ("MEDIUM", "HIGH"))
    ]


def filtered_error(what: str, reason: str, ratings: Any, backend: str) -> ContentFilteredError:
    categories = _blocked_categories(ratings)
    detail = f" ({', '.join(categories)})" if categories else ""
    return ContentFilteredError(
        f"{what} was blocked: {reason}{detail}", backend=backend, code=reason, retryable=False
    )


def check_prompt_feedback(body: Mapping[str, Any], backend: str) -> None:
    """Raise :class:`ContentFilteredError` when the prompt itself was blocked."""
    feedback = body.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        raise filtered_error(
            "the prompt", str(feedback["blockReason"]), feedback.get("safetyRatings"), backend
        )


@attrs.frozen
class Candidate:
    """What the first candidate of one response (or chunk) says."""

    text: str
    calls: tuple[tuple[str | None, str, str], ...]  # (id from the API, name, arguments JSON)
    raw_reason: str | None
    ratings: Any


def parse_candidate(body: Mapping[str, Any], backend: str) -> Candidate | None:
    """The first candidate's text (thought parts skipped), function calls and finish reason."""
    candidates = _list(body.get("candidates"), backend, "candidates")
    if not candidates:
        return None
    candidate = _as_dict(candidates[0], backend, "candidates[0]")
    content = candidate.get("content") or {}
    parts = _list(_as_dict(content, backend, "candidate content").get("parts"), backend, "parts")
    texts: list[str] = []
    calls: list[tuple[str | None, str, str]] = []
    for raw in parts:
        part = _as_dict(raw, backend, "a content part")
        if isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
        if "functionCall" in part:
            call = _as_dict(part["functionCall"], backend, "functionCall")
            if not isinstance(call.get("name"), str):
                raise _malformed(backend, "a functionCall has no name")
            call_id = call.get("id")
            calls.append(
                (
                    call_id if isinstance(call_id, str) and call_id else None,
                    call["name"],
                    json.dumps(call.get("args") or {}),
                )
            )
    reason = candidate.get("finishReason")
    return Candidate(
        "".join(texts),
        tuple(calls),
        reason if isinstance(reason, str) else None,
        candidate.get("safetyRatings"),
    )


@attrs.frozen
class Answer:
    """A whole ``generateContent`` answer."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    raw_reason: str | None
    reason: FinishReason | None
    model: str | None
    usage: Usage


def parse_answer(body: Any, backend: str) -> Answer:
    """Parse a ``generateContent`` answer; blocked prompts and answers raise."""
    answer = _as_dict(body, backend, "the generateContent answer")
    check_prompt_feedback(answer, backend)
    candidate = parse_candidate(answer, backend)
    if candidate is None:
        raise _malformed(backend, "the generateContent answer has no candidates")
    reason = finish_reason(candidate.raw_reason, called_tools=bool(candidate.calls))
    if reason is FinishReason.CONTENT_FILTER and not candidate.text and not candidate.calls:
        # An empty answer would pass for a real one: say what blocked it instead.
        raise filtered_error("the answer", candidate.raw_reason or "", candidate.ratings, backend)
    calls = tuple(
        ToolCall(id=call_id or generated_call_id(index), name=name, arguments=arguments)
        for index, (call_id, name, arguments) in enumerate(candidate.calls)
    )
    model = answer.get("modelVersion")
    return Answer(
        candidate.text,
        calls,
        candidate.raw_reason,
        reason,
        model if isinstance(model, str) and model else None,
        parse_usage(answer.get("usageMetadata")),
    )


# --- embeddings and errors ----------------------------------------------------------------


def embedding_values(value: Any, backend: str) -> tuple[float, ...]:
    """The vector of one ``ContentEmbedding`` (``{"values": [...]}``)."""
    values = _as_dict(value, backend, "an embedding").get("values")
    if not isinstance(values, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in values
    ):
        raise _malformed(backend, "an embedding has no list of numbers in values")
    return tuple(float(x) for x in values)


def _details(text: str) -> list[dict[str, Any]]:
    try:
        body = json.loads(text)
    except ValueError:
        return []
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def retry_delay(text: str) -> float | None:
    """The wait a ``google.rpc.RetryInfo`` detail asks for (``"17s"``, ``"0.5s"``), capped."""
    for detail in _details(text):
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and (match := _DURATION.fullmatch(delay)):
            return min(float(match.group(1)), MAX_RETRY_AFTER_SECONDS)
    return None


def per_day_quota(text: str) -> bool:
    """Whether a 429 names a per-day quota (waiting seconds will not help)."""
    for detail in _details(text):
        for violation in detail.get("violations") or []:
            if isinstance(violation, dict) and "PerDay" in str(violation.get("quotaId", "")):
                return True
    return False


def error_status(text: str) -> str | None:
    """The ``error.status`` name of a Google error body (``RESOURCE_EXHAUSTED``, ...)."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    status = error.get("status") if isinstance(error, dict) else None
    return status if isinstance(status, str) and status else None


def error_reasons(text: str) -> set[str]:
    """The ``google.rpc.ErrorInfo`` reasons of an error body (e.g. ``API_KEY_INVALID``)."""
    return {str(d["reason"]) for d in _details(text) if "reason" in d}
