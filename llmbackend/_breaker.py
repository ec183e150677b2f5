"""Per-backend circuit breaker: closed → open → half-open → closed (or open again).

* closed: calls flow; outcomes are kept for ``sampling_duration_seconds``. Once at least
  ``minimum_throughput`` calls were seen in that window and ``failure_threshold`` of them
  failed, the breaker opens.
* open: calls are refused (``CircuitOpenError``) for ``duration_of_break_seconds``.
* half-open: up to ``half_open_max_probes`` calls go through; a success closes the breaker,
  a failure opens it again.

Only failures that say something about the backend count: caller errors (400 validation,
401/403, context length, content filter) have ``trips_breaker = False`` and count as the
backend having answered.
"""

from __future__ import annotations

import collections
import enum
import time
from collections.abc import Callable

from attrs import define, field, frozen

from llmbackend.errors import BackendError
from llmbackend.settings import CircuitBreakerSettings

__all__ = ["BreakerSnapshot", "CircuitBreaker", "CircuitState"]


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@frozen(kw_only=True)
class BreakerSnapshot:
    """The breaker as statistics report it."""

    state: CircuitState
    failures_in_window: int
    calls_in_window: int
    #: Seconds until an open breaker lets a probe through (0 unless open).
    retry_in_seconds: float
    times_opened: int


TransitionHook = Callable[[str, CircuitState, CircuitState], None]


@define
class CircuitBreaker:
    """The breaker of one backend. ``clock`` is injectable for tests."""

    name: str
    settings: CircuitBreakerSettings
    clock: Callable[[], float] = time.monotonic
    on_transition: TransitionHook | None = None
    _state: CircuitState = CircuitState.CLOSED
    _opened_at: float = 0.0
    _probes: int = 0
    _times_opened: int = 0
    #: (time, failed) of recent outcomes while closed.
    _outcomes: collections.deque[tuple[float, bool]] = field(factory=collections.deque)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def state(self) -> CircuitState:
        """The current state; an open breaker turns half-open once its break is over."""
        if (
            self._state is CircuitState.OPEN
            and self.clock() - self._opened_at >= self.settings.duration_of_break_seconds
        ):
            self._move(CircuitState.HALF_OPEN)
        return self._state

    def allow(self) -> bool:
        """Whether a call may go through now. A half-open admission must be settled with
        :meth:`record_success`, :meth:`record_failure` or :meth:`release`."""
        if not self.enabled:
            return True
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and self._probes < self.settings.half_open_max_probes:
            self._probes += 1
            return True
        return False

    def retry_in(self) -> float:
        """Seconds until the open breaker admits a probe."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        elapsed = self.clock() - self._opened_at
        return max(self.settings.duration_of_break_seconds - elapsed, 0.0)

    def record_success(self) -> None:
        if not self.enabled:
            return
        if self._state is CircuitState.HALF_OPEN:
            self._move(CircuitState.CLOSED)
            return
        self._remember(failed=False)

    def record_failure(self, error: BaseException) -> None:
        if not self.enabled:
            return
        if isinstance(error, BackendError) and not error.trips_breaker:
            self.record_success()  # the backend answered; the caller was wrong
            return
        if self._state is CircuitState.HALF_OPEN:
            self._open()
            return
        if self._state is CircuitState.OPEN:
            return
        self._remember(failed=True)
        failures = sum(failed for _, failed in self._outcomes)
        if (
            len(self._outcomes) >= self.settings.minimum_throughput
            and failures >= self.settings.failure_threshold
        ):
            self._open()

    def release(self) -> None:
        """Give back a half-open admission whose call ended without an outcome (cancelled)."""
        if self._state is CircuitState.HALF_OPEN and self._probes:
            self._probes -= 1

    def snapshot(self) -> BreakerSnapshot:
        state = self.state
        self._prune()
        return BreakerSnapshot(
            state=state,
            failures_in_window=sum(failed for _, failed in self._outcomes),
            calls_in_window=len(self._outcomes),
            retry_in_seconds=self.retry_in(),
            times_opened=self._times_opened,
        )

    # --- internals -------------------------------------------------------------------------

    def _remember(self, *, failed: bool) -> None:
        self._outcomes.append((self.clock(), failed))
        self._prune()

    def _prune(self) -> None:
        horizon = self.clock() - self.settings.sampling_duration_seconds
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()

    def _open(self) -> None:
        self._opened_at = self.clock()
        self._times_opened += 1
        self._move(CircuitState.OPEN)

    def _move(self, new: CircuitState) -> None:
        old, self._state = self._state, new
        self._probes = 0
        if new is not CircuitState.OPEN:
            self._outcomes.clear()
        if old is not new and self.on_transition is not None:
            self.on_transition(self.name, old, new)
