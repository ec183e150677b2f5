"""What the fake provider server answers: the catalogue, the per-backend queues and the
state of stateful entries. No HTTP here; the server asks :meth:`Script.choose` and
:meth:`Script.resolve` for each request.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from attrs import define, field

from llmbackend.testing._fake_behavior import (
    Behavior,
    BehaviorKind,
    Problem,
    ends_with_assistant,
)

__all__ = ["Choice", "Script"]

#: (catalogue name or ``None``, behaviour, state key)
Choice = tuple[str | None, Behavior, Hashable]


@define
class _Flap:
    calls: int = 0
    started: float | None = None


@define
class Script:
    """The catalogue, one queue per logical backend, and the state of stateful entries."""

    catalogue: dict[str, Behavior]
    clock: Callable[[], float]
    _queues: dict[str | None, deque[tuple[str | None, Behavior]]] = field(factory=dict)
    _flaps: dict[Hashable, _Flap] = field(factory=dict)
    _anonymous: itertools.count[int] = field(factory=itertools.count)

    def enqueue(self, behaviors: Iterable[Behavior], backend: str | None) -> None:
        queue = self._queues.setdefault(backend, deque())
        queue.extend((None, behavior) for behavior in behaviors)

    def enqueue_named(self, names: tuple[str, ...], backend: str | None) -> None:
        unknown = [name for name in names if name not in self.catalogue]
        if unknown:
            raise ValueError(f"not in the catalogue: {unknown}; known: {sorted(self.catalogue)}")
        queue = self._queues.setdefault(backend, deque())
        queue.extend((name, self.catalogue[name]) for name in names)

    @property
    def pending(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def reset(self) -> None:
        self._queues.clear()
        self._flaps.clear()

    def choose(
        self, named: str | None, body: Any, backend: str | None, *, model_call: bool
    ) -> Choice:
        """The behaviour for one request: header name, model name, queue, default."""
        if named is not None and named not in self.catalogue:
            unknown = Behavior.error(400, {"error": {"message": f"unknown behavior {named!r}"}})
            return None, unknown, None
        model = body.get("model") if isinstance(body, dict) else None
        if named is None and isinstance(model, str) and model in self.catalogue:
            named = model
        if named is not None:
            return named, self.catalogue[named], (backend, named)
        queue = self._queues.get(backend)
        if model_call and queue:
            name, behavior = queue.popleft()
            # An anonymous queued behaviour is used once: it gets state of its own.
            key = (backend, name) if name is not None else (backend, None, next(self._anonymous))
            return name, behavior, key
        return None, Behavior.ok(), None

    def resolve(self, behavior: Behavior, key: Hashable, body: Any, *, advance: bool) -> Behavior:
        """The concrete behaviour a stateful one stands for on this request; only model
        calls (``advance``) move the state on."""
        while behavior.stateful:
            if behavior.kind is BehaviorKind.REJECTS_PREFILL:
                if ends_with_assistant(body):
                    return Behavior.error(400, problem=Problem.PREFILL)
                behavior, key = behavior.then or Behavior.ok(), (key, "then")
            elif self._failing(behavior, key, advance=advance):
                behavior, key = behavior.failure or Behavior.error(503), (key, "failure")
            else:
                behavior, key = behavior.then or Behavior.ok(), (key, "then")
        return behavior

    def _failing(self, behavior: Behavior, key: Hashable, *, advance: bool) -> bool:
        flap = self._flaps.setdefault(key, _Flap())
        if behavior.window is None:
            failing = flap.calls < behavior.failures
        else:
            if flap.started is None and advance:
                flap.started = self.clock()
            # Before the first model call the window has not begun: still failing.
            failing = flap.started is None or self.clock() - flap.started < behavior.window
        if advance:
            flap.calls += 1
        return failing
