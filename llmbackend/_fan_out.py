"""The simultaneous strategy: every eligible backend at once, bounded by the deadline.

Each branch retries on its own backend; when the deadline passes, unfinished branches are
cancelled and awaited, so nothing outlives the call. The primary answer is the fastest
success or the best-priority one (``simultaneous_primary``); the other successes become
``alternative_responses`` and the failures ``failed_alternatives``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import attrs

from llmbackend._observer import RequestObservation
from llmbackend.backends.base import BaseLlmBackend, Capability
from llmbackend.errors import AllBackendsFailedError, BackendTimeoutError
from llmbackend.models import ChatRequest, LlmResponse
from llmbackend.settings import SelectionStrategy, SimultaneousPrimary

if TYPE_CHECKING:
    from llmbackend._prompting import PreparedChat
    from llmbackend.service import LlmService

__all__ = ["fan_out"]


async def fan_out(
    service: LlmService,
    request: ChatRequest,
    observation: RequestObservation,
    prepared: PreparedChat | None = None,
) -> LlmResponse:
    """Ask every eligible backend at once; see the module docstring. A ``prepared`` request
    is built for each backend by its prompt builder."""
    plan = service.plan_for(request, Capability.CHAT, observation)
    single = attrs.evolve(request, selection_strategy=SelectionStrategy.SPECIFIC)

    async def one(backend: BaseLlmBackend) -> tuple[float, LlmResponse]:
        branch = service.plan_for(
            attrs.evolve(single, preferred_backend=backend.name),
            Capability.CHAT,
            observation,
            report_skips=False,  # the whole request's plan reported them once
        )
        branch.deadline = plan.deadline
        call = prepared.chat if prepared else lambda b: b.chat(request)
        response = await service.serve(branch, Capability.CHAT, call, prepared or request)
        return time.monotonic(), response

    tasks = {backend: asyncio.create_task(one(backend)) for backend in plan.queue}
    try:
        if tasks:
            await asyncio.wait(tasks.values(), timeout=max(plan.remaining(), 0))
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    successes: list[tuple[float, int, LlmResponse]] = []
    failures: list[Exception] = []
    for rank, (backend, task) in enumerate(tasks.items()):
        if task.cancelled():
            failures.append(
                BackendTimeoutError("no answer before the deadline", backend=backend.name)
            )
        elif (error := task.exception()) is not None:
            failures.append(_innermost(error))
        else:
            finished_at, response = task.result()
            successes.append((finished_at, rank, response))
    if not successes:
        plan.errors.extend(failures)
        raise plan.exhausted("chat")
    by_priority = service.settings.simultaneous_primary is SimultaneousPrimary.PRIORITY
    successes.sort(key=lambda item: item[1] if by_priority else item[0])
    primary = successes[0][2]
    return attrs.evolve(
        primary,
        alternative_responses=[response for _, _, response in successes[1:]],
        failed_alternatives=failures,
    )


def _innermost(error: BaseException) -> Exception:
    """A fan-out branch's own error (unwrapping its one-backend AllBackendsFailedError)."""
    if isinstance(error, AllBackendsFailedError) and error.exceptions:
        last = error.exceptions[-1]
        return last if isinstance(last, Exception) else error
    return error if isinstance(error, Exception) else RuntimeError(repr(error))
