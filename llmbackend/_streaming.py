"""Streaming across backends: transparent failover before the first token, then recovery.

Before any content reached the caller, every failure fails over like a normal call. After
it, ``stream_recovery`` decides:

* ``raise``: ``StreamInterruptedError`` with all the text shown so far and any usage;
* ``restart``: a ``StreamRestarted`` event (discard everything shown), then the whole
  answer from the next backend;
* ``continue``: the next backend continues the partial text through an assistant-prefix
  prefill; if it refuses the prefill, that backend restarts instead; if everything fails,
  the caller gets the real cut, not the prefill refusal.

Whatever the mode, a truncated stream never ends like a complete one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING

import attrs

from llmbackend._observer import NOOP_REQUEST, RequestObservation
from llmbackend.backends.base import BaseLlmBackend, Capability
from llmbackend.errors import (
    BackendError,
    BackendTimeoutError,
    InvalidRequestError,
    NotSupportedError,
    StreamInterruptedError,
)
from llmbackend.models import (
    ChatMessage,
    ChatRequest,
    StreamEvent,
    StreamRestarted,
    TextDelta,
    ToolCallDelta,
    UsageEvent,
)
from llmbackend.settings import StreamRecovery

if TYPE_CHECKING:
    from llmbackend._prompting import PreparedChat
    from llmbackend.service import LlmService

__all__ = ["recovering_stream"]

GuardedStream = Callable[[BaseLlmBackend, ChatRequest], AsyncGenerator[StreamEvent, None]]


def _with_prefill(request: ChatRequest, partial: str) -> ChatRequest:
    # Providers reject a prefill ending in whitespace (Anthropic does); the model restores it.
    prefix = ChatMessage.assistant(partial.rstrip())
    return attrs.evolve(request, messages=(*request.messages, prefix))


async def _first_then_rest(
    events: AsyncIterator[StreamEvent], limit: float, backend: str
) -> AsyncIterator[StreamEvent]:
    """The stream's events; the first must come before the request deadline."""
    try:
        async with asyncio.timeout(limit):
            first = await anext(events, None)
    except TimeoutError:
        raise BackendTimeoutError(
            "no first event before the request deadline", backend=backend
        ) from None
    if first is None:
        return
    yield first
    async for event in events:
        yield event


async def recovering_stream(  # noqa: PLR0912, PLR0915  # the recovery decisions read best together
    service: LlmService,
    request: ChatRequest,
    observation: RequestObservation = NOOP_REQUEST,
    prepared: PreparedChat | None = None,
) -> AsyncGenerator[StreamEvent, None]:
    """The service's stream: failover, then ``stream_recovery`` after content was shown.
    A ``prepared`` request is built per attempt by the backend's prompt builder."""
    mode = request.stream_recovery or service.settings.stream_recovery
    plan = service.plan_for(request, Capability.STREAMING, observation)
    shown = ""  # the answer text the caller has now
    cut: StreamInterruptedError | None = None
    cut_backend = ""
    prefill_refused: set[str] = set()
    async with contextlib.aclosing(plan.attempts()) as attempts:
        async for backend in attempts:
            prefill = bool(
                mode is StreamRecovery.CONTINUE
                and cut is not None
                and shown
                and backend.supports(Capability.PREFILL)
                and backend.name not in prefill_refused
            )
            attempt = _with_prefill(request, shown) if prefill else request
            delivered = False
            usage = None
            try:
                if prepared is not None:  # inside the try: a builder's refusal is final here
                    attempt = prepared.shape(backend, attempt)
                async with (
                    service.state.attempt(backend, attempt) as bill,
                    contextlib.aclosing(service.guard.stream(backend, attempt, plan)) as events,
                ):
                    async for event in _first_then_rest(events, plan.remaining(), backend.name):
                        content = isinstance(event, TextDelta | ToolCallDelta)
                        if content and cut is not None and not delivered:
                            yield StreamRestarted(
                                failed_backend=cut_backend,
                                next_backend=backend.name,
                                discard_chars=0 if prefill else len(shown),
                                error=str(cut),
                            )
                            if not prefill:
                                shown = ""
                        delivered = delivered or content
                        if isinstance(event, TextDelta):
                            shown += event.text
                        elif isinstance(event, UsageEvent):
                            usage = event.usage
                            bill.cost_usd = backend.cost_of(event.usage)
                            bill.tokens = event.usage.total_tokens
                        # A cut after content may still be charged: keep the worst case.
                        bill.charged_unknown = delivered
                        yield event
            except (BackendError, NotSupportedError) as exc:
                service.budget_settled(backend.name)
                if delivered:
                    # The backend already reports a cut as StreamInterruptedError; keep its
                    # message and root cause, but with all the text the caller has seen.
                    root = exc.__cause__ if isinstance(exc, StreamInterruptedError) else exc
                    cut = StreamInterruptedError(
                        str(exc.message if isinstance(exc, BackendError) else exc),
                        backend=backend.name,
                        partial_text=shown,
                        usage=getattr(exc, "usage", None) or usage,
                    )
                    cut.__cause__ = root or exc
                    cut_backend = backend.name
                    if mode is StreamRecovery.RAISE:
                        raise cut from root or exc
                    plan.failed(backend, cut)  # no retry on a backend that just cut
                    continue
                if prefill and isinstance(exc, InvalidRequestError):
                    # The backend refuses assistant prefill: restart on it instead.
                    prefill_refused.add(backend.name)
                    plan.again()
                    continue
                try:
                    plan.failed(backend, exc)
                except BackendError:
                    if cut is not None:
                        raise cut from exc
                    raise
                continue
            service.budget_settled(backend.name)
            return
    if cut is not None:
        raise cut from plan.exhausted("stream")
    raise plan.exhausted("stream")
