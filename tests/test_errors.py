"""The error tree and the single translation boundary for transport failures."""

from __future__ import annotations

import json

import aiohttp
import pytest

from llmbackend import errors
from llmbackend.errors import (
    AllBackendsFailedError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigProblem,
    ConfigurationError,
    LlmBackendError,
    MalformedResponseError,
    RateLimitedError,
    map_transport_errors,
    parse_retry_after,
)


def test_every_public_error_derives_from_the_root() -> None:
    """Catching LlmBackendError catches everything the SDK raises."""
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, LlmBackendError), name


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (TimeoutError(), BackendTimeoutError),
        (aiohttp.ServerTimeoutError("read"), BackendTimeoutError),
        (ConnectionResetError("reset"), BackendUnavailableError),
        (aiohttp.ServerDisconnectedError(), BackendUnavailableError),
        (aiohttp.ClientPayloadError("cut"), BackendUnavailableError),
        (json.JSONDecodeError("bad", "{", 0), MalformedResponseError),
        (KeyError("choices"), MalformedResponseError),
    ],
)
def test_transport_errors_are_translated_and_chained(
    raised: Exception, expected: type[Exception]
) -> None:
    """aiohttp/asyncio/JSON failures become SDK errors naming the backend, chained with from."""
    with pytest.raises(expected) as caught, map_transport_errors("b1"):
        raise raised
    assert caught.value.__cause__ is raised
    assert caught.value.backend == "b1"  # type: ignore[attr-defined]


def test_sdk_errors_pass_through_untouched() -> None:
    """An SDK error raised inside the boundary is not re-wrapped."""
    original = RateLimitedError("slow", backend="b1", retry_after=1.0)
    with pytest.raises(RateLimitedError) as caught, map_transport_errors("b1"):
        raise original
    assert caught.value is original


def test_retry_after_formats() -> None:
    """Retry-After in seconds, as an HTTP date and retry-after-ms are understood and capped."""
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480) == 10
    assert parse_retry_after({"Retry-After": "86400"}) == errors.MAX_RETRY_AFTER_SECONDS
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


def test_retryability_defaults() -> None:
    """429 and 5xx are retried; timeouts fail over instead of retrying a silent route."""
    assert RateLimitedError("x").retryable
    assert BackendUnavailableError("x").retryable
    assert not BackendTimeoutError("x").retryable
    assert BackendTimeoutError("x").allows_failover


def test_configuration_error_lists_every_problem() -> None:
    """A ConfigurationError shows each problem with its path."""
    error = ConfigurationError(
        [ConfigProblem("backends[0].type", "missing"), ConfigProblem("timeout_seconds", "bad")]
    )
    assert str(error) == (
        "invalid llmbackend configuration (2 problems):\n"
        "  - backends[0].type: missing\n"
        "  - timeout_seconds: bad"
    )


def test_all_backends_failed_is_an_exception_group() -> None:
    """except* can pick attempt errors out of AllBackendsFailedError."""
    group = AllBackendsFailedError(
        "failed", [RateLimitedError("a"), BackendUnavailableError("b")], {"c": "disabled"}
    )
    caught: list[BaseException] = []
    try:
        raise group
    except* RateLimitedError as matched:
        caught.extend(matched.exceptions)
    except* BackendUnavailableError:
        pass
    assert [type(e) for e in caught] == [RateLimitedError]
    assert isinstance(group, LlmBackendError)
    assert group.skipped == {"c": "disabled"}


def test_all_backends_failed_says_whether_any_backend_was_tried() -> None:
    """attempted is True when a backend was tried, False when every one was skipped (the
    group then holds a placeholder), and except* splits keep it."""
    tried = AllBackendsFailedError("failed", [RateLimitedError("a", backend="a")])
    untried = AllBackendsFailedError("failed", [], {"a": "circuit open"})
    assert (tried.attempted, untried.attempted) == (True, False)
    assert len(untried.exceptions) == 1
    rest = untried.split(BackendUnavailableError)[0]
    assert rest is not None
    assert rest.attempted is False
