"""``ResponseCache``: answers keyed by everything that shapes them, in any store.

The key is the SHA-256 of a canonical encoding (sorted-key, compact JSON) of the backend or
model, the messages (with tool calls), every sampling parameter, the tools, ``tool_choice``,
``response_format`` and the ``variables``. Fields that cannot change the answer (metadata,
timeouts, strategy, preferred backend) are left out, so equal requests hit and any differing
parameter misses. Keys live under the store's ``key_prefix`` and the cache's ``namespace``.

Only finished answers are stored: :meth:`ResponseCache.put` takes an ``LlmResponse`` whose
provider said it finished normally (``stop`` or ``tool_calls``), and refuses anything else,
so an error, a cut stream or a length-truncated answer can never be replayed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import attrs
from attrs import define, frozen
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.json import JsonConverter, make_converter

from llmbackend._logging import LoggerFactory
from llmbackend.errors import StateStoreError
from llmbackend.models import ChatMessage, ChatRequest, FinishReason, LlmRequest, LlmResponse
from llmbackend.settings import CachingSettings
from llmbackend.state._protocols import CacheStore

__all__ = [
    "CACHEABLE_FINISH_REASONS",
    "CacheKey",
    "CacheStatistics",
    "ResponseCache",
    "canonical_request",
]

#: Answers the provider finished on its own terms; anything else is never cached.
CACHEABLE_FINISH_REASONS = frozenset({FinishReason.STOP, FinishReason.TOOL_CALLS})

_FORMAT = 1
_BYTES_PER_MB = 1024 * 1024


@functools.cache
def response_converter() -> JsonConverter:
    """This module's own converter (never the global one): ``LlmResponse`` to JSON and back,
    without the fields that describe one call rather than the answer. Built on first use
    (generating its code costs milliseconds `import llmbackend` should not pay)."""
    converter = make_converter()
    omit = override(omit=True)
    converter.register_unstructure_hook(
        LlmResponse,
        make_dict_unstructure_fn(
            LlmResponse,
            converter,
            alternative_responses=omit,
            failed_alternatives=omit,
            cached=omit,
        ),
    )
    converter.register_structure_hook(
        LlmResponse,
        make_dict_structure_fn(
            LlmResponse,
            converter,
            alternative_responses=omit,
            failed_alternatives=omit,
            cached=omit,
        ),
    )
    return converter


@frozen
class CacheKey:
    """A cache key; only :meth:`ResponseCache.key_for` makes one."""

    value: str

    def __str__(self) -> str:
        return self.value


@frozen(kw_only=True)
class CacheStatistics:
    """Counters of one cache since it was created (this process)."""

    hits: int
    misses: int
    stores: int
    #: ``put`` calls refused because the answer was not a normal finish.
    refused: int
    #: Store failures (each served as a miss or a skipped store).
    errors: int

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


@define
class _Counters:
    hits: int = 0
    misses: int = 0
    stores: int = 0
    refused: int = 0
    errors: int = 0


def _message(message: ChatMessage) -> dict[str, Any]:
    return {
        "role": message.role,
        "content": message.content,
        "name": message.name,
        "tool_call_id": message.tool_call_id,
        "tool_calls": [[c.id, c.name, c.arguments] for c in message.tool_calls],
    }


#: Request metadata a backend reads as input (EasyNMT's languages and options): part of the
#: key, while the rest of ``metadata`` (tags, user ids) is only annotation.
ANSWER_SHAPING_METADATA = (
    "target_language",
    "target_lang",
    "source_language",
    "source_lang",
    "beam_size",
    "perform_sentence_splitting",
)


def canonical_request(
    request: ChatRequest | LlmRequest, *, backend: str | None = None, model: str | None = None
) -> str:
    """The canonical text of everything in ``request`` that shapes the answer."""
    chat = request.to_chat() if isinstance(request, LlmRequest) else request
    document = {
        "format": _FORMAT,
        "backend": backend,
        "model": model if model is not None else chat.model,
        "messages": [_message(message) for message in chat.messages],
        "temperature": chat.temperature,
        "max_tokens": chat.max_tokens,
        "top_p": chat.top_p,
        "frequency_penalty": chat.frequency_penalty,
        "presence_penalty": chat.presence_penalty,
        "stop": list(chat.stop_sequences),
        "tools": [
            {"name": t.name, "description": t.description, "parameters": t.parameters}
            for t in chat.tools
        ],
        "tool_choice": chat.tool_choice,
        "response_format": chat.response_format,
    }
    if chat.variables:
        # Template values and builder inputs (languages) shape the prompt; absent when
        # empty, so the keys of requests without variables stay what they were.
        document["variables"] = dict(chat.variables)
    if shaping := {k: chat.metadata[k] for k in ANSWER_SHAPING_METADATA if k in chat.metadata}:
        document["metadata"] = shaping
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


class ResponseCache:
    """Stores and serves ``LlmResponse`` values by request.

    Store failures never fail a request: a read that fails is a miss, a write that fails is
    skipped; both are counted and logged. ``clock`` (seconds since the epoch) is injectable.
    """

    def __init__(
        self,
        store: CacheStore,
        settings: CachingSettings,
        *,
        namespace: str = "default",
        clock: Callable[[], float] = time.time,
        logger_factory: LoggerFactory | None = None,
    ) -> None:
        self._store = store
        self._ttl = settings.expiration_minutes * 60.0
        self._max_bytes = int(settings.max_cache_size_mb * _BYTES_PER_MB)
        self._namespace = namespace
        self._clock = clock
        self._log = (logger_factory or LoggerFactory())("llmbackend.cache")
        self._counters = _Counters()

    def key_for(
        self,
        request: ChatRequest | LlmRequest,
        *,
        backend: str | None = None,
        model: str | None = None,
    ) -> CacheKey:
        """The key of ``request`` as answered by ``backend`` / ``model`` (when known)."""
        text = canonical_request(request, backend=backend, model=model)
        digest = hashlib.sha256(text.encode()).hexdigest()
        return CacheKey(f"cache:{self._namespace}:{digest}")

    async def get(self, key: CacheKey) -> LlmResponse | None:
        """The cached answer, marked ``cached=True`` and costing nothing; ``None`` on a miss."""
        started = time.perf_counter()
        try:
            raw = await self._store.cache_get(key.value)
        except StateStoreError as exc:
            self._failed("read", exc)
            raw = None
        response = self._decode(raw) if raw is not None else None
        if response is None:
            self._counters.misses += 1
            return None
        self._counters.hits += 1
        return attrs.evolve(
            response,
            cached=True,
            cost_usd=0.0,
            duration_ms=(time.perf_counter() - started) * 1000.0,
        )

    async def put(self, key: CacheKey, response: LlmResponse) -> bool:
        """Store a normally finished answer; return whether it was stored.

        Refused (``False``): answers that did not finish normally (error, content filter,
        length, unknown), answers that were themselves served from the cache, and answers
        of a simultaneous fan-out (their alternatives describe that one call).
        """
        if not isinstance(response, LlmResponse):
            raise TypeError(f"only LlmResponse values can be cached, not {type(response)!r}")
        if (
            response.finish_reason not in CACHEABLE_FINISH_REASONS
            or response.cached
            or response.alternative_responses
            or response.failed_alternatives
        ):
            self._counters.refused += 1
            return False
        now = self._clock()
        envelope = {
            "format": _FORMAT,
            "expires_at": now + self._ttl,
            "response": response_converter().unstructure(response),
        }
        value = json.dumps(envelope, separators=(",", ":")).encode()
        try:
            await self._store.cache_put(
                key.value, value, now=now, ttl_seconds=self._ttl, max_bytes=self._max_bytes
            )
        except StateStoreError as exc:
            self._failed("write", exc)
            return False
        self._counters.stores += 1
        return True

    def statistics(self) -> CacheStatistics:
        counters = self._counters
        return CacheStatistics(
            hits=counters.hits,
            misses=counters.misses,
            stores=counters.stores,
            refused=counters.refused,
            errors=counters.errors,
        )

    def _decode(self, raw: bytes) -> LlmResponse | None:
        try:
            envelope = json.loads(raw)
            if envelope.get("format") != _FORMAT or envelope["expires_at"] <= self._clock():
                return None
            return response_converter().structure(envelope["response"], LlmResponse)
        except Exception as exc:  # noqa: BLE001  # an unreadable entry is a miss, not an outage
            self._failed("decode", exc)
            return None

    def _failed(self, operation: str, exc: Exception) -> None:
        self._counters.errors += 1
        self._log.warning("cache_store_failed", operation=operation, error=str(exc))
