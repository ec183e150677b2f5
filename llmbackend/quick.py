"""The quick API: questions, streams and chat sessions in one line, over a default service.

::

    from llmbackend import ask, chat, stream

    answer = ask("Why is the sky blue?", system="Be brief.")
    print(answer, answer.backend, answer.model, answer.total_tokens, answer.cost_usd)

    for chunk in stream("Tell me a story"):
        print(chunk, end="", flush=True)

    with chat("You are a pirate.") as session:
        session.send("Hello")
        print(session.send("What did I just say?"), session.total_tokens)

The async twins are ``aask``, ``astream`` and ``achat``. The service comes from the
discovered configuration file (``LLMBACKEND_CONFIG``, ``./llmbackend.toml``,
``~/.config/llmbackend/config.toml``) unless :func:`configure` gives another source.
Async code gets one default service per event loop, closed when the loop shuts down (or by
``await aclose_default_service()``). The sync forms refuse to run inside a running event
loop; otherwise they run on a private background loop whose service
:func:`close_default_service` closes (it also runs at exit). Extra keywords are
``ChatRequest`` fields (``top_p``, ``stop_sequences``, ``tool_choice``, ``response_format``,
``timeout_seconds``, ``selection_strategy``, ``metadata``, ``cache_read``, ...);
``backend=`` names the backend to try first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmbackend._answer import Answer, AnswerStream, SyncAnswerStream, text_stream
from llmbackend._conversation import build_request, check_params, check_prompt
from llmbackend._default_service import (
    aclose_default_service,
    close_default_service,
    configure,
    default_service,
    refuse_inside_loop,
    run_sync,
    service_for,
)
from llmbackend._session import AsyncChatSession, ChatSession
from llmbackend.models import ChatMessage, ChatRequest, ToolDefinition
from llmbackend.service import LlmService

__all__ = [
    "Answer",
    "AnswerStream",
    "AsyncChatSession",
    "ChatSession",
    "SyncAnswerStream",
    "aask",
    "achat",
    "aclose_default_service",
    "ask",
    "astream",
    "chat",
    "close_default_service",
    "configure",
    "default_service",
    "stream",
]


def _request(
    call: str,
    prompt: object,
    *,
    system: str | None,
    model: str | None,
    backend: str | None,
    params: dict[str, Any],
) -> ChatRequest:
    text = check_prompt(call, prompt)
    if system is not None and not isinstance(system, str):
        raise TypeError(f"{call}: the system prompt must be a str, not {type(system).__name__}")
    messages = [ChatMessage.user(text)]
    if system:
        messages.insert(0, ChatMessage.system(system))
    checked = check_params(call, params)
    return build_request(messages, model=model, backend=backend, params=checked)


async def _chat(request: ChatRequest, service: LlmService | None) -> Answer:
    chosen = await service_for(request, service)
    return Answer(await chosen.chat(request))


async def aask(
    prompt: str,
    *,
    system: str | None = None,
    model: str | None = None,
    backend: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    tools: Sequence[ToolDefinition] | None = None,
    service: LlmService | None = None,
    **params: Any,
) -> Answer:
    """Ask one question; the :class:`Answer` is the text, with its metadata as properties.

    ``service`` defaults to this event loop's default service.
    """
    params |= {"temperature": temperature, "max_tokens": max_tokens, "tools": tools}
    request = _request("aask()", prompt, system=system, model=model, backend=backend, params=params)
    return await _chat(request, service)


def ask(
    prompt: str,
    *,
    system: str | None = None,
    model: str | None = None,
    backend: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    tools: Sequence[ToolDefinition] | None = None,
    **params: Any,
) -> Answer:
    """Ask one question from plain (non-async) code; see :func:`aask`.

    Raises ``RuntimeError`` when called while an event loop runs in this thread: there,
    use ``await aask(...)``.
    """
    params |= {"temperature": temperature, "max_tokens": max_tokens, "tools": tools}
    request = _request("ask()", prompt, system=system, model=model, backend=backend, params=params)
    return run_sync(lambda: _chat(request, None), call="ask()", instead="`await aask(...)`")


def astream(
    prompt: str,
    *,
    system: str | None = None,
    model: str | None = None,
    backend: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    tools: Sequence[ToolDefinition] | None = None,
    service: LlmService | None = None,
    **params: Any,
) -> AnswerStream[str]:
    """Stream one answer: ``async for chunk in astream(...)`` gives text chunks, then
    ``.answer`` holds the whole :class:`Answer` (see :class:`AnswerStream` for the raw
    events and ``stream_recovery = "restart"``)."""
    params |= {"temperature": temperature, "max_tokens": max_tokens, "tools": tools}
    return text_stream(
        _request("astream()", prompt, system=system, model=model, backend=backend, params=params),
        service,
    )


def stream(
    prompt: str,
    *,
    system: str | None = None,
    model: str | None = None,
    backend: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    tools: Sequence[ToolDefinition] | None = None,
    **params: Any,
) -> SyncAnswerStream[str]:
    """Stream one answer from plain code: ``for chunk in stream(...)``; see :func:`astream`.

    Leave early with ``with stream(...) as chunks:`` (or ``close()``): the request is
    cancelled.
    """
    instead = "`async for chunk in astream(...)`"
    refuse_inside_loop("stream()", instead)
    params |= {"temperature": temperature, "max_tokens": max_tokens, "tools": tools}
    request = _request(
        "stream()", prompt, system=system, model=model, backend=backend, params=params
    )
    return SyncAnswerStream(text_stream(request, None), call="stream()", instead=instead)


def achat(
    system: str | None = None,
    *,
    model: str | None = None,
    backend: str | None = None,
    service: LlmService | None = None,
    **params: Any,
) -> AsyncChatSession:
    """A chat session for async code: ``async with achat("Be brief.") as session:``."""
    return AsyncChatSession(system, model=model, backend=backend, service=service, **params)


def chat(
    system: str | None = None,
    *,
    model: str | None = None,
    backend: str | None = None,
    **params: Any,
) -> ChatSession:
    """A chat session for plain code: ``with chat("Be brief.") as session:``."""
    return ChatSession(system, model=model, backend=backend, **params)
