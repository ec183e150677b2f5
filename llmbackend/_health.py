"""Backend health: active checks on a schedule plus passive signals from real traffic.

``unhealthy_threshold`` consecutive failures mark a backend unhealthy (strategies skip it);
``healthy_threshold`` consecutive successes bring it back. With ``health_check.enabled``
false nothing is ever marked unhealthy: without active checks, a skipped backend could
never prove it recovered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from attrs import define, field

from llmbackend.backends.base import BaseLlmBackend
from llmbackend.models import BackendHealth
from llmbackend.settings import HealthCheckSettings

__all__ = ["HealthMonitor", "HealthState"]


@define
class HealthState:
    healthy: bool = True
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_checked_at: datetime | None = None
    last_error: str | None = None


@define
class HealthMonitor:
    """Tracks whether each backend is healthy; runs the periodic check task when enabled."""

    backends: Sequence[BaseLlmBackend]
    settings: HealthCheckSettings
    log: Any
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    _states: dict[str, HealthState] = field(init=False)
    _task: asyncio.Task[None] | None = None

    def __attrs_post_init__(self) -> None:
        self._states = {backend.name: HealthState() for backend in self.backends}

    def is_healthy(self, name: str) -> bool:
        return self._states[name].healthy

    def state(self, name: str) -> HealthState:
        return self._states[name]

    def record(self, name: str, *, ok: bool, error: str | None = None) -> None:
        """Count one outcome (an active check or a real call) for ``name``."""
        if not self.settings.enabled:
            return
        state = self._states[name]
        if ok:
            state.consecutive_successes += 1
            state.consecutive_failures = 0
            if not state.healthy and state.consecutive_successes >= self.settings.healthy_threshold:
                state.healthy = True
                self.log.info("backend_healthy", backend=name)
        else:
            state.consecutive_failures += 1
            state.consecutive_successes = 0
            state.last_error = error
            if state.healthy and state.consecutive_failures >= self.settings.unhealthy_threshold:
                state.healthy = False
                self.log.warning("backend_unhealthy", backend=name, error=error)

    async def check_all(self) -> dict[str, BackendHealth]:
        """Check every backend concurrently, record the results and return them."""
        timeout = self.settings.timeout_seconds
        async with asyncio.TaskGroup() as group:
            tasks = {
                backend.name: group.create_task(backend.get_health(timeout))
                for backend in self.backends
            }
        results = {name: task.result() for name, task in tasks.items()}
        for name, health in results.items():
            self._states[name].last_checked_at = health.checked_at
            self.record(name, ok=health.available, error=health.error)
        return results

    def start(self) -> None:
        """Start the periodic checks (when enabled). Idempotent."""
        if self.settings.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="llmbackend-health-checks")

    async def aclose(self) -> None:
        """Stop the periodic checks and wait for the task to end. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        # Real traffic is the first signal; a short-lived process should not pay for checks.
        while True:
            await self.sleep(self.settings.interval_seconds)
            await self.check_all()
