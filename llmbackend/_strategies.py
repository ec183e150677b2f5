"""Selection strategies. A strategy only orders candidates; the service does the rest.

Every order starts from the failover order (priority ascending, then declaration order), so
ties and the tail of each order are predictable.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from attrs import define, field

from llmbackend.backends.base import BaseLlmBackend
from llmbackend.settings import SelectionStrategy

__all__ = ["LatencyTracker", "StrategyState", "order_candidates"]

#: Weight of the newest sample in the latency estimate.
EWMA_ALPHA = 0.3


@define
class LatencyTracker:
    """An exponentially weighted moving average of successful call latency per backend."""

    _estimates: dict[str, float] = field(factory=dict)

    def record(self, name: str, latency_ms: float) -> None:
        previous = self._estimates.get(name)
        self._estimates[name] = (
            latency_ms
            if previous is None
            else EWMA_ALPHA * latency_ms + (1 - EWMA_ALPHA) * previous
        )

    def estimate(self, name: str) -> float | None:
        return self._estimates.get(name)

    def estimates(self) -> Mapping[str, float]:
        return dict(self._estimates)


@define
class StrategyState:
    """What strategies remember between requests."""

    rng: random.Random
    latency: LatencyTracker = field(factory=LatencyTracker)
    _turn: int = 0

    def next_turn(self) -> int:
        turn = self._turn
        self._turn += 1
        return turn


def order_candidates(
    strategy: SelectionStrategy,
    candidates: Sequence[BaseLlmBackend],
    state: StrategyState,
    preferred: BaseLlmBackend | None,
) -> list[BaseLlmBackend]:
    """The order in which ``candidates`` (already in failover order) are tried.

    ``specific`` keeps only the preferred backend (or the first by priority). Any other
    strategy puts ``preferred`` first and keeps the rest in the strategy's order.
    """
    if strategy is SelectionStrategy.SPECIFIC:
        chosen = preferred if preferred is not None else (candidates[0] if candidates else None)
        return [chosen] if chosen is not None and chosen in candidates else []
    ordered = list(candidates)
    if strategy is SelectionStrategy.ROUND_ROBIN and ordered:
        start = state.next_turn() % len(ordered)
        ordered = ordered[start:] + ordered[:start]
    elif strategy is SelectionStrategy.LOWEST_LATENCY:
        # Untried backends first (in priority order) so that they get measured.
        ordered.sort(key=lambda b: state.latency.estimate(b.name) or -1.0)
    elif strategy is SelectionStrategy.RANDOM:
        ordered = _weighted_shuffle(ordered, state.rng)
    if preferred is not None and preferred in ordered:
        ordered.remove(preferred)
        ordered.insert(0, preferred)
    return ordered


def _weighted_shuffle(backends: list[BaseLlmBackend], rng: random.Random) -> list[BaseLlmBackend]:
    """A random order where heavier backends tend to come first (Efraimidis-Spirakis)."""
    keyed = [(math.log(rng.random() or 1e-12) / b.config.weight, b) for b in backends]
    keyed.sort(key=lambda pair: pair[0], reverse=True)
    return [backend for _, backend in keyed]
