"""The clients compared by the harness, behind one small interface.

Each client is built once per process (``open``) and reused for every call, with its own
retries off where it has any, and its connection pool sized for the largest concurrency
measured (``POOL``) where its public API allows: a pool smaller than the concurrency would
measure queueing in the pool, not the client. Every client sends the same request (one
user message, ``max_tokens=16``, the model name that tells the fake server what to do).

This module imports only the standard library at the top: the client libraries are
imported inside ``open`` so that the import measurement of each one stays its own.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

POOL = 1024
API_KEY = "sk-bench-not-a-secret"
PROMPT = "Say hello."
MAX_TOKENS = 16
MESSAGES = [{"role": "user", "content": PROMPT}]
#: The models (delays, chunk counts) the LiteLLM Router and pydantic-ai agents are built for.
KNOWN_MODELS = (
    "bench-d0-c0",
    "bench-d50-c0",
    "bench-d5000-c0",
    "bench-d1000-c0",
    "bench-d500-c0",
    "bench-d0-c20",
    "bench-d0-c500",
)


def model_name(delay_ms: int = 0, chunks: int = 0) -> str:
    return f"bench-d{delay_ms}-c{chunks}"


class Client:
    """One client library, opened once and reused for every call."""

    #: The import statement measured for this client (what a user writes to make a call).
    import_statement = ""
    #: Environment the child process needs (set before anything is imported).
    environment: dict[str, str] = {}  # noqa: RUF012  # read-only class-level defaults
    #: Whether the client has an embeddings call.
    embeds = True

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.api = f"{self.base_url}/v1"

    async def open(self) -> None:
        raise NotImplementedError

    async def chat(self, model: str) -> str:
        raise NotImplementedError

    def stream(self, model: str) -> AsyncIterator[str]:
        raise NotImplementedError

    async def embed(self, model: str) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def _sse_text(payload: bytes | str) -> str | None:
    """The content delta of one SSE ``data:`` payload (what an application reads)."""
    chunk = json.loads(payload)
    choices = chunk.get("choices")
    if choices:
        content: str | None = choices[0].get("delta", {}).get("content")
        return content
    return None


class RawAiohttp(Client):
    """The floor: aiohttp with hand-written JSON and SSE handling."""

    import_statement = "import aiohttp"

    async def open(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=POOL),
            headers={"Authorization": f"Bearer {API_KEY}"},
        )

    async def chat(self, model: str) -> str:
        body = {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
        async with self.session.post(f"{self.api}/chat/completions", json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            answer = await response.json()
        content: str = answer["choices"][0]["message"]["content"]
        return content

    async def stream(self, model: str) -> AsyncIterator[str]:
        body = {
            "model": model,
            "messages": MESSAGES,
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with self.session.post(f"{self.api}/chat/completions", json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    break
                text = _sse_text(payload)
                if text:
                    yield text

    async def embed(self, model: str) -> int:
        body = {"model": model, "input": ["one", "two"]}
        async with self.session.post(f"{self.api}/embeddings", json=body) as response:
            answer = await response.json()
        return len(answer["data"])

    async def close(self) -> None:
        await self.session.close()


class RawHttpx(Client):
    """httpx with hand-written JSON and SSE handling."""

    import_statement = "import httpx"

    async def open(self) -> None:
        import httpx

        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL),
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=120.0,
        )

    async def chat(self, model: str) -> str:
        body = {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
        response = await self.client.post(f"{self.api}/chat/completions", json=body)
        response.raise_for_status()
        content: str = response.json()["choices"][0]["message"]["content"]
        return content

    async def stream(self, model: str) -> AsyncIterator[str]:
        body = {
            "model": model,
            "messages": MESSAGES,
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with self.client.stream("POST", f"{self.api}/chat/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:].strip()
                if payload == "[DONE]":
                    break
                text = _sse_text(payload)
                if text:
                    yield text

    async def embed(self, model: str) -> int:
        body = {"model": model, "input": ["one", "two"]}
        response = await self.client.post(f"{self.api}/embeddings", json=body)
        return len(response.json()["data"])

    async def close(self) -> None:
        await self.client.aclose()


def _openai_client(base_url: str) -> Any:
    import httpx
    import openai

    limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=API_KEY,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(limits=limits),
    )


class OpenAISDK(Client):
    """The official ``openai`` SDK (``AsyncOpenAI``, ``max_retries=0``)."""

    import_statement = "from openai import AsyncOpenAI"

    async def open(self) -> None:
        self.client = _openai_client(self.api)

    async def chat(self, model: str) -> str:
        answer = await self.client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=MAX_TOKENS
        )
        content: str = answer.choices[0].message.content
        return content

    async def stream(self, model: str) -> AsyncIterator[str]:
        events = await self.client.chat.completions.create(
            model=model,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        async with events:
            async for chunk in events:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

    async def embed(self, model: str) -> int:
        answer = await self.client.embeddings.create(model=model, input=["one", "two"])
        return len(answer.data)

    async def close(self) -> None:
        await self.client.close()


class LiteLLM(Client):
    """``litellm.acompletion`` (``num_retries=0``, ``max_retries=0``, no fallbacks)."""

    import_statement = "import litellm"
    # The local cost map stops LiteLLM fetching one from GitHub at import (a network call
    # at import, with retries, when offline); the connector limits are its pool size.
    environment = {  # noqa: RUF012
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "AIOHTTP_CONNECTOR_LIMIT": str(POOL),
        "AIOHTTP_CONNECTOR_LIMIT_PER_HOST": str(POOL),
        "LITELLM_LOG": "ERROR",
    }

    async def open(self) -> None:
        import litellm

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        self.litellm = litellm

    def _arguments(self, model: str) -> dict[str, Any]:
        return {
            "model": f"openai/{model}",
            "api_base": self.api,
            "api_key": API_KEY,
            "num_retries": 0,
            "max_retries": 0,
        }

    async def chat(self, model: str) -> str:
        answer = await self.litellm.acompletion(
            messages=MESSAGES, max_tokens=MAX_TOKENS, **self._arguments(model)
        )
        content: str = answer.choices[0].message.content
        return content

    async def stream(self, model: str) -> AsyncIterator[str]:
        events = await self.litellm.acompletion(
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
            **self._arguments(model),
        )
        async for chunk in events:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    async def embed(self, model: str) -> int:
        arguments = self._arguments(model)
        arguments.pop("num_retries")
        answer = await self.litellm.aembedding(input=["one", "two"], **arguments)
        return len(answer.data)


class LiteLLMRouter(LiteLLM):
    """``litellm.Router`` with one deployment per benchmark model, no retries or fallbacks."""

    async def open(self) -> None:
        await super().open()
        deployments = [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"openai/{model}",
                    "api_base": self.api,
                    "api_key": API_KEY,
                    "max_retries": 0,
                },
            }
            for model in KNOWN_MODELS
        ]
        self.router = self.litellm.Router(model_list=deployments, num_retries=0, fallbacks=[])

    async def chat(self, model: str) -> str:
        answer = await self.router.acompletion(
            model=model, messages=MESSAGES, max_tokens=MAX_TOKENS
        )
        content: str = answer.choices[0].message.content
        return content

    async def stream(self, model: str) -> AsyncIterator[str]:
        events = await self.router.acompletion(
            model=model,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in events:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    async def embed(self, model: str) -> int:
        answer = await self.router.aembedding(model=model, input=["one", "two"])
        return len(answer.data)


class PydanticAI(Client):
    """A pydantic-ai ``Agent`` per model, over an ``OpenAIProvider`` (``max_retries=0``)."""

    import_statement = (
        "from pydantic_ai import Agent; from pydantic_ai.models.openai import OpenAIChatModel; "
        "from pydantic_ai.providers.openai import OpenAIProvider"
    )
    embeds = False

    async def open(self) -> None:
        from pydantic_ai import Agent
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        provider = OpenAIProvider(openai_client=_openai_client(self.api))
        self.agents = {
            model: Agent(
                OpenAIChatModel(model, provider=provider),
                model_settings={"max_tokens": MAX_TOKENS},
            )
            for model in KNOWN_MODELS
        }
        self.provider = provider

    async def chat(self, model: str) -> str:
        result = await self.agents[model].run(PROMPT)
        output: str = result.output
        return output

    async def stream(self, model: str) -> AsyncIterator[str]:
        async with self.agents[model].run_stream(PROMPT) as result:
            # No debouncing: every chunk reaches the caller, as with the other clients.
            async for text in result.stream_text(delta=True, debounce_by=None):
                if text:
                    yield text

    async def close(self) -> None:
        await self.provider.client.close()


class Llmbackend(Client):
    """``llmbackend`` through ``open_service``: one backend, ``max_retries=0``, metrics,
    circuit breaker and health checks off (the leanest configuration)."""

    import_statement = "import llmbackend"

    def settings(self) -> dict[str, Any]:
        backend = {
            "name": "bench",
            "type": "openai_compatible",
            "base_url": self.api,
            "api_key": API_KEY,
            "model_name": "bench-d0-c0",
            "max_retries": 0,
        }
        return {
            "backends": [backend],
            "max_retries": 0,
            "max_connections": POOL,
            "circuit_breaker": {"enabled": False},
            "health_check": {"enabled": False},
            "telemetry": {"enable_metrics": False},
        }

    async def open(self) -> None:
        import llmbackend

        self.llmbackend = llmbackend
        self._stack = contextlib.AsyncExitStack()
        self.service = await self._stack.enter_async_context(
            llmbackend.open_service(self.settings())
        )

    def _request(self, model: str) -> Any:
        lb = self.llmbackend
        return lb.ChatRequest(
            messages=[lb.ChatMessage.user(PROMPT)], model=model, max_tokens=MAX_TOKENS
        )

    async def chat(self, model: str) -> str:
        answer = await self.service.chat(self._request(model))
        content: str = answer.content
        return content

    async def stream(self, model: str) -> AsyncIterator[str]:
        text_delta = self.llmbackend.TextDelta
        async for event in self.service.stream(self._request(model)):
            if isinstance(event, text_delta) and event.text:
                yield event.text

    async def embed(self, model: str) -> int:
        request = self.llmbackend.EmbeddingRequest(inputs=["one", "two"], model=model)
        answer = await self.service.embed(request)
        return len(answer.embeddings)

    async def close(self) -> None:
        await self._stack.aclose()


class LlmbackendFull(Llmbackend):
    """``llmbackend`` with two backends under the failover strategy, the circuit breaker,
    Prometheus metrics and health checks on (the defaults), and ``max_retries=0``."""

    def settings(self) -> dict[str, Any]:
        settings = super().settings()
        primary = settings["backends"][0]
        secondary = {**primary, "name": "bench-secondary", "priority": 200}
        return {
            "backends": [{**primary, "priority": 100}, secondary],
            "selection_strategy": "failover",
            "max_retries": 0,
            "max_connections": POOL,
        }


CLIENTS: dict[str, type[Client]] = {
    "aiohttp": RawAiohttp,
    "httpx": RawHttpx,
    "openai": OpenAISDK,
    "litellm": LiteLLM,
    "litellm-router": LiteLLMRouter,
    "pydantic-ai": PydanticAI,
    "llmbackend": Llmbackend,
    "llmbackend-full": LlmbackendFull,
}

#: What ``import llmbackend`` is compared with: the dependencies it imports itself.
DEPENDENCIES_IMPORT = (
    "import aiohttp, attrs, cattrs, structlog; "
    "from dependency_injector import containers, providers"
)

#: Import-only rows (no client object): name → import statement.
IMPORT_ONLY = {"llmbackend deps": DEPENDENCIES_IMPORT}


def client_environment(name: str) -> dict[str, str]:
    """The child environment for client ``name``: bytecode caches on, the client's own."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if name in CLIENTS:
        environment.update(CLIENTS[name].environment)
    return environment
