"""The attempt plan of one request: which backend next, whether to wait, when to give up.

The service asks the plan for backends (:meth:`AttemptPlan.attempts`) and reports each
failure (:meth:`AttemptPlan.failed`). The plan retries retryable failures on the same
backend after a backoff that fits the request deadline, fails over on the rest, raises
final (caller) errors at once, and builds ``AllBackendsFailedError`` naming every attempt
and every skipped backend when nothing could serve.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from attrs import define, field

from llmbackend._observer import NOOP_REQUEST, AttemptObservation, RequestObservation
from llmbackend.backends.base import BaseLlmBackend
from llmbackend.errors import (
    AllBackendsFailedError,
    BackendError,
    BackendTimeoutError,
    BudgetExceededError,
    CircuitOpenError,
    ContentFilteredError,
    ContextLengthExceededError,
    NotSupportedError,
)

if TYPE_CHECKING:
    from llmbackend._breaker import CircuitState

__all__ = ["AttemptPlan", "RetryPolicy"]


class RetryPolicy(Protocol):
    """What the plan needs from the service."""

    def max_retries_for(self, backend: BaseLlmBackend) -> int: ...

    def backoff_delay(self, attempt: int, retry_after: float | None) -> float: ...


@define
class PlanCounters:
    failovers: int = 0
    retries: int = 0


@define
class AttemptPlan:
    policy: RetryPolicy
    queue: list[BaseLlmBackend]
    deadline: float
    sleep: Callable[[float], Awaitable[Any]]
    log: Any
    counters: PlanCounters
    failover_on_content_filter: bool = False
    errors: list[Exception] = field(factory=list)
    skipped: dict[str, str] = field(factory=dict)
    observation: RequestObservation = NOOP_REQUEST
    _retry_delay: float | None = None
    #: Attempts started so far (across backends) and the wait before the next one.
    _started: int = 0
    _waited: float = 0.0
    _attempt: int = 0
    _again: bool = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def _pending_delay(self) -> float | None:
        return self._retry_delay

    def _pending_again(self) -> bool:
        return self._again

    async def attempts(self) -> AsyncGenerator[BaseLlmBackend, None]:
        """Backends to try, in order, with retries; close it (``aclosing``) when done."""
        previous: str | None = None
        while self.queue:
            backend = self.queue.pop(0)
            if self.errors:
                self.counters.failovers += 1
                self.log.info("backend_fallback", backend=backend.name, from_backend=previous)
                self.observation.fallback(previous, backend.name)
            previous = backend.name
            retries = self.policy.max_retries_for(backend)
            attempt = 0
            while True:
                if self.remaining() <= 0:
                    self.errors.append(
                        BackendTimeoutError("the request deadline was spent", backend=backend.name)
                    )
                    return
                self._retry_delay, self._attempt, self._again = None, attempt, False
                yield backend
                if self._pending_again():
                    continue  # same backend again at once (e.g. prefill refused → restart)
                delay = self._pending_delay()
                if delay is None or attempt >= retries:
                    break  # success (the caller stopped), fail-over, or retries used up
                if delay >= self.remaining():
                    self.log.info(
                        "backend_retry_skipped", backend=backend.name, delay_s=round(delay, 3)
                    )
                    break  # waiting would overrun the deadline: fail over at once
                attempt += 1
                self.counters.retries += 1
                self.log.info(
                    "backend_retry_scheduled",
                    backend=backend.name,
                    attempt=attempt,
                    delay_s=round(delay, 3),
                )
                self.observation.retry_scheduled(backend.name, attempt, delay)
                await self.sleep(delay)
                self._waited = delay

    def attempt_started(
        self, backend: BaseLlmBackend, circuit_state: CircuitState
    ) -> AttemptObservation:
        """Tell the observer the call to ``backend`` begins (after the breaker admitted it)."""
        self._started += 1
        waited, self._waited = self._waited, 0.0
        return self.observation.attempt_started(backend, self._started, waited, circuit_state)

    def skip(self, name: str, reason: str) -> None:
        """Record that backend ``name`` is not tried for this request, and why."""
        self.skipped[name] = reason
        self.observation.skipped(name, reason)

    def again(self) -> None:
        """Try the backend just yielded once more, without waiting or counting a retry."""
        self._again = True

    def failed(self, backend: BaseLlmBackend, exc: BackendError | NotSupportedError) -> None:
        """Record a failure; raises it when it is final (no retry, no failover)."""
        if isinstance(exc, NotSupportedError):
            self.skip(backend.name, str(exc))
            return
        if isinstance(exc, CircuitOpenError | BudgetExceededError):
            # Not attempted: the breaker is open or the budget is spent. Say so, move on.
            self.skip(backend.name, exc.message)
            return
        self.errors.append(exc)
        final = not exc.allows_failover and not (
            self.failover_on_content_filter and isinstance(exc, ContentFilteredError)
        )
        if final:
            raise exc
        if isinstance(exc, ContextLengthExceededError):
            self._prefer_larger_context(backend)
        if exc.retryable:
            self._retry_delay = self.policy.backoff_delay(self._attempt, exc.retry_after)

    def exhausted(self, operation: str) -> AllBackendsFailedError:
        tried = len({getattr(e, "backend", None) for e in self.errors})
        return AllBackendsFailedError(
            f"{operation} failed on every backend ({tried} tried, {len(self.skipped)} skipped)",
            self.errors,
            self.skipped,
        )

    def _prefer_larger_context(self, failed: BaseLlmBackend) -> None:
        """After a context-length error, try backends with larger known windows first."""
        limit = failed.config.max_input_tokens or 0
        self.queue.sort(key=lambda b: -(b.config.max_input_tokens or limit))
